"""Readers for CSL-Daily, Phoenix-2014T and How2Sign in SOKE's on-disk layout
(docs/data-formats.md#smplx133).

SOKE (and the MaDiS release built on it) ships SMPL-X fits as pickles; one frame is a dict
``smplx_root_pose (3,) smplx_body_pose (63,) smplx_lhand_pose (45,) smplx_rhand_pose (45,)
smplx_jaw_pose (3,) smplx_shape (10,) smplx_expr (10,)`` whose concatenation in that order is
the 179-d frame. Layouts read here (``ROOT`` is the directory given for each dataset):

How2Sign (``lang`` ``ase``)
    ``ROOT/{train,val,test}/re_aligned/how2sign_realigned_{split}_preprocessed_fps.csv`` with
    columns ``SENTENCE_NAME, SENTENCE, START_REALIGNED, END_REALIGNED`` and ``fps``; frames in
    ``ROOT/{split}/poses/{SENTENCE_NAME}/{SENTENCE_NAME}_{i}_3D.pkl``. As in SOKE, sentences of
    30 s or more are dropped and clips above 24 fps are subsampled to 24 fps.
CSL-Daily (``lang`` ``csl``)
    split files ``ROOT/csl_clean.{train,val,test}``: gzip-compressed pickles of a list of dicts
    with ``name`` and ``text``; frames in ``ROOT/poses/{name}/*.pkl`` (sorted by name).
Phoenix-2014T (``lang`` ``gsg``)
    split files ``ROOT/phoenix14t.{train,dev,test}`` (``dev`` is our ``val``), same content;
    frames in ``ROOT/{name}/*.pkl`` (``name`` is e.g. ``train/01April_2010_Thursday_heute-6694``).

For CSL-Daily and Phoenix a per-video pickle ``ROOT/poses_video_level/{name}.pkl`` (the same keys,
each an array ``[T, d]``) is used instead when present. A clip whose frames are missing or fewer
than 4 is skipped with a warning and counted (SOKE skips them too). Frames are converted to the
133-d features (:func:`madis.motion.smplx133.smplx179_to_133`) and go through the length rules;
``valid`` is all True (SMPL-X fits have no missing parts).

The pickles are the user's own dataset files; ``pickle`` executes code, so read only trusted
copies.
"""

from __future__ import annotations

import csv
import gzip
import logging
import math
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from madis.data.shards import DEFAULT_MAX_BYTES, Sample, write_shards
from madis.motion.length import apply_length_rules
from madis.motion.smplx133 import smplx179_to_133

log = logging.getLogger(__name__)

SMPLX_KEYS = ("smplx_root_pose", "smplx_body_pose", "smplx_lhand_pose", "smplx_rhand_pose",
              "smplx_jaw_pose", "smplx_shape", "smplx_expr")
SMPLX_KEY_DIMS = (3, 63, 45, 45, 3, 10, 10)
MIN_CLIP_FRAMES = 4
HOW2SIGN_MAX_SECONDS = 30.0
HOW2SIGN_FPS = 24.0
#: nominal frame rates of the fits (How2Sign: per row of its CSV, then at most 24)
DATASET_FPS = {"csl": 25.0, "phoenix": 25.0}
DATASET_LANG = {"how2sign": "ase", "csl": "csl", "phoenix": "gsg"}
LICENCES = {
    "how2sign": "How2Sign (CC BY-NC 4.0, https://how2sign.github.io); check the distributor's terms",
    "csl": "CSL-Daily (research use under the distributor's licence agreement)",
    "phoenix": "RWTH-PHOENIX-Weather 2014 T (CC BY-NC-SA 3.0); check the distributor's terms",
}


@dataclass
class SokeClip:
    """One sentence: ``frames [T, 179]`` float32 SMPL-X (radians) at ``fps``."""

    dataset: str
    split: str
    name: str
    text: str
    frames: np.ndarray
    fps: float


@dataclass
class ReadReport:
    """Clips read and clips skipped (with why) by a reader."""

    read: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def frame_vector(frame: Mapping, where: str = "") -> np.ndarray:
    """Concatenate one SOKE frame dict into the 179-d vector.

    Raises:
        ValueError: a key is missing or has the wrong size.
    """
    parts = []
    for key, dim in zip(SMPLX_KEYS, SMPLX_KEY_DIMS):
        if key not in frame:
            raise ValueError(f"{where}: SMPL-X frame has no {key!r} (keys: {sorted(frame)})")
        v = np.asarray(frame[key], np.float32).reshape(-1)
        if v.size != dim:
            raise ValueError(f"{where}: {key} has {v.size} values, expected {dim}")
        parts.append(v)
    return np.concatenate(parts)


def _frame_number(path: Path) -> tuple[int, str]:
    m = re.search(r"(\d+)(?:_3D)?$", path.stem)  # How2Sign: NAME_{i}_3D.pkl
    return (int(m.group(1)) if m else -1, path.name)


def load_frame_dir(directory: Path, numeric: bool = False) -> np.ndarray:
    """``[T, 179]`` from a directory of per-frame pickles (sorted by name, or by the last
    number of the name, before an optional ``_3D``, when ``numeric``: How2Sign's ``NAME_{i}_3D.pkl``)."""
    files = [p for p in directory.iterdir() if p.suffix == ".pkl"]
    files.sort(key=_frame_number if numeric else (lambda p: p.name))
    rows = []
    for p in files:
        with open(p, "rb") as f:
            rows.append(frame_vector(pickle.load(f), str(p)))
    return np.stack(rows) if rows else np.zeros((0, 179), np.float32)


def load_video_pickle(path: Path) -> np.ndarray:
    """``[T, 179]`` from a per-video pickle holding the SMPL-X keys as ``[T, d]`` arrays."""
    with open(path, "rb") as f:
        data = pickle.load(f)
    cols = []
    for key, dim in zip(SMPLX_KEYS, SMPLX_KEY_DIMS):
        if key not in data:
            raise ValueError(f"{path}: no {key!r} (keys: {sorted(data)})")
        a = np.asarray(data[key], np.float32)
        cols.append(a.reshape(len(a), dim))
    return np.concatenate(cols, axis=1)


def read_split_file(path: Path) -> list[dict]:
    """A gzip-pickled list of dicts with ``name`` and ``text`` (CSL-Daily / Phoenix split file).

    Raises:
        FileNotFoundError: missing file (names it). ValueError: unexpected content.
    """
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    with gzip.open(path, "rb") as f:
        ann = pickle.load(f)
    if not isinstance(ann, (list, tuple)) or any(not {"name", "text"} <= set(a) for a in ann):
        raise ValueError(f"{path}: expected a list of dicts with 'name' and 'text'")
    return list(ann)


def _text(value) -> str:
    return "".join(value) if isinstance(value, (list, tuple)) else str(value)


def _emit(report: ReadReport, dataset, split, name, text, load, fps) -> Iterator[SokeClip]:
    try:
        frames = load()
    except (OSError, ValueError, pickle.UnpicklingError, EOFError) as exn:
        log.warning("%s %s: skipping %s: %s", dataset, split, name, exn)
        report.skipped.append((name, str(exn)))
        return
    if len(frames) < MIN_CLIP_FRAMES:
        log.warning("%s %s: skipping %s: %d frames", dataset, split, name, len(frames))
        report.skipped.append((name, f"{len(frames)} frames"))
        return
    report.read += 1
    yield SokeClip(dataset, split, name, _text(text), frames.astype(np.float32), fps)


def _video_or_frames(root: Path, frame_dir: Path, name: str):
    video = root / "poses_video_level" / f"{name}.pkl"
    if video.is_file():
        return lambda: load_video_pickle(video)
    if not frame_dir.is_dir():
        return lambda: (_ for _ in ()).throw(FileNotFoundError(f"no poses for {name}: {frame_dir}"))
    return lambda: load_frame_dir(frame_dir)


def read_csl_daily(root: str | Path, split: str, report: ReadReport | None = None) -> Iterator[SokeClip]:
    """CSL-Daily clips of ``split`` (train/val/test) from ``root`` (module doc layout)."""
    root, report = Path(root), report if report is not None else ReadReport()
    for a in read_split_file(root / f"csl_clean.{split}"):
        yield from _emit(report, "csl", split, a["name"], a["text"],
                         _video_or_frames(root, root / "poses" / a["name"], a["name"]), DATASET_FPS["csl"])


def read_phoenix(root: str | Path, split: str, report: ReadReport | None = None) -> Iterator[SokeClip]:
    """Phoenix-2014T clips of ``split`` (train/val/test; val reads the ``dev`` file)."""
    root, report = Path(root), report if report is not None else ReadReport()
    for a in read_split_file(root / f"phoenix14t.{'dev' if split == 'val' else split}"):
        yield from _emit(report, "phoenix", split, a["name"], a["text"],
                         _video_or_frames(root, root / a["name"], a["name"]), DATASET_FPS["phoenix"])


def _subsample_to(frames: np.ndarray, fps: float, target: float) -> np.ndarray:
    """SOKE's How2Sign rule: above ``target`` fps keep ``int(target * T / fps)`` frames at
    indices ``floor(i * T / count)``."""
    if fps <= target:
        return frames
    count = int(target * len(frames) / fps)
    if count < 1:
        return frames[:0]
    step = len(frames) / count
    return frames[[int(math.floor(i * step)) for i in range(count)]]


def read_how2sign(root: str | Path, split: str, report: ReadReport | None = None) -> Iterator[SokeClip]:
    """How2Sign clips of ``split`` (train/val/test) from ``root`` (module doc layout).

    Raises:
        FileNotFoundError: no CSV for the split. ValueError: the CSV lacks a required column.
    """
    root, report = Path(root), report if report is not None else ReadReport()
    path = root / split / "re_aligned" / f"how2sign_realigned_{split}_preprocessed_fps.csv"
    if not path.is_file():
        raise FileNotFoundError(f"How2Sign CSV not found: {path}")
    with open(path, encoding="utf-8", newline="") as f:
        sniff = f.read(4096)
        f.seek(0)
        delim = "\t" if sniff.count("\t") > sniff.count(",") else ","
        rows = list(csv.DictReader(f, delimiter=delim))
    need = {"SENTENCE_NAME", "SENTENCE", "START_REALIGNED", "END_REALIGNED", "fps"}
    if rows and not need <= set(rows[0]):
        raise ValueError(f"{path}: missing columns {sorted(need - set(rows[0]))}")
    for r in rows:
        name = r["SENTENCE_NAME"]
        if float(r["END_REALIGNED"]) - float(r["START_REALIGNED"]) >= HOW2SIGN_MAX_SECONDS:
            report.skipped.append((name, f">= {HOW2SIGN_MAX_SECONDS} s"))
            continue
        fps = float(r["fps"])
        d = root / split / "poses" / name

        def load(d=d, fps=fps, name=name):
            if not d.is_dir():
                raise FileNotFoundError(f"no poses for {name}: {d}")
            return _subsample_to(load_frame_dir(d, numeric=True), fps, HOW2SIGN_FPS)

        yield from _emit(report, "how2sign", split, name, r["SENTENCE"], load, min(fps, HOW2SIGN_FPS))


READERS = {"how2sign": read_how2sign, "csl": read_csl_daily, "phoenix": read_phoenix}


def clip_to_sample(clip: SokeClip) -> Sample:
    """179-d clip -> 133-d :class:`Sample` after the length rules (``valid`` all True)."""
    feats = smplx179_to_133(clip.frames)
    motion, = apply_length_rules(feats)
    key = re.sub(r"[^A-Za-z0-9_-]", "_", f"{clip.dataset}-{clip.name}")
    return Sample(key=key, text=clip.text, lang=DATASET_LANG[clip.dataset], fps=clip.fps,
                  source=f"{clip.dataset}:{clip.name}", motion=motion,
                  valid=np.ones((len(motion), 3), bool), composed=False,
                  meta={"dataset": clip.dataset, "source_frames": int(len(clip.frames))})


def build_soke_shards(out_dir: str | Path, roots: Mapping[str, str | Path],
                      splits: Sequence[str] = ("train", "val", "test"),
                      max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[dict, dict[str, ReadReport]]:
    """Read the given datasets (``{"how2sign"|"csl"|"phoenix": root}``) into one 133-d shard set.

    Samples are keyed ``{dataset}-{name}`` and written sorted by key; the z-score stats are over
    every train frame of the combined datasets
    (docs/data-formats.md#length-rules-and-normalisation). Returns ``(manifest, reports)``.

    Raises:
        KeyError: unknown dataset name. FileNotFoundError: a missing split file / CSV.
    """
    unknown = sorted(set(roots) - set(READERS))
    if unknown:
        raise KeyError(f"unknown datasets {unknown}; known: {sorted(READERS)}")
    reports: dict[str, ReadReport] = {}
    by_split: dict[str, list[Sample]] = {}
    for split in splits:
        samples = []
        for name in sorted(roots):
            rep = reports.setdefault(f"{name}/{split}", ReadReport())
            samples += [clip_to_sample(c) for c in READERS[name](roots[name], split, rep)]
        by_split[split] = sorted(samples, key=lambda s: s.key)
    fps = sorted({s.fps for ss in by_split.values() for s in ss}) or [25.0]
    manifest = write_shards(
        out_dir, by_split, motion_format="smplx133", fps=fps[-1] if len(fps) == 1 else 25.0,
        provenance={"datasets": {n: str(Path(r)) for n, r in sorted(roots.items())},
                    "layout": "SOKE (per-frame/per-video SMPL-X pickles, split files, How2Sign CSV)",
                    "fps_per_sample": "see each sample's json 'fps'"},
        licence={n: LICENCES[n] for n in sorted(roots)}, max_bytes=max_bytes,
        extra={"skipped": {k: len(v.skipped) for k, v in sorted(reports.items())}})
    return manifest, reports
