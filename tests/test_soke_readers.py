"""SOKE-layout readers for How2Sign, CSL-Daily and Phoenix-2014T on tiny fixtures written here."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest

from madis.data.shards import iter_samples, read_manifest
from madis.data.soke import (
    SMPLX_KEY_DIMS, SMPLX_KEYS, ReadReport, build_soke_shards, read_csl_daily, read_how2sign, read_phoenix,
)
from madis.motion.smplx133 import smplx179_to_133


def _frames(T, seed):
    """[T, 179]: value = seed + frame/1000 + feature/10 (recognisable after slicing)."""
    return (seed + np.arange(T)[:, None] / 1000 + np.arange(179)[None] / 10).astype(np.float32)


def _frame_dict(row):
    out, i = {}, 0
    for k, d in zip(SMPLX_KEYS, SMPLX_KEY_DIMS):
        out[k] = row[i:i + d].copy()
        i += d
    return out


def _write_frames(directory: Path, frames, pattern):
    directory.mkdir(parents=True)
    for i, row in enumerate(frames):
        with open(directory / pattern.format(i=i), "wb") as f:
            pickle.dump(_frame_dict(row), f)


def _split_file(path: Path, ann):
    with gzip.open(path, "wb") as f:
        pickle.dump(ann, f)


@pytest.fixture
def how2sign(tmp_path):
    root = tmp_path / "How2Sign"
    csv_dir = root / "train" / "re_aligned"
    csv_dir.mkdir(parents=True)
    (csv_dir / "how2sign_realigned_train_preprocessed_fps.csv").write_text(
        "VIDEO_ID\tVIDEO_NAME\tSENTENCE_ID\tSENTENCE_NAME\tSTART_REALIGNED\tEND_REALIGNED\tSENTENCE\tfps\n"
        "v1\tv1-rgb\ts1\tabc_0-1-rgb_front\t1.0\t3.5\tHello there.\t24\n"
        "v1\tv1-rgb\ts2\tabc_1-1-rgb_front\t4.0\t6.0\tIt is thirty.\t30\n"
        "v2\tv2-rgb\ts3\tlong_0-1-rgb_front\t0.0\t31.0\tToo long.\t24\n"
        "v3\tv3-rgb\ts4\tgone_0-1-rgb_front\t0.0\t2.0\tNo poses.\t24\n", encoding="utf-8")
    poses = root / "train" / "poses"
    _write_frames(poses / "abc_0-1-rgb_front", _frames(12, 1), "abc_0-1-rgb_front_{i}_3D.pkl")
    _write_frames(poses / "abc_1-1-rgb_front", _frames(50, 2), "abc_1-1-rgb_front_{i}_3D.pkl")
    _write_frames(poses / "long_0-1-rgb_front", _frames(5, 3), "long_0-1-rgb_front_{i}_3D.pkl")
    return root


def test_how2sign_reader(how2sign):
    rep = ReadReport()
    clips = list(read_how2sign(how2sign, "train", rep))
    assert [c.name for c in clips] == ["abc_0-1-rgb_front", "abc_1-1-rgb_front"]
    assert rep.read == 2 and [n for n, _ in rep.skipped] == ["long_0-1-rgb_front", "gone_0-1-rgb_front"]
    a, b = clips
    assert a.text == "Hello there." and a.fps == 24.0
    np.testing.assert_array_equal(a.frames, _frames(12, 1))  # frames 0..11 in numeric order (10 after 9)
    # 30 fps -> 24 fps: int(24 * 50 / 30) = 40 frames at floor(i * 50 / 40)
    assert b.fps == 24.0 and len(b.frames) == 40
    np.testing.assert_array_equal(b.frames, _frames(50, 2)[[int(i * 1.25) for i in range(40)]])


def test_csl_daily_reader_frames_and_video_level(tmp_path):
    root = tmp_path / "CSL-Daily"
    root.mkdir()
    _split_file(root / "csl_clean.train", [{"name": "S000001_P0000_T00", "text": "今天天气很好", "gloss": "x"},
                                           {"name": "S000002_P0001_T00", "text": ["我", "爱", "你"]},
                                           {"name": "S000003_P0002_T00", "text": "短"}])
    _write_frames(root / "poses" / "S000001_P0000_T00", _frames(7, 4), "{i:06d}.pkl")
    vid = root / "poses_video_level"
    vid.mkdir()
    f2 = _frames(45, 5)
    with open(vid / "S000002_P0001_T00.pkl", "wb") as f:
        pickle.dump({k: np.stack([_frame_dict(r)[k] for r in f2]) for k in SMPLX_KEYS}, f)
    _write_frames(root / "poses" / "S000003_P0002_T00", _frames(3, 6), "{i:06d}.pkl")  # < 4 frames
    rep = ReadReport()
    clips = list(read_csl_daily(root, "train", rep))
    assert [c.text for c in clips] == ["今天天气很好", "我爱你"]
    np.testing.assert_array_equal(clips[0].frames, _frames(7, 4))
    np.testing.assert_array_equal(clips[1].frames, f2)
    assert rep.skipped == [("S000003_P0002_T00", "3 frames")]
    with pytest.raises(FileNotFoundError, match="csl_clean.test"):
        list(read_csl_daily(root, "test"))


def test_phoenix_reader_dev_is_val(tmp_path):
    root = tmp_path / "phoenix"
    root.mkdir()
    name = "dev/01April_2010_Thursday_heute-6697"
    _split_file(root / "phoenix14t.dev", [{"name": name, "text": "und nun die wettervorhersage"}])
    _write_frames(root / name, _frames(9, 7), "images{i:04d}.pkl")
    clips = list(read_phoenix(root, "val"))
    assert len(clips) == 1 and clips[0].split == "val" and clips[0].fps == 25.0
    np.testing.assert_array_equal(clips[0].frames, _frames(9, 7))


def test_bad_frame_pickle_is_skipped_with_reason(tmp_path):
    root = tmp_path / "phoenix"
    root.mkdir()
    _split_file(root / "phoenix14t.train", [{"name": "train/x", "text": "a"}])
    d = root / "train" / "x"
    d.mkdir(parents=True)
    for i in range(5):
        with open(d / f"images{i:04d}.pkl", "wb") as f:
            pickle.dump({"smplx_root_pose": np.zeros(3)}, f)
    rep = ReadReport()
    assert list(read_phoenix(root, "train", rep)) == []
    assert "smplx_body_pose" in rep.skipped[0][1]


def test_build_soke_shards_combines_datasets(how2sign, tmp_path):
    csl = tmp_path / "csl"
    csl.mkdir()
    for split in ("train", "val", "test"):
        _split_file(csl / f"csl_clean.{split}", [{"name": f"{split}1", "text": "你好"}])
        _write_frames(csl / "poses" / f"{split}1", _frames(410, 8), "{i:06d}.pkl")
    for split in ("val", "test"):
        d = how2sign / split / "re_aligned"
        d.mkdir(parents=True)
        (d / f"how2sign_realigned_{split}_preprocessed_fps.csv").write_text(
            "SENTENCE_NAME,SENTENCE,START_REALIGNED,END_REALIGNED,fps\n", encoding="utf-8")
    out = tmp_path / "shards"
    manifest, reports = build_soke_shards(out, {"how2sign": how2sign, "csl": csl})
    assert manifest["format"] == "smplx133" and len(manifest["stats"]["mean"]) == 133
    assert {s: v["samples"] for s, v in manifest["splits"].items()} == {"train": 3, "val": 1, "test": 1}
    assert manifest["splits"]["train"]["languages"] == {"ase": 2, "csl": 1}
    assert reports["how2sign/train"].read == 2
    got = {s["key"]: s for s in iter_samples(str(out), "train", shuffle=False)}
    assert sorted(got) == ["csl-train1", "how2sign-abc_0-1-rgb_front", "how2sign-abc_1-1-rgb_front"]
    c = got["csl-train1"]
    assert c["meta"]["lang"] == "csl" and c["motion"].shape == (400, 133)  # 410 -> 400 frames
    ref = smplx179_to_133(_frames(410, 8))[np.linspace(0, 409, 400).astype(int)]
    np.testing.assert_allclose(c["motion"], ref.astype(np.float16).astype(np.float32), atol=0)
    assert got["how2sign-abc_0-1-rgb_front"]["motion"].shape == (40, 133)  # 12 -> 40 frames
    assert c["valid"].all()
    assert read_manifest(str(out))["licence"].keys() == {"how2sign", "csl"}
