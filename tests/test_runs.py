"""Where a profile's runs live (madis.runs): one answer for every job, the fleet, Serve, the CLI
and ``madis up`` (docs/architecture.md#where-a-profiles-runs-live)."""

from __future__ import annotations

import pytest

from madis import runs
from madis.config import ConfigError, load_tree
from madis.serve.source import serve_target


def test_an_ablation_profile_names_its_own_runs(tmp_path):
    tree = load_tree("configs/ablations/t5-simple-avg.yaml", [f"train.storage_path={tmp_path}"])
    assert runs.job_run(tree, "finetune") == f"{tmp_path}/t5-simple-avg-finetune"
    assert runs.job_run(tree, "pretrain") == f"{tmp_path}/t5-simple-avg-pretrain"
    # the profile keeps cpu-tiny's tokenizer and SiCLIP runs
    assert runs.tokens_url(tree) == f"{tmp_path}/tokenizer/tokens"
    assert runs.job_run(tree, "siclip") == f"{tmp_path}/siclip"
    # Serve's default run is the same one
    assert serve_target(tree) == (f"{tmp_path}/t5-simple-avg-finetune", None)


def test_storage_and_run_name_override_the_profile(tmp_path, monkeypatch):
    tree = load_tree("cpu-tiny")
    assert runs.job_run(tree, "finetune", storage="s3://b/runs") == "s3://b/runs/finetune"
    assert runs.job_run(tree, "finetune", storage=str(tmp_path), run_name="mine") == \
        f"{tmp_path}/mine"
    monkeypatch.chdir(tmp_path)
    assert runs.job_run(tree, "pretrain") == f"{tmp_path}/storage/pretrain"  # made absolute
    with pytest.raises(ConfigError, match="run_name"):
        runs.job_run(tree, "pretrain", run_name="a/b")


def test_relative_paths_are_refused_inside_a_ray_job(tmp_path, monkeypatch):
    job_dir = tmp_path / "session" / "runtime_resources" / "working_dir_files" / "_ray_pkg_1"
    job_dir.mkdir(parents=True)
    monkeypatch.chdir(job_dir)  # as under `ray job submit --working-dir .`
    tree = load_tree("cpu-tiny")
    with pytest.raises(ConfigError, match="relative"):
        runs.job_run(tree, "finetune")
    with pytest.raises(ConfigError, match="absolute path"):
        runs.absolute("storage/finetune", "run")
    assert runs.job_run(tree, "finetune", storage=str(tmp_path)) == f"{tmp_path}/finetune"
    assert runs.absolute("s3://b/x") == "s3://b/x"


def test_newest_export_of_a_run(tmp_path):
    from madis.fleet.testing import write_checkpoint

    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        runs.newest_export(str(tmp_path / "run"))
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text("{}")
    for step in (2, 4):
        write_checkpoint(str(tmp_path / "run"), step, export)
    write_checkpoint(str(tmp_path / "run"), 6, export, complete=False)  # still being written
    assert runs.newest_export(str(tmp_path / "run")) == \
        f"{tmp_path}/run/checkpoint_00000004/export"
    assert runs.newest_checkpoint(str(tmp_path / "run")).step == 4
