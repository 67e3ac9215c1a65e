"""Exported weights: ``model.safetensors`` + ``config.json`` in a directory or URL.

Every model MaDiS exports (the decoupled tokenizer, SiCLIP, the MDLM and its AR baseline) is
saved as one safetensors file of its ``state_dict`` and one JSON document that says what it is
and how to rebuild it, so that loading needs neither DeepSpeed nor Ray. Each class keeps its
own identifying keys (``{"kind": "madis.SiCLIP"}``, ``{"format": "madis-mdlm/1"}``) and its own
config layout; the files, tied weights and errors are handled here once.

Paths may be local directories, ``file://`` or any fsspec URL (``s3://`` with the endpoint from
``AWS_ENDPOINT_URL``). Weights go through ``safetensors.torch.save_model`` / ``load_model``,
which store tensors shared between names (tied embeddings) once.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Mapping

import fsspec
import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def _fs(path: str | os.PathLike):
    fs, root = fsspec.core.url_to_fs(str(path))
    return fs, root.rstrip("/") or root


def _is_local(fs) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "file" in protocols or "local" in protocols


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
    fs, root = _fs(path)
    fs.makedirs(root, exist_ok=True)
    final = f"{root}/{WEIGHTS_NAME}"
    local = _is_local(fs)
    with tempfile.TemporaryDirectory(prefix="madis-save-") as tmp:
        staged = final if local and not float32 else os.path.join(tmp, WEIGHTS_NAME)
        save_model(module, staged)
        if float32:
            cast = final if local else os.path.join(tmp, "float32.safetensors")
            _cast_float32(staged, cast)
            staged = cast
        if not local:
            fs.put_file(staged, final)
    with fs.open(f"{root}/{CONFIG_NAME}", "w") as f:
        f.write(text)


def _cast_float32(src: str, dst: str) -> None:
    """Copy safetensors file ``src`` to ``dst`` with every floating tensor as float32."""
    with safe_open(src, "pt") as f:
        meta = f.metadata()
    state = {k: v.float() if v.is_floating_point() else v.clone()
             for k, v in load_file(src).items()}
    save_file(state, dst, metadata=meta)


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
    """Load ``{path}/model.safetensors`` into ``module`` (tensors land on the module's devices).

    Returns:
        ``(missing, unexpected)`` parameter names (both empty when ``strict``).
    Raises:
        FileNotFoundError: no weights file.
        RuntimeError: ``strict`` and the names or shapes differ.
    """
    fs, root = _fs(path)
    remote = f"{root}/{WEIGHTS_NAME}"
    if not fs.exists(remote):
        raise FileNotFoundError(f"{path}: no {WEIGHTS_NAME}")
    if _is_local(fs):
        missing, unexpected = load_model(module, remote, strict=strict)
    else:
        with tempfile.TemporaryDirectory(prefix="madis-load-") as tmp:
            local = os.path.join(tmp, WEIGHTS_NAME)
            fs.get_file(remote, local)
            missing, unexpected = load_model(module, local, strict=strict)
    return sorted(missing), sorted(unexpected)
