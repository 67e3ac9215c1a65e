"""The best-checkpoint registry: ``{run_url}/best.json``, written by the eval fleet, read by the
Serve application and the CLI. Standard library and fsspec only (no Ray, no torch).

Layout (one JSON object)::

    {"metric": "siclip_s2t_R@1", "mode": "max",
     "best": {"step": 600, "checkpoint_url": ".../checkpoint_00000600",
              "export_url": ".../checkpoint_00000600/export", "value": 31.6,
              "metrics": {"dtw_jpe_body": 0.21, "siclip_s2t_R@1": 31.6, ...}},
     "history": [{"step": 200, "checkpoint_url": "...", "status": "ok" | "failed",
                  "value": 12.5 | null, "metrics": {...}, "error": null | "why",
                  "evaluated_at": "2026-12-01T10:00:00+00:00"}, ...],
     "updated_at": "2026-12-01T10:00:00+00:00"}

``best`` is null until one checkpoint is evaluated successfully with a finite ``metric``.

Ranking (:func:`update_best`): ``best`` is always the history's ``ok`` entry with the best finite
value in ``mode``; on a tie the earlier checkpoint (lower step) stays, so a plateau does not make
the Serve application reload; a regression leaves ``best`` as it was and is only recorded in
the history; a failed checkpoint never becomes best. When the configured metric or mode changes,
the history is re-ranked by the new one.

Atomicity: a reader sees the previous document or the new one, never a partial one: a local
file is written to a temporary file in the same directory and renamed over ``best.json``
(``os.replace``); on S3 the document is one ``PUT`` of the whole object, which S3 applies
atomically; any other fsspec filesystem gets a temporary object then a move. There is one writer
per run (the fleet's coordinator); readers never lock.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import uuid
from datetime import datetime, timezone
from typing import Any, Mapping

import fsspec

BEST_FILE = "best.json"
STATUSES = ("ok", "failed")


def best_url(run_url: str) -> str:
    """``{run_url}/best.json``."""
    return f"{str(run_url).rstrip('/')}/{BEST_FILE}"


def now_iso() -> str:
    """The current UTC time, ISO 8601 with offset (``2026-12-01T10:00:00.123456+00:00``)."""
    return datetime.now(timezone.utc).isoformat()


def read_best(run_url: str) -> dict[str, Any] | None:
    """The registry of a run, or ``None`` when the fleet has written none yet.

    Args:
        run_url: ``{storage_path}/{run_name}``: a local directory, ``file://`` or ``s3://...``
            (endpoint from ``AWS_ENDPOINT_URL``, credentials from the environment).

    Returns:
        The document described in the module doc; ``doc["best"]["export_url"]`` is what to load.

    Raises:
        ValueError: ``best.json`` exists but is not a registry document.
        OSError: the storage cannot be read (unreachable endpoint, no permission).
    """
    fs, path = fsspec.core.url_to_fs(best_url(run_url))
    fs.invalidate_cache()  # s3fs caches listings per instance: a poller would miss a new file
    try:
        raw = fs.cat_file(path)
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw)
    except ValueError as exn:
        raise ValueError(f"{best_url(run_url)} is not valid JSON: {exn}") from None
    if not isinstance(doc, dict) or not {"metric", "mode", "best", "history"} <= set(doc):
        raise ValueError(f"{best_url(run_url)} is not a best-checkpoint registry "
                         f"(needs metric, mode, best, history)")
    return doc


def write_json_atomic(url: str, doc: Any) -> None:
    """Write ``doc`` as JSON at ``url`` so that readers see the old or the new file, whole.

    Raises:
        OSError: the storage refused the write.
    """
    write_bytes_atomic(url, json.dumps(doc, indent=1, allow_nan=False).encode())


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Replace the file / object at ``url`` with ``data`` in one step (see the module doc)."""
    fs, path = fsspec.core.url_to_fs(str(url))
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    parent = path.rsplit("/", 1)[0]
    if "file" in protocols or "local" in protocols:
        os.makedirs(parent, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=parent)
        try:
            os.fchmod(fd, 0o644)  # mkstemp's 0600 would make best.json unlike every other output
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    elif "s3" in protocols or "s3a" in protocols:
        fs.pipe_file(path, data)  # small bodies go as one PutObject: atomic on S3
    else:
        tmp = f"{parent}/.{path.rsplit('/', 1)[-1]}.{uuid.uuid4().hex}"
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)


def _finite(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def clean_metrics(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    """Metrics as JSON-safe floats: NaN/inf (which strict JSON cannot hold) become ``None``."""
    return {str(k): _finite(v) for k, v in metrics.items()}


def history_entry(step: int, checkpoint_url: str, *, metrics: Mapping[str, Any] | None = None,
                  error: str | None = None, evaluated_at: str | None = None) -> dict[str, Any]:
    """One history record: ``ok`` with its metrics, or ``failed`` with the error (no metrics).

    ``value`` is filled by :func:`update_best` from the registry's metric.
    """
    return {"step": int(step), "checkpoint_url": str(checkpoint_url),
            "status": "failed" if error is not None else "ok", "value": None,
            "metrics": clean_metrics(metrics or {}) if error is None else {},
            "error": error, "evaluated_at": evaluated_at or now_iso()}


def _better(value: float, than: float, mode: str) -> bool:
    return value > than if mode == "max" else value < than


def update_best(doc: Mapping[str, Any] | None, entry: Mapping[str, Any] | None, metric: str,
                mode: str) -> dict[str, Any]:
    """The registry after recording ``entry`` (a :func:`history_entry`); pure, writes nothing.

    An entry for a step already in the history replaces it (a re-run after a crash between the
    dashboard write and the registry write). ``entry`` None only re-ranks (metric change).

    Raises:
        ValueError: ``mode`` is not max/min, or an entry has an unknown status.
    """
    # imported here: the madis.train package loads torch, which readers of best.json don't need
    from madis.train.checkpoints import export_url

    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    history = [dict(h) for h in (doc or {}).get("history", [])]
    if entry is not None:
        if entry.get("status") not in STATUSES:
            raise ValueError(f"history entry status must be one of {STATUSES}: {entry}")
        history = [h for h in history if h["step"] != entry["step"]] + [dict(entry)]
    history.sort(key=lambda h: h["step"])
    best = None
    for h in history:
        h["value"] = _finite(h.get("metrics", {}).get(metric)) if h["status"] == "ok" else None
        if h["value"] is None:
            continue
        if best is None or _better(h["value"], best["value"], mode):  # ties keep the earlier
            best = h
    best_doc = None if best is None else {
        "step": best["step"], "checkpoint_url": best["checkpoint_url"],
        "export_url": export_url(best["checkpoint_url"]), "value": best["value"],
        "metrics": dict(best["metrics"])}
    return {"metric": metric, "mode": mode, "best": best_doc, "history": history,
            "updated_at": now_iso()}


def record(run_url: str, entry: Mapping[str, Any], metric: str, mode: str) -> dict[str, Any]:
    """Read ``best.json``, add ``entry`` (:func:`update_best`), write it back atomically.

    Single writer: the fleet's coordinator is the only process that calls this for a run.

    Returns:
        The document written.
    Raises:
        ValueError: the existing ``best.json`` is not a registry (it is left untouched).
        OSError: storage errors.
    """
    doc = update_best(read_best(run_url), entry, metric, mode)
    write_json_atomic(best_url(run_url), doc)
    return doc


def evaluated_steps(doc: Mapping[str, Any] | None) -> dict[int, str]:
    """``{step: status}`` of every checkpoint the registry has recorded."""
    return {int(h["step"]): h["status"] for h in (doc or {}).get("history", [])}
