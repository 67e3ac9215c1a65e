"""The real sample corpus (spoken-to-signed fingerspelling lexicon) and the `madis data` CLI."""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter

import numpy as np
import pytest

from madis.cli import main
from madis.data.sample import (
    WORDS, build_sample_corpus, compose, corpus_mean_hands, is_up_to_date, lexicon_dir, read_lexicon,
    split_units, unit_key,
)
from madis.data.shards import iter_samples, read_manifest
from madis.motion.keypoints import KeypointClip, clip_from_pose, read_pose_points
from madis.motion.length import apply_length_rules

N_LANGS = 19


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    build_sample_corpus(root)
    return root


def _units(lang):
    return [e.text for e in read_lexicon() if e.lang == lang]


@pytest.mark.parametrize("lang, word, expected", [
    ("sgg", "SCHULE", ["SCH", "U", "L", "E"]),
    ("sgg", "KIRCHE", ["K", "I", "R", "CH", "E"]),
    ("csq", "LJUBAV", ["Lj", "U", "B", "A", "V"]),
    ("cse", "CHATA", ["Ch", "A", "T", "A"]),
    ("ise", "MATTEO", ["M", "A", "tt", "E", "O"]),
    ("gsg", "STRAßE", ["S", "T", "R", "A", "ß", "E"]),
    ("gsg", "KÄSE", ["K", "ä", "S", "E"]),
    ("jos", "سلام", ["س", "لا", "م"]),
    ("ssp", "SEVILLA", ["S", "E", "V", "I", "LL", "A"]),
])
def test_longest_match_units(lang, word, expected):
    assert split_units(word, _units(lang)) == expected


def test_unspellable_word_is_a_clear_error():
    with pytest.raises(ValueError, match=r"matches 'Q' \(position 0\)"):
        split_units("QA", _units("tsm"))  # Turkish fingerspelling has no Q
    assert unit_key("straße") == "STRAẞE" and unit_key("İz") == "İZ"


def test_compose_cross_fades_three_frames():
    a = KeypointClip(np.zeros((5, 2), np.float32), np.ones((5, 3), bool), 25.0)
    vb = np.ones((6, 3), bool)
    vb[0, 2] = False
    b = KeypointClip(np.ones((6, 2), np.float32), vb, 25.0)
    m, v = compose([a, b])
    np.testing.assert_allclose(m[:, 0], [0, 0, 0.25, 0.5, 0.75, 1, 1, 1])
    np.testing.assert_array_equal(v[:, 2], [1, 1, 0, 1, 1, 1, 1, 1])


def test_lexicon_and_word_lists_cover_every_language():
    entries = read_lexicon()
    assert len(entries) == 600 and len({e.lang for e in entries}) == N_LANGS
    assert set(WORDS) == {e.lang for e in entries}


def test_counts_per_split_and_language(sample_root):
    m = read_manifest(str(sample_root))
    assert m["format"] == "keypoints" and m["fps"] == 25.0
    n_words = {s: sum(len(w[s]) for w in WORDS.values()) for s in ("train", "val", "test")}
    assert m["splits"]["train"]["samples"] == 600 + n_words["train"] == 752
    assert m["splits"]["val"]["samples"] == n_words["val"] == 76
    assert m["splits"]["test"]["samples"] == 76
    assert m["splits"]["val"]["languages"] == {lang: 4 for lang in WORDS}
    assert len(m["splits"]["train"]["shards"]) >= 4
    assert "MIT" in m["licence"]["text"] and "spoken-to-signed==" in m["provenance"]["package"]
    assert len(m["stats"]["mean"]) == 165


def test_splits_are_disjoint_and_letters_are_train(sample_root):
    texts = {}
    for split in ("train", "val", "test"):
        texts[split] = [(s["meta"]["lang"], unit_key(s["meta"]["text"]), s["meta"]["composed"])
                        for s in iter_samples(str(sample_root), split, shuffle=False)]
    assert all(t[2] for t in texts["val"] + texts["test"])
    tr, va, te = ({(lang, w) for lang, w, _ in texts[s]} for s in ("train", "val", "test"))
    assert not (tr & va) and not (tr & te) and not (va & te)


def test_every_letter_leads_one_row_at_word_tempo(sample_root):
    """No train row is slowed: each holds whole letter clips at their own tempo, at least
    MIN_FRAMES long before the length rules, so those only crop (issue 13)."""
    from madis.motion.base import MIN_FRAMES

    letters = {(e.lang, e.text) for e in read_lexicon()}
    rows = [s for s in iter_samples(str(sample_root), "train", shuffle=False)
            if s["meta"].get("letter_row")]
    assert len(rows) == 600
    assert {(s["meta"]["lang"], s["meta"]["units"][0]) for s in rows} == letters
    for s in rows:
        units = s["meta"]["units"]
        assert unit_key(s["meta"]["text"]) == unit_key("".join(units))
        assert len(s["motion"]) >= MIN_FRAMES and len(s["motion"]) % 4 == 0
        if len(units) > 1:  # the shortest row that reaches the minimum: without its last unit it
            assert s["meta"]["composed"]  # would have been too short (or spelled a held-out word)
    assert sum(len(s["meta"]["units"]) == 2 for s in rows) > 450  # mostly letter pairs


def test_letter_and_word_samples_hold_the_processed_clips(sample_root):
    d = lexicon_dir()
    entries = read_lexicon(d)
    mean_hands = corpus_mean_hands(read_pose_points(e.path) for e in entries)
    by = {(e.lang, e.text): e for e in entries}
    got = {s["key"]: s for s in iter_samples(str(sample_root), "train", shuffle=False)}
    got.update({s["key"]: s for s in iter_samples(str(sample_root), "val", shuffle=False)})
    s = got["ase-letter-000"]
    assert s["meta"]["text"] == "AB" and s["meta"]["units"] == ["A", "B"]
    assert s["meta"]["source"].endswith(".pose (+1 following letters)")
    m, v = apply_length_rules(*compose([clip_from_pose(by[("ase", u)].path, mean_hands)
                                        for u in "AB"]))
    np.testing.assert_allclose(s["motion"], m.astype(np.float16).astype(np.float32), atol=0)
    np.testing.assert_array_equal(s["valid"], v)
    emma = got["ase-word-val-01"]
    assert emma["meta"]["text"] == "EMMA" and emma["meta"]["units"] == ["E", "M", "M", "A"]
    parts = [clip_from_pose(by[("ase", u)].path, mean_hands) for u in "EMMA"]
    m, v = apply_length_rules(*compose(parts))
    np.testing.assert_allclose(emma["motion"], m.astype(np.float16).astype(np.float32), atol=0)


def test_novel_words_are_composed_as_the_sample_words(sample_root):
    from madis.data.sample import NOVEL_WORDS, novel_word_samples

    samples = novel_word_samples()
    assert [s.text for s in samples] == [w for ws in NOVEL_WORDS.values() for w in ws]
    assert samples[0].key == "ase-novel-00" and samples[0].meta["units"] == list("HELLO")
    sample_words = {(lang, w) for lang, splits in WORDS.items() for ws in splits.values()
                    for w in ws}
    assert not {(s.lang, s.text) for s in samples} & sample_words
    # a test word composed this way is the shard's own sample (to its float16 storage)
    test = {s["key"]: s for s in iter_samples(str(sample_root), "test", shuffle=False)}
    word = test["gsg-word-test-00"]
    again = novel_word_samples({"gsg": [word["meta"]["text"]]})[0]
    assert again.meta["units"] == word["meta"]["units"]
    np.testing.assert_allclose(word["motion"], again.motion.astype(np.float16).astype(np.float32),
                               atol=0)
    np.testing.assert_array_equal(word["valid"], again.valid)
    with pytest.raises(ValueError, match="no sign language"):
        novel_word_samples({"xxx": ["A"]})


def test_two_builds_are_byte_identical(sample_root, tmp_path):
    build_sample_corpus(tmp_path)
    digest = lambda root: {p.name: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
                           for p in sorted(root.iterdir())}
    assert digest(tmp_path) == digest(sample_root)
    assert is_up_to_date(tmp_path)
    shard = sorted(tmp_path.glob("train-*.tar"))[0]
    shard.write_bytes(shard.read_bytes()[:-1024])
    assert not is_up_to_date(tmp_path)


def test_two_ranks_get_their_own_train_shards(sample_root):
    from madis.data.shards import rank_assignment

    m = read_manifest(str(sample_root))
    n = len(m["splits"]["train"]["shards"])
    a, _ = rank_assignment(n, 0, 2, seed=0, epoch=0, shuffle=True)
    b, _ = rank_assignment(n, 1, 2, seed=0, epoch=0, shuffle=True)
    assert len(a) >= 2 and len(b) >= 2 and not set(a) & set(b)
    langs = [Counter(s["meta"]["lang"] for s in iter_samples(str(sample_root), "train", rank=r, world_size=2))
             for r in (0, 1)]
    assert all(len(c) == N_LANGS for c in langs)  # the seeded train order mixes languages


def test_cli_inspect_build_and_upload(sample_root, capsys, s3_bucket):
    assert main(["data", "build-sample", "--out", str(sample_root)]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["data", "inspect", str(sample_root)]) == 0
    out = capsys.readouterr().out
    assert "[train] 752 samples (750 composed)" in out and "[val] 76 samples" in out
    assert main(["data", "upload", str(sample_root), f"{s3_bucket}/sample"]) == 0
    capsys.readouterr()
    assert main(["data", "inspect", f"{s3_bucket}/sample"]) == 0
    assert "[test] 76 samples (76 composed)" in capsys.readouterr().out
    # a truncated shard: reported, and the exit status says so
    import shutil

    broken = sample_root.parent / "inspect-broken"
    shutil.copytree(sample_root, broken)
    tar = broken / "test-000000.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 3])
    assert main(["data", "inspect", str(broken)]) == 1
    got = capsys.readouterr()
    assert "unreadable shards or bad samples in test" in got.err


def test_cli_roundtrip_through_its_own_local_s3_server(sample_root, capsys, s3_server):
    import os

    before = os.environ["AWS_ENDPOINT_URL"]
    assert main(["data", "roundtrip", "--out", str(sample_root), "--url", "s3://roundtrip/sample"]) == 0
    out = capsys.readouterr().out
    assert "round trip OK" in out and "[train] 752 samples" in out
    assert os.environ["AWS_ENDPOINT_URL"] == before  # the session server is still the one in use


def test_cli_help_on_every_subcommand(capsys):
    for argv in (["--help"], ["data", "--help"], ["data", "build-sample", "--help"],
                 ["data", "inspect", "--help"], ["data", "upload", "--help"], ["data", "roundtrip", "--help"],
                 ["data", "build-soke", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
        assert "usage: madis" in capsys.readouterr().out


def test_pseudo_words_are_new_spellable_and_deterministic():
    """The pretraining corpus's words: K per language, none a sample word of any split, each
    text re-splitting to exactly its units, the same draw for the same seed."""
    from madis.data.sample import pseudo_words

    entries = read_lexicon()
    words = pseudo_words(entries, per_language=30, units_range=(3, 5), seed=4)
    assert sorted(words) == sorted({e.lang for e in entries}) and len(words) == N_LANGS
    sample_words = {(lang, unit_key(w)) for lang, split in WORDS.items()
                    for ws in split.values() for w in ws}
    units = {lang: _units(lang) for lang in words}
    for lang, got in words.items():
        assert len(got) == 30
        assert len({unit_key(t) for t, _ in got}) == 30
        for text, parts in got:
            assert (lang, unit_key(text)) not in sample_words
            assert 2 <= len(parts) <= 5
            assert split_units(text, units[lang]) == parts
    assert pseudo_words(entries, per_language=30, units_range=(3, 5), seed=4) == words
    assert pseudo_words(entries, per_language=30, units_range=(3, 5), seed=5) != words
    with pytest.raises(ValueError, match="units_range"):
        pseudo_words(entries, units_range=(1, 4))
    with pytest.raises(ValueError, match="pseudo-words of 2..2 units asked"):
        pseudo_words(entries, per_language=10**6, units_range=(2, 2))


def test_pretrain_corpus_build_and_tokenize(tmp_path, capsys):
    """`madis data build-pretrain`: two pseudo-words per language as real shards, train split
    only, composed from the lexicon's clips under the length rules, with its own fingerprint (a
    rebuild is skipped). `madis data tokenize --like`: the tokenizer recorded by a token set."""
    from madis.data.sample import pretrain_fingerprint
    from madis.mdlm.testing import tiny_tokenizer
    from madis.tokenizer.token_shards import write_token_shards

    out = tmp_path / "pre"
    assert main(["data", "build-pretrain", "--out", str(out), "--words-per-language", "2"]) == 0
    assert "built 38 pseudo-words" in capsys.readouterr().out
    assert main(["data", "build-pretrain", "--out", str(out), "--words-per-language", "2"]) == 0
    assert "up to date" in capsys.readouterr().out
    tok = tiny_tokenizer(fmt="keypoints")
    tok.save_pretrained(str(tmp_path / "tok"))
    export = {"url": str(tmp_path / "tok"), "step": 7}
    write_token_shards(tok, str(out), str(tmp_path / "like"), extra={"tokenizer_export": export})
    assert main(["data", "tokenize", str(out), "--like", str(tmp_path / "like"),
                 "--out", str(tmp_path / "tokens")]) == 0
    assert read_manifest(tmp_path / "tokens")["tokenizer_export"] == export
    like = {s["key"]: s["tokens"] for s in iter_samples(tmp_path / "like", "train", shuffle=False, with_tokens=True)}
    again = list(iter_samples(tmp_path / "tokens", "train", shuffle=False, with_tokens=True))
    assert len(again) == 38 and all(np.array_equal(s["tokens"], like[s["key"]]) for s in again)
    capsys.readouterr()
    assert main(["data", "tokenize", str(out), "--like", str(out), "--out", str(tmp_path / "x")]) == 2
    assert "records no tokenizer_export" in capsys.readouterr().err
    # never over its own source or --like, never over another set without --force
    before = sorted(p.name for p in out.iterdir())
    assert main(["data", "tokenize", str(out), "--like", str(tmp_path / "like"), "--out", str(out),
                 "--force"]) == 2
    assert "would destroy it" in capsys.readouterr().err and sorted(p.name for p in out.iterdir()) == before
    assert main(["data", "tokenize", str(out), "--like", str(tmp_path / "like"),
                 "--out", str(tmp_path / "tokens")]) == 2
    assert "--force" in capsys.readouterr().err
    # a source shard that reads short: no partial token set, the old one left as it was
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    tar = sorted(broken.glob("train-*.tar"))[0]
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 3])
    kept = read_manifest(tmp_path / "tokens")
    assert main(["data", "tokenize", str(broken), "--like", str(tmp_path / "like"),
                 "--out", str(tmp_path / "tokens"), "--force"]) == 2
    assert "refusing to write a partial token set" in capsys.readouterr().err
    assert read_manifest(tmp_path / "tokens") == kept
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tokens")]  # no debris
    # build-pretrain: K must be >= 1 and a different shard set is not replaced without --force
    assert main(["data", "build-pretrain", "--out", str(out), "--words-per-language", "0"]) == 2
    assert main(["data", "build-pretrain", "--out", str(tmp_path / "like"),
                 "--words-per-language", "2"]) == 2
    assert "holds another shard set" in capsys.readouterr().err

    tmp_path = out
    manifest = read_manifest(tmp_path)
    assert list(manifest["splits"]) == ["train"]
    got = list(iter_samples(tmp_path, "train", shuffle=False))
    assert len(got) == 2 * N_LANGS
    assert Counter(s["meta"]["lang"] for s in got) == {lang: 2 for lang in WORDS}
    for s in got:
        n = s["motion"].shape[0]
        assert 40 <= n <= 400 and n % 4 == 0
        assert s["meta"]["pseudo_word"] is True and len(s["meta"]["units"]) >= 2
    assert is_up_to_date(tmp_path, pretrain_fingerprint(per_language=2))
    assert not is_up_to_date(tmp_path, pretrain_fingerprint(per_language=3))
    assert not is_up_to_date(tmp_path)  # not the sample corpus


def test_spell_composes_any_word_as_the_sample_does(sample_root, tmp_path, capsys):
    """`madis data spell` gives the same motion as the sample's own composed test word."""
    test = {s["meta"]["text"]: s for s in iter_samples(str(sample_root), "test", shuffle=False)}
    out = tmp_path / "austin.npy"
    assert main(["data", "spell", "AUSTIN", "--lang", "ase", "-o", str(out)]) == 0
    assert "A + U + S + T + I + N" in capsys.readouterr().out
    np.testing.assert_allclose(np.load(out).astype(np.float16).astype(np.float32),
                               test["AUSTIN"]["motion"], atol=0)
    assert main(["data", "spell", "A1", "--lang", "ase", "-o", str(out)]) == 2
    assert "'1'" in capsys.readouterr().err
    assert main(["data", "spell", "AB", "--lang", "xyz", "-o", str(out)]) == 2
    assert "no lexicon" in capsys.readouterr().err
