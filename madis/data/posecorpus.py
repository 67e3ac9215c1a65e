"""A user's own ``.pose`` corpus as keypoints shards (``madis data build-pose``).

The index (CSV with a header row, or JSON lines when the name ends in ``.jsonl``, ``.ndjson`` or
``.json``) has one row per sample:

==========  ===========================================================================
``path``    the ``.pose`` file: a local path, or ``s3://bucket/key``; relative paths are
            relative to the index's own directory (or S3 prefix)
``text``    the spoken-language text
``lang``    the sign-language code (e.g. ``ase``, ``gsg``); the model's language token
``split``   optional: ``train``, ``val`` or ``test``; empty or absent: the seeded split below
``start``   optional, seconds: cut the sample out of a longer recording from here ...
``end``     optional, seconds: ... to here (either may be given alone)
``fps``     optional: the frame rate to use when the file's header has none; when the header
            has one that differs, the header's wins and the report says so
``person``  optional: which person of the file (0-based; default ``--person``)
==========  ===========================================================================

Each row's file is read with pose-format and mapped onto the keypoints format by
:func:`madis.motion.keypoints.read_pose_points` (MediaPipe Holistic full or reduced, OpenPose;
see that module for the rules: estimates, invalid parts, 2-D files), then processed as the sample
corpus is (normalised per clip, gaps filled, hands a clip never detects placed with the corpus
mean hand shape, resampled to 25 fps) and brought to a legal length by the shared length rules.
A row that cannot be used (a bad field, a missing or unreadable file, an unknown layout, no
shoulders, no hand detected in any frame) is *refused*: the build report lists every row with
its outcome, and the build fails only when no train sample remains (or, with ``strict``, when
any row is refused; then nothing is written but the report).

Splits. A row's ``split`` column wins. The other rows are split by their text, so that every
clip of a sentence lands in the same split (test texts are unseen in training): a text goes to
val when ``u < val_fraction``, to test when ``u < val_fraction + test_fraction``, else to train,
with ``u`` uniform in [0, 1) from SHA-256 of ``(seed, lang, text)``. A row's split therefore
does not depend on the other rows. When that leaves val or test empty and there are at least
three train texts, the train text(s) with the smallest ``u`` move there.

Order and output. Keys are ``r{row:06d}-{file stem}`` (row: 1-based data row of the index);
val and test shards hold samples in key order, train in a seeded permutation of it, as the
sample corpus. The output directory holds the shards, ``manifest.json`` (splits, checksums,
z-score statistics, provenance, the ``build`` fingerprint with ``corpus: pose-index``) and
``build_report.json``. Two builds of the same index and files give byte-identical shards.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import io
import json
import math
import random
import re
import tempfile
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np

from madis.data import storage
from madis.data.shards import DEFAULT_MAX_BYTES, SPLITS, Sample, write_shards
from madis.motion.keypoints import (FPS, POINT_SLICES, HolisticPoints, normalize_points,
                                    process_points, read_pose_points)
from madis.motion.length import apply_length_rules

CORPUS = "pose-index"
BUILDER_VERSION = 1
REPORT = "build_report.json"
REQUIRED = ("path", "text", "lang")
OPTIONAL = ("split", "start", "end", "fps", "person")
VAL_FRACTION = 0.1
TEST_FRACTION = 0.1
SEED = 0
DEFAULT_LICENCE = "not given: the corpus owner's terms apply"


@dataclass
class Row:
    """One index row, parsed. ``row`` is 1-based over the data rows; ``url`` the resolved path."""

    row: int
    path: str
    url: str
    text: str
    lang: str
    split: str | None = None
    start: float | None = None
    end: float | None = None
    fps: float | None = None
    person: int | None = None


@dataclass
class Outcome:
    """What became of one index row (one entry of the build report)."""

    row: int
    path: str
    outcome: str  # "ok" or "refused"
    reason: str = ""
    key: str | None = None
    split: str | None = None
    text: str | None = None
    lang: str | None = None
    start: float | None = None
    end: float | None = None
    person: int | None = None
    layout: str | None = None
    people: int | None = None
    fps: float | None = None  # the clip's source frame rate (header's)
    source_frames: int | None = None  # frames read (after the cut, before resampling)
    frames: int | None = None  # frames written (25 fps, length rules applied)
    valid: dict[str, float] | None = None  # share of written frames valid per part
    depth: bool | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class BuildResult:
    """``manifest`` (None when nothing was written), ``outcomes`` per row, ``warnings``."""

    manifest: dict | None
    outcomes: list[Outcome]
    warnings: list[str]
    report: dict

    @property
    def used(self) -> int:
        return sum(o.outcome == "ok" for o in self.outcomes)


# ------------------------------------------------------------------------------------- index
def _number(value: Any, name: str, kind=float):
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        out = kind(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} {value!r} is not a number") from None
    if isinstance(out, float) and not math.isfinite(out):
        raise ValueError(f"{name} {value!r} is not a finite number")
    return out


def _text(value: Any) -> str:
    return unicodedata.normalize("NFC", "" if value is None else str(value)).strip()


def parse_row(n: int, raw: dict, base: str) -> Row:
    """One raw index row -> :class:`Row`.

    Raises:
        ValueError: an empty required field, a bad number, an unknown split, ``end <= start``.
    """
    path, text, lang = (_text(raw.get(k)) for k in REQUIRED)
    for name, value in (("path", path), ("text", text), ("lang", lang)):
        if not value:
            raise ValueError(f"empty {name}")
    split = _text(raw.get("split")) or None
    if split is not None and split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    start, end = _number(raw.get("start"), "start"), _number(raw.get("end"), "end")
    fps, person = _number(raw.get("fps"), "fps"), _number(raw.get("person"), "person", int)
    if start is not None and start < 0:
        raise ValueError(f"start {start} < 0")
    if start is not None and end is not None and end <= start:
        raise ValueError(f"end {end} <= start {start}")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps {fps} <= 0")
    if person is not None and person < 0:
        raise ValueError(f"person {person} < 0")
    url = path if storage.is_s3(path) or Path(path).is_absolute() else _join(base, path)
    return Row(row=n, path=path, url=url, text=text, lang=lang, split=split, start=start, end=end,
               fps=fps, person=person)


def _join(base: str, rel: str) -> str:
    if storage.is_s3(base):
        return base.rstrip("/") + "/" + str(PurePosixPath(rel))
    return str(Path(base) / rel)


def read_index(url: str) -> tuple[list[Row | tuple[int, dict, str]], list[str], bytes]:
    """Read an index (module doc): ``(rows, ignored columns, raw bytes)``.

    A row that does not parse comes back as ``(n, raw, reason)`` so the build can report it.

    Raises:
        ValueError: a required column is missing, the file is empty or not UTF-8, or a JSON line
            is not an object.
        FileNotFoundError / StorageError: the index cannot be read.
    """
    data = storage.read_bytes(url)
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError as exn:
        raise ValueError(f"{url}: not UTF-8 ({exn})") from None
    if str(url).lower().endswith((".jsonl", ".ndjson", ".json")):
        raws = []
        for i, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exn:
                raise ValueError(f"{url} line {i}: not JSON ({exn})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{url} line {i}: a JSON line must be an object with "
                                 f"{', '.join(REQUIRED)}")
            raws.append(obj)
        columns = sorted({k for r in raws for k in r})
        missing = [c for c in REQUIRED if raws and any(c not in r for r in raws)]
    else:
        reader = csv.DictReader(io.StringIO(content, newline=""))
        columns = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = columns
        missing = [c for c in REQUIRED if c not in columns]
        raws = list(reader)
    if not raws:
        raise ValueError(f"{url}: no rows (expected a header with {', '.join(REQUIRED)} "
                         f"[{', '.join(OPTIONAL)}] and one row per sample)")
    if missing:
        raise ValueError(f"{url}: missing column(s) {', '.join(missing)}; an index needs "
                         f"{', '.join(REQUIRED)} (optional: {', '.join(OPTIONAL)})")
    base = str(url).rsplit("/", 1)[0] if storage.is_s3(url) else str(Path(url).parent)
    rows: list = []
    for n, raw in enumerate(raws, 1):
        try:
            rows.append(parse_row(n, raw, base))
        except ValueError as exn:
            rows.append((n, raw, str(exn)))
    ignored = [c for c in columns if c not in REQUIRED + OPTIONAL]
    return rows, ignored, data


# ------------------------------------------------------------------------------------ splits
def text_hash(lang: str, text: str, seed: int) -> float:
    """``u`` in [0, 1) of a text (module doc, Splits)."""
    h = hashlib.sha256(f"{seed}\0{lang}\0{text}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def assign_splits(rows: list[Row], seed: int = SEED, val_fraction: float = VAL_FRACTION,
                  test_fraction: float = TEST_FRACTION) -> dict[int, str]:
    """``{row: split}`` for usable rows (module doc, Splits).

    Raises:
        ValueError: fractions outside [0, 1) or summing to 1 or more.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"bad split fractions val={val_fraction} test={test_fraction}")
    out = {r.row: r.split for r in rows if r.split}
    texts = {(r.lang, r.text) for r in rows if not r.split}
    u = {t: text_hash(*t, seed) for t in texts}
    split_of = {t: "val" if v < val_fraction else "test" if v < val_fraction + test_fraction
                else "train" for t, v in u.items()}
    for split, fraction in (("val", val_fraction), ("test", test_fraction)):
        taken = set(out.values()) | set(split_of.values())
        train = sorted((v, t) for t, v in u.items() if split_of[t] == "train")
        if split not in taken and fraction > 0 and len(train) >= 3:
            split_of[train[0][1]] = split
    out.update({r.row: split_of[(r.lang, r.text)] for r in rows if not r.split})
    return out


def _slug(path: str) -> str:
    stem = PurePosixPath(path).name.rsplit(".", 1)[0]
    ascii_ = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9_-]+", "_", ascii_).strip("_")[:48] or "clip"


# ------------------------------------------------------------------------------------- build
class _Cache:
    """The read clips' points on local disk between the two passes (a corpus may not fit in
    memory; the files themselves may be large recordings or on S3, so they are read once)."""

    def __init__(self, directory: str):
        self.dir = Path(directory)

    def put(self, row: int, p: HolisticPoints) -> None:
        est = p.estimated if p.estimated is not None else np.zeros_like(p.present)
        # one plain [T, 55, 5] array (xyz, present, estimated): cheaper to load than a .npz (a zip)
        packed = np.concatenate([p.xyz, p.present[..., None], est[..., None]], -1)
        np.save(self.dir / f"{row}.npy", packed.astype(np.float32), allow_pickle=False)

    def get(self, row: int, fps: float) -> HolisticPoints:
        a = np.load(self.dir / f"{row}.npy", allow_pickle=False)
        return HolisticPoints(xyz=np.ascontiguousarray(a[..., :3]), present=a[..., 3] > 0,
                              fps=fps, estimated=a[..., 4] > 0)


def _read_row(row: Row, person: int) -> HolisticPoints:
    """Fetch and read one row's clip; check it is usable.

    Raises:
        ValueError / FileNotFoundError / ObjectMissing: the row cannot be used (reported).
    """
    with storage.open_read(row.url) as f:  # a cut reads its frames only (S3: ranged GETs)
        p = read_pose_points(f, row.person if row.person is not None else person,
                             start=row.start, end=row.end, fps=row.fps)
    normalize_points(p)  # raises when the shoulders are never detected
    if not any(p.present[:, POINT_SLICES[h]].all(-1).any() for h in ("lhand", "rhand")):
        raise ValueError("no hand detected in any frame")
    return p


def build_pose_corpus(index: str, out_dir: str, *, person: int = 0, seed: int = SEED,
                      val_fraction: float = VAL_FRACTION, test_fraction: float = TEST_FRACTION,
                      strict: bool = False, estimates_valid: bool = False,
                      licence: str = DEFAULT_LICENCE,
                      max_bytes: int = DEFAULT_MAX_BYTES) -> BuildResult:
    """Build keypoints shards from an index of ``.pose`` files (module doc).

    Args:
        index: the index (local path or ``s3://``).
        out_dir: output directory (local); the report is written there even when no shards are.
        person: default person of every file (a row's ``person`` column wins).
        seed: split and train-order seed.
        strict: refuse the whole build when any row is refused.
        estimates_valid: count estimated body points as valid (see :mod:`madis.motion.keypoints`).
        licence: licence text recorded in the manifest.
    Returns:
        :class:`BuildResult`; ``manifest`` is None when nothing was written.
    Raises:
        ValueError: an unreadable index (missing columns, not UTF-8), bad fractions.
        StorageError: the S3 endpoint or bucket of the index or a file is unusable.
    """
    rows, ignored, index_bytes = read_index(index)
    outcomes: dict[int, Outcome] = {}
    good: list[Row] = []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    warnings = [f"ignored column(s) {', '.join(ignored)}"] if ignored else []
    with tempfile.TemporaryDirectory(prefix="madis-pose-") as tmp:
        cache = _Cache(tmp)
        for r in rows:
            if not isinstance(r, Row):
                n, raw, reason = r
                outcomes[n] = Outcome(row=n, path=str(raw.get("path", "")), outcome="refused",
                                      reason=f"bad row: {reason}")
                continue
            o = Outcome(row=r.row, path=r.path, outcome="refused", text=r.text, lang=r.lang,
                        start=r.start, end=r.end, person=r.person if r.person is not None else person)
            outcomes[r.row] = o
            try:
                p = _read_row(r, person)
            except (storage.EndpointUnreachable, storage.BucketMissing):
                raise
            except Exception as exn:  # noqa: BLE001 - any unreadable file is reported, not fatal
                o.reason = _reason(exn)
                continue
            cache.put(r.row, p)
            o.outcome, o.layout, o.people, o.fps = "ok", p.layout, p.people, p.fps
            o.source_frames, o.depth, o.notes = len(p.xyz), p.depth, list(p.notes)
            good.append(r)
        split_of = assign_splits(good, seed, val_fraction, test_fraction)
        for r in good:
            outcomes[r.row].split = split_of[r.row]
            outcomes[r.row].key = f"r{r.row:06d}-{_slug(r.path)}"
        counts = Counter(split_of.values())
        refused = [o for o in outcomes.values() if o.outcome != "ok"]
        for split in ("val", "test"):
            if not counts[split] and good:
                warnings.append(f"no {split} samples: the training jobs validate on val, "
                                "`madis generate --split test` and the fleet read test")
        untrained = sorted({r.lang for r in good} - {r.lang for r in good
                                                    if split_of[r.row] == "train"})
        if untrained:
            warnings.append(f"sign language(s) {', '.join(untrained)} have no train sample: the "
                            "model cannot learn them (give some rows split=train)")
        report_rows = [outcomes[k] for k in sorted(outcomes)]
        manifest = None
        if not counts["train"]:
            warnings.append("no usable train sample: nothing written")
        elif strict and refused:
            warnings.append(f"--strict: {len(refused)} row(s) refused, nothing written")
        else:
            from madis.data.sample import corpus_mean_hands

            mean_hands = corpus_mean_hands(cache.get(r.row, outcomes[r.row].fps) for r in good)
            by_split = {s: sorted((r for r in good if split_of[r.row] == s),
                                  key=lambda r: outcomes[r.row].key) for s in SPLITS}
            random.Random(seed).shuffle(by_split["train"])

            def samples(split: str) -> Iterator[Sample]:
                for r in by_split[split]:
                    o = outcomes[r.row]
                    clip = process_points(cache.get(r.row, o.fps), mean_hands,
                                          estimates_valid=estimates_valid)
                    motion, valid = apply_length_rules(clip.motion, clip.valid)
                    o.frames = len(motion)
                    o.valid = {p: round(float(v), 4) for p, v in
                               zip(("body", "lhand", "rhand"), valid.mean(0))}
                    extra = {"index_row": r.row, "layout": o.layout, "source_fps": o.fps,
                             "source_frames": o.source_frames, "depth": bool(o.depth)}
                    if r.start is not None or r.end is not None:
                        extra["cut"] = [r.start, r.end]
                    if o.people and o.people > 1:
                        extra["person"] = o.person
                    yield Sample(key=o.key, text=r.text, lang=r.lang, fps=FPS, source=r.path,
                                 motion=motion, valid=valid, meta=extra)

            manifest = write_shards(
                out, {s: samples(s) for s in SPLITS}, motion_format="keypoints", fps=FPS,
                provenance=_provenance(index, index_bytes, outcomes, estimates_valid),
                licence={"name": licence}, max_bytes=max_bytes,
                extra={"build": fingerprint(index_bytes, person, seed, val_fraction,
                                            test_fraction, estimates_valid)})
            _check_body(outcomes, warnings)
    report = {"index": str(index), "out": str(out), "inputs": len(report_rows),
              "used": sum(o.outcome == "ok" for o in report_rows), "refused": len(refused),
              "splits": dict(sorted(counts.items())), "written": manifest is not None,
              "warnings": warnings, "rows": [asdict(o) for o in report_rows]}
    (out / REPORT).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n",
                              encoding="utf-8")
    return BuildResult(manifest=manifest, outcomes=report_rows, warnings=warnings, report=report)


def _reason(exn: BaseException) -> str:
    msg = str(exn).splitlines()[0] if str(exn) else ""
    if isinstance(exn, FileNotFoundError):
        return f"file not found: {exn.filename or msg}"
    if isinstance(exn, ValueError):
        return msg
    return f"{type(exn).__name__}: {msg}"[:300]


def _check_body(outcomes: dict[int, Outcome], warnings: list[str]) -> None:
    written = [o for o in outcomes.values() if o.valid is not None]
    no_body = sum(o.valid["body"] == 0 for o in written)
    if no_body:
        warnings.append(f"{no_body} of {len(written)} clips have no valid body frame (body points "
                        "missing from their layout, e.g. reduced holistic, or never detected): the "
                        "tokenizer learns no body from them (--estimates-valid counts estimated "
                        "points as valid)")


def fingerprint(index_bytes: bytes, person: int, seed: int, val_fraction: float,
                test_fraction: float, estimates_valid: bool) -> dict:
    """The manifest's ``build`` entry of a pose-index corpus."""
    return {"corpus": CORPUS, "builder_version": BUILDER_VERSION,
            "index_sha256": hashlib.sha256(index_bytes).hexdigest(), "person": person,
            "seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction,
            "estimates_valid": estimates_valid, "fps": FPS}


def _provenance(index: str, index_bytes: bytes, outcomes: dict[int, Outcome],
                estimates_valid: bool) -> dict:
    ok = [o for o in outcomes.values() if o.outcome == "ok"]
    return {
        "corpus": "a .pose corpus built by `madis data build-pose` from an index",
        "index": str(index),
        "index_sha256": hashlib.sha256(index_bytes).hexdigest(),
        "rows": len(outcomes), "used": len(ok),
        "layouts": dict(sorted(Counter(o.layout for o in ok).items())),
        "sign_languages": sorted({o.lang for o in ok}),
        "pose_format": f"pose-format=={importlib.metadata.version('pose-format')}",
        "processing": "madis.motion.keypoints (layouts mapped onto the 55 points, shoulder-"
                      "normalised, gaps filled, corpus mean hand shape, resampled to 25 fps by "
                      "the header's frame rate) + the length rules; madis.data.posecorpus "
                      f"(splits, order); estimated body points valid: {estimates_valid}",
        "report": REPORT,
    }
