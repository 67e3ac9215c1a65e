"""Exported weights: ``model.safetensors`` + ``config.json`` in a directory or URL.

Every model MaDiS exports (the decoupled tokenizer, SiCLIP, the MDLM and its AR baseline) is
saved as one safetensors file of its ``state_dict`` and one JSON document that says what it is
and how to rebuild it, so that loading needs neither DeepSpeed nor Ray. Each class keeps its
own identifying keys (``{"kind": "madis.SiCLIP"}``, ``{"format": "madis-mdlm/1"}``) and its own
config layout; the files, tied weights and errors are handled here once.

Paths may be local directories, ``file://`` or any fsspec URL (``s3://`` with the endpoint from
``AWS_ENDPOINT_URL``). A tensor shared between names (tied embeddings) is stored once, recorded
in the file's metadata as ``safetensors.torch.save_model`` does, so either side reads the other's
files.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import fsspec
import torch
from safetensors import safe_open
from safetensors.torch import load, load_file, save, save_file
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def _fs(path: str | os.PathLike):
    fs, root = fsspec.core.url_to_fs(str(path))
    return fs, root.rstrip("/") or root


def _is_local(fs) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "file" in protocols or "local" in protocols


def weights_state(module: nn.Module, *, float32: bool = False
                  ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``module``'s ``state_dict`` as safetensors can store it, and the aliases left out.

    A tensor that is another name's tensor (a tied embedding: same storage, offset, shape and
    strides) is stored once; ``aliases`` maps each left-out name to the name kept, in the form
    ``safetensors.torch.save_model`` writes into the file's metadata. Disjoint views of one
    buffer (DeepSpeed's flattened parameters) are stored as separate tensors.
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in module.state_dict().items():
        t = t.detach()
        key = (t.device, t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        if float32 and t.is_floating_point():
            t = t.float()
        tensors[name] = t.contiguous()
    return tensors, aliases


def save_pretrained(path: str | os.PathLike, module: nn.Module, config: Mapping[str, Any], *,
                    float32: bool = False, indent: int = 2) -> None:
    """Write ``module``'s ``state_dict`` to ``{path}/model.safetensors`` and ``config`` to
    ``{path}/config.json`` (the directory is created).

    Args:
        config: JSON-serialisable description of the model (its identifying key, its section
            config, sizes).
        float32: store floating tensors as float32 (a module cast to bf16 for training still
            exports full-precision weights).
    Raises:
        TypeError: ``config`` is not JSON-serialisable (nothing is written).
        OSError: the storage refused a write.
    """
    text = json.dumps(dict(config), indent=indent)
    tensors, aliases = weights_state(module, float32=float32)
    fs, root = _fs(path)
    fs.makedirs(root, exist_ok=True)
    if _is_local(fs):
        save_file(tensors, f"{root}/{WEIGHTS_NAME}", metadata=aliases or None)
    else:
        fs.pipe_file(f"{root}/{WEIGHTS_NAME}", save(tensors, metadata=aliases or None))
    with fs.open(f"{root}/{CONFIG_NAME}", "w") as f:
        f.write(text)


def read_config(path: str | os.PathLike, expect: Mapping[str, Any], what: str) -> dict[str, Any]:
    """The ``config.json`` of a saved model, checked to describe ``what``.

    Args:
        expect: key/value pairs the document must hold, e.g. ``{"kind": "madis.SiCLIP"}``.
        what: the model's name in error messages.
    Raises:
        FileNotFoundError: ``config.json`` or ``model.safetensors`` missing.
        ValueError: the JSON is malformed or describes something else.
    """
    fs, root = _fs(path)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not fs.exists(f"{root}/{name}"):
            raise FileNotFoundError(f"{path}: no {name}; not a saved {what}")
    with fs.open(f"{root}/{CONFIG_NAME}", "r") as f:
        try:
            doc = json.load(f)
        except ValueError as exn:
            raise ValueError(f"{path}/{CONFIG_NAME} is not valid JSON: {exn}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}/{CONFIG_NAME} does not describe a {what}")
    for key, value in expect.items():
        if doc.get(key) != value:
            raise ValueError(f"{path}/{CONFIG_NAME} does not describe a {what} "
                             f"({key} is {doc.get(key)!r}, expected {value!r})")
    return doc


def load_weights(path: str | os.PathLike, module: nn.Module, *, strict: bool = True
                 ) -> tuple[list[str], list[str]]:
    """Load ``{path}/model.safetensors`` into ``module`` (tensors land on the module's devices);
    names stored once for several (tied weights, see :func:`weights_state`) fill all of them.

    Returns:
        ``(missing, unexpected)`` parameter names (both empty when ``strict``).
    Raises:
        FileNotFoundError: no weights file.
        RuntimeError: ``strict`` and the names or shapes differ.
    """
    fs, root = _fs(path)
    file = f"{root}/{WEIGHTS_NAME}"
    if not fs.exists(file):
        raise FileNotFoundError(f"{path}: no {WEIGHTS_NAME}")
    if _is_local(fs):
        state = load_file(file)
        with safe_open(file, "pt") as f:
            aliases = f.metadata() or {}
    else:
        raw = fs.cat_file(file)
        state = load(raw)
        aliases = _metadata(raw)
    for name, kept in aliases.items():
        if name not in state and kept in state:
            state[name] = state[kept]
    missing, unexpected = module.load_state_dict(state, strict=strict)
    return sorted(missing), sorted(unexpected)


def _metadata(raw: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file held in memory (its JSON header)."""
    size = int.from_bytes(raw[:8], "little")
    return dict(json.loads(raw[8:8 + size]).get("__metadata__") or {})


@contextlib.contextmanager
def local_copy(url: str | os.PathLike) -> Iterator[str]:
    """A local directory holding the files of ``url``, for loaders that need a path (the Hugging
    Face text tokenizer of an MDLM export).

    A local path or ``file://`` URL is yielded as is. Anything else (``s3://...``) is copied,
    subdirectories included, to a temporary directory that is removed when the ``with`` block
    ends, also on errors, so load everything inside it. Exports are small next to shards.

    Raises:
        FileNotFoundError: ``url`` holds no file.
        OSError / StorageError: the copy failed (the partial copy is removed).
    """
    fs, root = _fs(url)
    if _is_local(fs):
        yield root
        return
    dest = tempfile.mkdtemp(prefix="madis-export-")
    try:
        files = fs.find(root)
        if not files:
            raise FileNotFoundError(f"{url}: no files there")
        for path in files:
            target = Path(dest) / path[len(root) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(path, str(target))
        yield dest
    finally:
        shutil.rmtree(dest, ignore_errors=True)
