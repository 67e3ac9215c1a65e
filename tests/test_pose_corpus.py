"""A user's own .pose corpus (issue 17): every MediaPipe Holistic variant and OpenPose through the
keypoints reader, and `madis data build-pose` on a corpus this test writes with pose-format
itself from real lexicon clips (full and reduced holistic, with and without world landmarks, two
people, cuts out of a longer recording, a 30 fps file, OpenPose), then a few tokenizer steps on
the shards through the real tokenizer job."""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json

import numpy as np
import numpy.ma as ma
import pytest

from madis.data.posecorpus import assign_splits, build_pose_corpus, parse_row, text_hash
from madis.data.shards import iter_samples, read_manifest
from madis.motion.keypoints import (BODY_LANDMARKS, FPS, POINT_SLICES, process_points,
                                    read_pose_points)

pose_format = pytest.importorskip("pose_format")
from pose_format import Pose  # noqa: E402
from pose_format.numpy import NumPyPoseBody  # noqa: E402
from pose_format.utils.generic import reduce_holistic  # noqa: E402
from pose_format.utils.openpose import load_openpose  # noqa: E402

HANDS = slice(POINT_SLICES["lhand"].start, POINT_SLICES["rhand"].stop)


def _lexicon(lang: str, text: str):
    from madis.data.sample import read_lexicon

    for e in read_lexicon():
        if (e.lang, e.text) == (lang, text):
            return e.path
    raise KeyError((lang, text))


def _pose(lang="ase", text="B") -> Pose:
    return Pose.read(_lexicon(lang, text).read_bytes())


def _bytes(pose: Pose) -> bytes:
    buf = io.BytesIO()
    pose.write(buf)
    return buf.getvalue()


def _without_world(pose: Pose) -> Pose:
    return pose.get_components([c.name for c in pose.header.components
                                if c.name != "POSE_WORLD_LANDMARKS"])


def _concat(poses: list[Pose]) -> Pose:
    """One recording of several clips, one after the other (same layout and fps)."""
    out = copy.deepcopy(poses[0])
    out.body = NumPyPoseBody(fps=poses[0].body.fps,
                             data=ma.concatenate([p.body.data for p in poses], axis=0),
                             confidence=np.concatenate([p.body.confidence for p in poses], 0))
    return out


def _two_people(first: Pose, second: Pose) -> Pose:
    """``first`` as person 0 and ``second`` (cut/padded to the same length) as person 1."""
    T = len(first.body.data)
    d2, c2 = second.body.data[:T], second.body.confidence[:T]
    if len(d2) < T:  # the second person leaves: empty (zero, masked) frames
        pad = T - len(d2)
        d2 = ma.concatenate([d2, ma.masked_all((pad,) + d2.shape[1:], np.float32)], 0)
        c2 = np.concatenate([c2, np.zeros((pad,) + c2.shape[1:], np.float32)], 0)
    out = copy.deepcopy(first)
    out.body = NumPyPoseBody(fps=first.body.fps,
                             data=ma.concatenate([first.body.data, d2], axis=1),
                             confidence=np.concatenate([first.body.confidence, c2], 1))
    return out


def _openpose(pose: Pose) -> Pose:
    """The holistic clip as OpenPose BODY_25 + face 70 + hands would have written it (2-D)."""
    from pose_format.utils.openpose import BODY_POINTS, FACE_POINTS

    from madis.motion.keypoints import OPENPOSE_BODY

    comps = {c.name: c.points for c in pose.header.components}
    off, s = {}, 0
    for c in pose.header.components:
        off[c.name] = s
        s += len(c.points)
    data = np.ma.getdata(pose.body.data[:, 0])
    conf = pose.body.confidence[:, 0]

    def flat(rows):  # [(x, y, c)] -> OpenPose's flat list
        return [float(v) for r in rows for v in r]

    def point(comp, name):
        i = off[comp] + comps[comp].index(name)
        return (data[:, i, 0], data[:, i, 1], conf[:, i])

    frames = {}
    by_op = {v: k for k, v in OPENPOSE_BODY.items()}
    mouth = {"FLO_48": "61", "FLO_54": "291"}
    for t in range(len(data)):
        body = [[p[0][t], p[1][t], p[2][t]] if (p := point("POSE_LANDMARKS", by_op[n]) if n in by_op
                                               else None) else [0, 0, 0] for n in BODY_POINTS]
        face = [[*(lambda p: (p[0][t], p[1][t], p[2][t]))(point("FACE_LANDMARKS", mouth[n]))]
                if n in mouth else [0, 0, 0] for n in FACE_POINTS]
        hands = {h: [[data[t, off[c] + k, 0], data[t, off[c] + k, 1], conf[t, off[c] + k]]
                     for k in range(21)]
                 for h, c in (("left", "LEFT_HAND_LANDMARKS"), ("right", "RIGHT_HAND_LANDMARKS"))}
        frames[t] = {"people": [{"pose_keypoints_2d": flat(body), "face_keypoints_2d": flat(face),
                                 "hand_left_keypoints_2d": flat(hands["left"]),
                                 "hand_right_keypoints_2d": flat(hands["right"])}]}
    return load_openpose(frames, fps=pose.body.fps, width=pose.header.dimensions.width,
                         height=pose.header.dimensions.height)


# ------------------------------------------------------------------------------ the reader
def test_reduced_holistic_is_read_estimated_and_marked_invalid():
    full_pose = _pose("cse", "B")  # two-handed, the whole body detected in every frame
    full = read_pose_points(_bytes(full_pose))
    reduced_pose = reduce_holistic(full_pose)
    comps = {c.name: len(c.points) for c in reduced_pose.header.components}
    assert comps == {"POSE_LANDMARKS": 8, "FACE_LANDMARKS": 128, "LEFT_HAND_LANDMARKS": 21,
                     "RIGHT_HAND_LANDMARKS": 21}  # what pose-format's reduce_holistic writes
    red = read_pose_points(_bytes(reduced_pose))
    face = [BODY_LANDMARKS.index(n) for n in ("NOSE", "LEFT_EYE", "RIGHT_EYE", "LEFT_EAR",
                                              "RIGHT_EAR", "MOUTH_LEFT", "MOUTH_RIGHT")]
    assert not red.present[:, face].any() and red.estimated[:, face].any()
    assert "lacks NOSE" in red.notes[0] and "estimated from FACE_LANDMARKS" in red.notes[0]
    arms = [i for i in range(13) if i not in face]
    np.testing.assert_array_equal(red.present[:, arms], full.present[:, arms])
    np.testing.assert_array_equal(red.xyz[:, HANDS], full.xyz[:, HANDS])
    a, b = process_points(full), process_points(red)
    err = np.linalg.norm((a.motion - b.motion).reshape(len(a.motion), 55, 3), axis=-1).mean(0)
    assert err[arms].max() == 0 and err[13:].max() == 0
    assert 0 < err[face].max() < 0.06  # shoulder widths; measured 0.01-0.05 on this clip
    assert not b.valid[:, 0].any()  # estimates are never detections ...
    np.testing.assert_array_equal(b.valid[:, 1:], a.valid[:, 1:])
    assert a.valid[:, 0].all()
    c = process_points(red, estimates_valid=True)  # ... unless the caller counts them
    assert c.valid[:, 0].all()
    # without the face, the parent rule places them (the nose on the left shoulder)
    bare = read_pose_points(_bytes(reduced_pose.get_components(
        ["POSE_LANDMARKS", "LEFT_HAND_LANDMARKS", "RIGHT_HAND_LANDMARKS"])))
    assert "on their parent points" in bare.notes[0]
    m = process_points(bare).motion.reshape(-1, 55, 3)
    np.testing.assert_allclose(m[:, BODY_LANDMARKS.index("NOSE")],
                               m[:, BODY_LANDMARKS.index("LEFT_SHOULDER")])


def test_full_holistic_with_and_without_world_landmarks_read_the_same():
    pose = _pose("gsg", "A")
    a, b = read_pose_points(_bytes(pose)), read_pose_points(_bytes(_without_world(pose)))
    np.testing.assert_array_equal(a.xyz, b.xyz)
    np.testing.assert_array_equal(a.present, b.present)
    assert a.estimated is None and a.notes == [] and a.layout == "holistic" and a.depth


def test_openpose_is_mapped_in_2d():
    hol = _pose("cse", "B")
    op = _openpose(hol)
    assert [c.name for c in op.header.components][0] == "pose_keypoints_2d"
    p = read_pose_points(_bytes(op))
    h = read_pose_points(_bytes(hol))
    assert p.layout == "openpose" and not p.depth and "2-D file: z = 0" in p.notes
    assert (p.xyz[..., 2] == 0).all()
    np.testing.assert_allclose(p.xyz[..., :2][p.present], h.xyz[..., :2][p.present], atol=1e-3)
    mouth = [BODY_LANDMARKS.index(n) for n in ("MOUTH_LEFT", "MOUTH_RIGHT")]
    assert not p.present[:, mouth].any() and p.estimated[:, mouth].any()
    np.testing.assert_array_equal(p.present[:, HANDS], h.present[:, HANDS])
    clip = process_points(p)
    ref = process_points(h)
    # the 2-D mapping: x, y equal to MediaPipe's where detected (z differs: MediaPipe's is tiny)
    both = np.repeat(ref.valid[:, 2:], 21, 1)
    d = (clip.motion - ref.motion).reshape(len(clip.motion), 55, 3)[:, POINT_SLICES["rhand"], :2]
    assert np.abs(d[both]).max() < 1e-3


def test_people_empty_frames_zero_hands_and_frame_rates():
    a, b = _pose("ase", "B"), _pose("ase", "C")
    two = _bytes(_two_people(a, b))
    first, second = read_pose_points(two), read_pose_points(two, person=1)
    assert first.people == 2
    np.testing.assert_array_equal(first.xyz, read_pose_points(_bytes(a)).xyz)
    n = min(len(a.body.data), len(b.body.data))
    np.testing.assert_array_equal(second.xyz[:n], read_pose_points(_bytes(b)).xyz[:n])
    if len(b.body.data) < len(a.body.data):  # frames where person 1 is gone: nothing present
        assert not second.present[n:].any()
    with pytest.raises(ValueError, match="person 2 asked, the file has 2 people"):
        read_pose_points(two, person=2)
    # an all-zero hand with confidence 1 (some writers do that) and an empty frame are absent
    z = copy.deepcopy(a)
    off = 33 + 478 + 21  # right hand
    z.body.data[3, 0, off:off + 21] = 0
    z.body.confidence[3, 0, off:off + 21] = 1
    z.body.data[5, 0] = 0
    z.body.confidence[5, 0] = 1
    clip = process_points(read_pose_points(_bytes(z)))
    assert not clip.valid[3, 2] and not clip.valid[5].any()
    # 30 fps header: resampled by it; the index's fps only counts when the header has none
    fast = copy.deepcopy(a)
    fast.body.fps = 30.0
    p = read_pose_points(_bytes(fast), fps=25.0)
    assert p.fps == 30.0 and "header 30 fps: resampled by the header's" in p.notes[0]
    T = len(a.body.data)
    assert len(process_points(p).motion) == int(np.floor((T - 1) * 25 / 30)) + 1
    fast.body.fps = 0.0
    with pytest.raises(ValueError, match="no frame rate"):
        read_pose_points(_bytes(fast))
    assert read_pose_points(_bytes(fast), fps=20.0).fps == 20.0


def test_cut_by_start_end_and_refusals():
    rec = _concat([_pose("ase", t) for t in "BCD"])
    data = _bytes(rec)
    lens = [len(_pose("ase", t).body.data) for t in "BCD"]
    whole = read_pose_points(data)
    s, e = lens[0] / 25.0, (lens[0] + lens[1]) / 25.0
    cut = read_pose_points(data, start=s, end=e)
    np.testing.assert_array_equal(cut.xyz, whole.xyz[lens[0]:lens[0] + lens[1]])
    class Counting(io.BytesIO):
        """A stream that counts the bytes read from it."""

        got = 0

        def read(self, n=-1):
            out = super().read(n)
            self.got += len(out)
            return out

    stream = Counting(_bytes(_concat([rec] * 20)))  # a 60-clip recording
    one = read_pose_points(stream, start=s, end=e)
    np.testing.assert_array_equal(one.xyz, cut.xyz)
    assert stream.got < 0.1 * len(stream.getvalue())  # the header and one clip's frames
    late = read_pose_points(data, start=s, end=100.0)
    assert len(late.xyz) == lens[1] + lens[2] and "past the recording" in late.notes[0]
    with pytest.raises(ValueError, match="the cut starts at 100 s"):
        read_pose_points(data, start=100.0)
    hands_only = rec.get_components(["LEFT_HAND_LANDMARKS", "RIGHT_HAND_LANDMARKS"])
    with pytest.raises(ValueError, match="no body component .*shoulders"):
        read_pose_points(_bytes(hands_only))


# ------------------------------------------------------------------------------- the index
def test_index_rows_and_splits():
    r = parse_row(1, {"path": "a.pose", "text": " Hallo ", "lang": "gsg", "start": "1.5",
                      "end": "", "person": "1"}, "/data")
    assert (r.url, r.text, r.start, r.end, r.person) == ("/data/a.pose", "Hallo", 1.5, None, 1)
    assert parse_row(2, {"path": "s3://b/x.pose", "text": "t", "lang": "l"}, "/d").url == "s3://b/x.pose"
    for raw, msg in (({"path": "a", "text": "", "lang": "x"}, "empty text"),
                     ({"path": "a", "text": "t", "lang": "x", "split": "dev"}, "not one of"),
                     ({"path": "a", "text": "t", "lang": "x", "start": "2", "end": "1"}, "end 1.0 <= start"),
                     ({"path": "a", "text": "t", "lang": "x", "fps": "abc"}, "not a number")):
        with pytest.raises(ValueError, match=msg):
            parse_row(3, raw, "/d")
    rows = [parse_row(i, {"path": f"{i}.pose", "text": f"text {i % 40}", "lang": "ase"}, "/d")
            for i in range(1, 201)]
    rows.append(parse_row(201, {"path": "x.pose", "text": "text 1", "lang": "ase",
                                "split": "test"}, "/d"))
    split = assign_splits(rows, seed=3)
    assert split[201] == "test"
    by_text = {}
    for r in rows[:-1]:
        by_text.setdefault(r.text, set()).add(split[r.row])
    assert all(len(v) == 1 for v in by_text.values())  # a text never straddles splits
    u = {t: text_hash("ase", t, 3) for t in by_text}
    assert all(next(iter(by_text[t])) == ("val" if u[t] < 0.1 else "test" if u[t] < 0.2 else "train")
               for t in by_text)
    # a row's split does not depend on the others
    assert assign_splits(rows[:50], seed=3) == {k: v for k, v in split.items() if k <= 50}
    # tiny corpora still get a val and a test text
    few = assign_splits(rows[:4], seed=3)
    assert set(few.values()) == {"train", "val", "test"}


# ------------------------------------------------------------------------------- the build
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small corpus written with pose-format from real lexicon clips, and its index."""
    root = tmp_path_factory.mktemp("posecorpus")
    files = root / "poses"
    files.mkdir()

    def write(name, pose):
        (files / name).write_bytes(_bytes(pose))
        return f"poses/{name}"

    rec = _concat([_pose("ase", t) for t in "HEL"])
    lens = [len(_pose("ase", t).body.data) for t in "HEL"]
    fast = _pose("gsg", "B")
    fast.body.fps = 30.0
    rows = [
        {"path": write("full.pose", _pose("ase", "A")), "text": "A", "lang": "ase"},
        {"path": write("noworld.pose", _without_world(_pose("ase", "B"))), "text": "B", "lang": "ase"},
        {"path": write("reduced.pose", reduce_holistic(_pose("ase", "C"))), "text": "C", "lang": "ase"},
        {"path": write("two.pose", _two_people(_pose("ase", "D"), _pose("ase", "E"))),
         "text": "D", "lang": "ase"},
        {"path": "poses/two.pose", "text": "E", "lang": "ase", "person": "1"},
        {"path": write("recording.pose", rec), "text": "H", "lang": "ase", "start": "0",
         "end": f"{lens[0] / 25:.2f}"},
        {"path": "poses/recording.pose", "text": "E L", "lang": "ase",
         "start": f"{lens[0] / 25:.2f}", "end": f"{sum(lens) / 25:.2f}"},
        {"path": write("fast.pose", fast), "text": "B", "lang": "gsg", "fps": "25"},
        {"path": write("openpose.pose", _openpose(_pose("gsg", "C"))), "text": "C", "lang": "gsg"},
        {"path": write("handsonly.pose", _pose("gsg", "D").get_components(
            ["LEFT_HAND_LANDMARKS", "RIGHT_HAND_LANDMARKS"])), "text": "D", "lang": "gsg"},
        {"path": "poses/missing.pose", "text": "F", "lang": "gsg"},
        {"path": "poses/full.pose", "text": "", "lang": "gsg"},
        {"path": "poses/two.pose", "text": "G", "lang": "gsg", "person": "5"},
    ]
    index = root / "index.csv"
    with open(index, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["path", "text", "lang", "split", "start", "end", "fps",
                                          "person"])
        w.writeheader()
        w.writerows(rows)
    return {"root": root, "index": index, "rows": rows, "lens": lens}


def test_build_reports_every_row_and_writes_shards(corpus, tmp_path):
    from madis.cli import main
    from madis.data.sample import is_up_to_date

    out = tmp_path / "shards"
    assert main(["data", "build-pose", str(corpus["index"]), "--out", str(out)]) == 0
    report = json.loads((out / "build_report.json").read_text())
    rows = {r["row"]: r for r in report["rows"]}
    assert len(rows) == 13 and report["used"] == 9 and report["refused"] == 4
    refused = {n: rows[n]["reason"] for n in rows if rows[n]["outcome"] == "refused"}
    assert "no body component" in refused[10]
    assert refused[11].startswith("file not found")
    assert refused[12] == "bad row: empty text"
    assert "person 5 asked, the file has 2 people" in refused[13]
    assert rows[3]["layout"] == "holistic" and "lacks NOSE" in rows[3]["notes"][0]
    assert rows[3]["valid"]["body"] == 0
    assert rows[9]["layout"] == "openpose" and rows[9]["depth"] is False
    assert rows[8]["fps"] == 30.0 and "resampled by the header's" in rows[8]["notes"][0]
    assert rows[6]["source_frames"] == corpus["lens"][0]
    assert rows[7]["source_frames"] == corpus["lens"][1] + corpus["lens"][2]
    assert rows[5]["person"] == 1 and rows[4]["people"] == 2
    assert any("no valid body frame" in w for w in report["warnings"])
    assert any(w.startswith("sign language(s) gsg have no train sample") for w in report["warnings"])

    manifest = read_manifest(str(out))
    assert manifest["format"] == "keypoints" and manifest["fps"] == FPS
    assert manifest["build"]["corpus"] == "pose-index"
    assert manifest["build"]["index_sha256"] == hashlib.sha256(corpus["index"].read_bytes()).hexdigest()
    assert manifest["provenance"]["layouts"] == {"holistic": 8, "openpose": 1}
    assert is_up_to_date(out, manifest["build"])  # shard checksums as the sample corpus has them
    assert sum(v["samples"] for v in manifest["splits"].values()) == 9
    assert all(manifest["splits"][s]["samples"] >= 1 for s in ("train", "val", "test"))
    seen = {}
    for split in ("train", "val", "test"):
        for s in iter_samples(str(out), split, shuffle=False):
            seen[s["meta"]["index_row"]] = s
            assert rows[s["meta"]["index_row"]]["split"] == split
    assert sorted(seen) == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    for n, s in seen.items():
        assert s["key"] == rows[n]["key"] and len(s["motion"]) == rows[n]["frames"]
        assert len(s["motion"]) % 4 == 0 and 40 <= len(s["motion"]) <= 400
        assert s["meta"]["text"] == corpus["rows"][n - 1]["text"]
    assert seen[6]["meta"]["cut"] == [0.0, float(corpus["rows"][5]["end"])]
    assert seen[4]["meta"]["person"] == 0 and seen[5]["meta"]["person"] == 1
    # person 1 is another clip than person 0 of the same file
    assert not np.array_equal(seen[4]["motion"], seen[5]["motion"])

    # the same build again: byte-identical shards
    again = tmp_path / "again"
    build_pose_corpus(str(corpus["index"]), str(again))
    assert read_manifest(str(again))["splits"] == manifest["splits"]


def test_build_strict_nothing_usable_and_other_shards(corpus, tmp_path, capsys):
    from madis.cli import main

    out = tmp_path / "strict"
    assert main(["data", "build-pose", str(corpus["index"]), "--out", str(out), "--strict"]) == 1
    assert not (out / "manifest.json").exists()
    assert json.loads((out / "build_report.json").read_text())["inputs"] == 13
    assert "--strict: 4 row(s) refused" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("path,text,lang\nnope.pose,A,ase\n", encoding="utf-8")
    assert main(["data", "build-pose", str(bad), "--out", str(tmp_path / "none")]) == 1
    assert "no usable train sample" in capsys.readouterr().err
    cols = tmp_path / "cols.csv"
    cols.write_text("file,text\nx.pose,A\n", encoding="utf-8")
    assert main(["data", "build-pose", str(cols), "--out", str(tmp_path / "c")]) == 2
    assert "missing column(s) path, lang" in capsys.readouterr().err
    from madis.data.sample import build_pretrain_corpus  # noqa: F401 - any other shard set
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text('{"build": {"corpus": "sample"}}')
    assert main(["data", "build-pose", str(corpus["index"]), "--out", str(other)]) == 2
    assert "holds another shard set" in capsys.readouterr().err


def test_build_from_s3_index_and_files(corpus, s3_bucket, tmp_path):
    from madis.data import storage

    src = corpus["root"]
    storage.upload_dir(src / "poses", f"{s3_bucket}/corpus/poses")
    lines = [json.dumps({k: v for k, v in r.items() if v != ""}) for r in corpus["rows"][:9]]
    (tmp_path / "index.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    storage.upload_dir(tmp_path, f"{s3_bucket}/corpus")  # index.jsonl beside poses/
    res = build_pose_corpus(f"{s3_bucket}/corpus/index.jsonl", str(tmp_path / "out"))
    assert res.used == 9 and res.manifest is not None
    local = build_pose_corpus(str(corpus["index"]), str(tmp_path / "local"))
    for split in ("train", "val", "test"):
        assert res.manifest["splits"][split]["sha256"] == local.manifest["splits"][split]["sha256"]


def test_tokenizer_steps_on_a_pose_corpus(corpus, tmp_path):
    """A few optimiser steps of the tokenizer task on the built shards (no Ray: seconds)."""
    import torch

    from madis.tokenizer import TokenizerConfig
    from madis.tokenizer.task import TokenizerTask

    shards = tmp_path / "shards"
    assert build_pose_corpus(str(corpus["index"]), str(shards)).used == 9
    torch.manual_seed(0)
    task = TokenizerTask.from_shards(TokenizerConfig(width=16, code_dim=8, codebook_sizes=(8, 16, 16),
                                                     depth=1), str(shards))
    model = task.build_model().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = next(iter(task.batches(rank=0, world_size=1, epoch=0, seed=0, batch_size=8)))
    assert batch["motion"].shape[0] == 7 and batch["valid"][..., 0].float().mean() < 1
    losses, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread only spins on a shared machine
    try:
        for _ in range(20):  # the same batch: the reconstruction loss must fall
            loss, metrics = task.loss(model, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(metrics["recon_loss"]))
    finally:
        torch.set_num_threads(threads)
    assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0]  # measured 0.40 -> 0.25


@pytest.mark.slow
@pytest.mark.ray
def test_tokenizer_job_trains_on_a_pose_corpus(corpus, ray_local, tmp_path):
    from conftest import job_module

    shards = tmp_path / "shards"
    assert build_pose_corpus(str(corpus["index"]), str(shards)).used == 9
    report = job_module("train_tokenizer").main([
        "--shards", str(shards), "--tokens", str(tmp_path / "tokens"),
        f"train.storage_path={tmp_path / 'runs'}", "train.workers=1", "train.zero_stage=0",
        "train_tokenizer.steps=3", "train_tokenizer.batch_size=4", "train.log_every=1",
        "train_tokenizer.checkpoint_every=3", "tokenizer.width=16", "tokenizer.code_dim=8",
        "tokenizer.depth=1", "train.progress=false"])
    assert report["step"] == 3
    assert report["tokens"]["samples"] == {k: v["samples"] for k, v in
                                           read_manifest(str(shards))["splits"].items()}
    assert report["val"]["samples"] == 1 and np.isfinite(report["val"]["mpjpe_rhand"])


def test_madis_up_points_at_own_shards(corpus, tmp_path):
    """`madis up --shards DIR`: the corpus's own S3 prefix, runs and demo request (the chain
    itself is the slow test_stack test; README 'Your own .pose data' has the command)."""
    import argparse

    from madis.stack import _argv_of, add_parser, own_corpus

    shards = tmp_path / "shards"
    build_pose_corpus(str(corpus["index"]), str(shards))
    name, demo = own_corpus(shards)
    digest = hashlib.sha256((shards / "manifest.json").read_bytes()).hexdigest()[:8]
    assert name == f"corpus-{digest}"
    splits = read_manifest(str(shards))["splits"]
    # gsg has only val and test clips here, which Serve (trained on ase only) would refuse
    assert set(splits["test"]["languages"]) == set(splits["val"]["languages"]) == {"gsg"}
    assert set(splits["train"]["languages"]) == {"ase"}
    first = next(iter_samples(str(shards), "train", shuffle=False))["meta"]
    assert demo == (first["text"], first["lang"])
    with pytest.raises(SystemExit, match="madis data build-pose"):
        own_corpus(tmp_path / "nothing")
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["up", "--shards", str(shards), "--quick", "6"])
    assert f"--shards={shards.resolve()}" in _argv_of(args)
    assert parser.parse_args(["up"]).shards is None
