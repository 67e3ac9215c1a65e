"""The command line: every ``madis`` subcommand answers ``--help`` (walked from the parser, in
process) and the training jobs in ``ray_jobs/`` share one set of job options."""

from __future__ import annotations

import argparse

import pytest

from madis.cli import COMMAND_GROUPS, build_parser, main
from madis.config import load_tree
from madis.train.jobargs import job_train_config
from conftest import job_module


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """``(path, parser)`` of every command that runs something (no further subcommands)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaves(child, path + (name,))


LEAVES = sorted(path for path, _ in _leaves(build_parser()))


def test_the_walk_finds_every_group():
    tops = {path[0] for path in LEAVES}
    assert {"best", "data", "eval", "generate", "render"} <= tops
    assert len(tops) >= len(COMMAND_GROUPS)  # every group module adds at least one command
    assert ("data", "build-sample") in LEAVES and len(LEAVES) > len(tops)
    for path, parser in _leaves(build_parser()):
        assert callable(parser.get_default("func")), f"madis {' '.join(path)} runs nothing"


@pytest.mark.parametrize("path", LEAVES, ids=" ".join)
def test_every_subcommand_answers_help(path, capsys):
    with pytest.raises(SystemExit) as done:
        main([*path, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: madis {' '.join(path)}")
    assert "options:" in out



TRAINING_JOBS = {"train_tokenizer": "tokenizer", "train_siclip": "siclip",
                 "pretrain": "pretrain", "finetune": "finetune"}


@pytest.mark.parametrize("name", sorted(TRAINING_JOBS))
def test_training_jobs_share_the_job_options(name, tmp_path, capsys):
    job = job_module(name)
    with pytest.raises(SystemExit) as done:
        job.parse_args(["--help"])
    assert done.value.code == 0
    assert "--zero-stage" in capsys.readouterr().out
    args = job.parse_args(["--config", "cpu-tiny", "--storage", str(tmp_path), "--run-name", "r",
                           "--workers", "3", "--gpus-per-worker", "0", "--zero-stage", "1",
                           "--steps", "9", f"train_{TRAINING_JOBS[name]}.lr=0.5"])
    cfg = job_train_config(load_tree(args.config, args.overrides), TRAINING_JOBS[name], args)
    assert (cfg.storage_path, cfg.run_name, cfg.workers, cfg.use_gpu, cfg.zero_stage, cfg.steps,
            cfg.lr) == (str(tmp_path), "r", 3, False, 1, 9, 0.5)


def test_motion_jobs_keep_their_own_flags_and_the_override_only_calls():
    # how tests/test_embedded_chain.py and benchmarks/compare_quality.py call them
    tok = job_module("train_tokenizer").parse_args(
        ["--shards", "s3://sample/shards", "--tokens", "s3://sample/tokens",
         "train_tokenizer.steps=20", "train.storage_path=/runs"])
    assert (tok.shards, tok.tokens, tok.config) == ("s3://sample/shards", "s3://sample/tokens",
                                                    "cpu-tiny")
    cfg = job_train_config(load_tree(tok.config, tok.overrides), "tokenizer", tok)
    assert (cfg.steps, cfg.storage_path) == (20, "/runs")
    sic = job_module("train_siclip").parse_args(["--shards", "/s", "--split", "val",
                                                 "siclip.width=16"])
    assert (sic.shards, sic.split, sic.overrides, sic.storage) == ("/s", "val", ["siclip.width=16"],
                                                                   None)
