"""Building a .pose corpus (``madis data build-pose``) against the sample build, one process.

Workload: the 600 MediaPipe Holistic clips of the ``spoken-to-signed`` lexicon, indexed as the
README's example does (path, text, lang), built into shards; baseline: ``build_sample_corpus``,
which reads the same 600 files (and composes 228 words from them) in the same process. Then
sentence cuts out of one long recording (the lexicon's ASL clips concatenated 40 times, ~18 min
at 25 fps, 240 MiB, written by pose-format): reading a 2-s cut by ``start``/``end`` (pose-format skips to
the frames) against reading the whole recording and slicing it.

Run::

    .venv/bin/python benchmarks/bench_pose_corpus.py      # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import io
import tempfile
from pathlib import Path

from bench_viz import timed  # best of `repeat` wall-clock runs (benchmarks/ is on sys.path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import numpy as np
    import numpy.ma as ma
    from pose_format import Pose
    from pose_format.numpy import NumPyPoseBody

    from madis.data.posecorpus import build_pose_corpus
    from madis.data.sample import build_sample_corpus, lexicon_dir, read_lexicon
    from madis.motion.keypoints import read_pose_points

    entries = read_lexicon()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        index = tmp / "index.csv"
        index.write_text("path,text,lang\n" + "".join(
            f"{e.path},{e.text},{e.lang}\n" for e in entries), encoding="utf-8")
        t_pose, res = timed(lambda: build_pose_corpus(str(index), str(tmp / "pose")), args.repeat)
        t_sample, _ = timed(lambda: build_sample_corpus(tmp / "sample"), args.repeat)
        print(f"build-pose, {res.used} clips from {lexicon_dir().name}: {t_pose:.2f} s "
              f"({res.used / t_pose:.0f} clips/s); build-sample on the same files "
              f"(+ composed words): {t_sample:.2f} s; ratio {t_pose / t_sample:.2f}x")

        asl = [Pose.read(e.path.read_bytes()) for e in entries if e.lang == "ase"]
        rec = copy.deepcopy(asl[0])
        rec.body = NumPyPoseBody(fps=25.0, data=ma.concatenate([p.body.data for p in asl * 40], 0),
                                 confidence=np.concatenate([p.body.confidence for p in asl * 40], 0))
        buf = io.BytesIO()
        rec.write(buf)
        path = tmp / "recording.pose"
        path.write_bytes(buf.getvalue())
        frames = len(rec.body.data)
        s = frames / 25.0 / 2
        t_cut, cut = timed(lambda: read_pose_points(path, start=s, end=s + 2.0), args.repeat)

        def whole():
            p = read_pose_points(path)
            return p.xyz[int(s * 25):int((s + 2.0) * 25)]

        t_whole, ref = timed(whole, args.repeat)
        assert np.array_equal(cut.xyz, ref)
        print(f"a 2-s cut out of a {frames / 25 / 60:.0f}-min recording "
              f"({path.stat().st_size / 2**20:.0f} MiB): {t_cut * 1e3:.1f} ms; reading it whole "
              f"and slicing: {t_whole * 1e3:.0f} ms ({t_whole / t_cut:.0f}x longer)")


if __name__ == "__main__":
    main()
