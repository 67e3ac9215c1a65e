"""Loading what the MDLM jobs export: the generator of a checkpoint, with its motion tokenizer
attached, for everything that decodes text to motion (Serve, the eval fleet, ``madis generate``,
the benchmarks). No Ray here.

An MDLM export (docs/data-formats.md#exports) holds the model (``config.json``,
``model.safetensors``, ``text_tokenizer/``), ``metadata.json`` and a copy of its motion
tokenizer in ``tokenizer/`` (:data:`TOKENIZER_DIR`), so the export alone generates motion.
Writing it is the training task's (:meth:`madis.mdlm.task.MDLMTask.export`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from madis.mdlm.base import SignLanguageModel, load_pretrained
from madis.utils.pretrained import local_copy

#: the export's copy of the motion tokenizer
TOKENIZER_DIR = "tokenizer"


def export_dir(url: str) -> str:
    """A checkpoint directory's ``export``, or ``url`` itself when it already is an export."""
    import fsspec

    from madis.train.checkpoints import export_url

    fs, root = fsspec.core.url_to_fs(url)
    return url if fs.exists(f"{root.rstrip('/')}/config.json") else export_url(url)


def load_tokenizer(url: str):
    """The frozen ``DecoupledTokenizer`` exported at ``url`` (a directory or ``s3://``)."""
    from madis.tokenizer import DecoupledTokenizer

    return DecoupledTokenizer.from_pretrained(url)


def load_generator(export_url: str, map_location: str | torch.device = "cpu",
                   overrides: dict[str, Any] | None = None) -> SignLanguageModel:
    """A trained model (MaDiS or the autoregressive baseline, as the export says) with its
    tokenizer attached, from a checkpoint's export directory.

    The tokenizer is the copy in ``export/tokenizer``, else the tokenizer checkpoint named in the
    export's ``metadata.json``.

    Raises:
        FileNotFoundError: no model or no tokenizer found.
    """
    with local_copy(export_url) as local:  # a copy of an s3:// export is removed after loading
        tok_dir = Path(local) / TOKENIZER_DIR
        if tok_dir.is_dir():
            tokenizer = load_tokenizer(str(tok_dir))
        else:
            from madis.train.checkpoints import read_metadata

            try:
                url = read_metadata(export_url)["task"]["tokenizer_checkpoint"]
            except (FileNotFoundError, KeyError):
                raise FileNotFoundError(f"{export_url}: no tokenizer copy and no tokenizer "
                                        f"checkpoint in its metadata") from None
            tokenizer = load_tokenizer(url)
        return load_pretrained(local, tokenizer, overrides=overrides, map_location=map_location)
