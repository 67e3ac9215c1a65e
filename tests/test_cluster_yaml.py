"""cluster.yaml must be a valid Ray cluster-launcher config (checked with the launcher's own schema)
and must give every node what the jobs need: Python >= 3.11 with this Ray, S3 credentials, the
cluster token with token authentication on, the SMPL-X model, and the resources the paper
profile's placement asks for."""

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import REPO

pytest.importorskip("ray")
import ray  # noqa: E402
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

from madis.config import load_tree, section  # noqa: E402
from madis.fleet.config import FleetConfig  # noqa: E402
from madis.motion.smplx133 import DEFAULT_MODEL_DIR  # noqa: E402
from madis.serve.config import ServeConfig  # noqa: E402
from madis.stack import Paths  # noqa: E402
from madis.train.config import train_config  # noqa: E402


def _load():
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_validates_against_launcher_schema():
    cfg = prepare_config(copy.deepcopy(_load()))
    validate_config(cfg)
    nodes = cfg["available_node_types"]
    assert cfg["head_node_type"] == "head"
    assert {"gpu_train", "gpu_eval_serve"} <= set(nodes)
    assert nodes["head"]["resources"] == {"CPU": 0}  # no training worker on the head
    # the dashboard/job server is never exposed beyond the head itself
    assert all("--dashboard-host=127.0.0.1" in c for c in cfg["head_start_ray_commands"] if "--head" in c)


def test_every_node_gets_python_311_this_ray_and_s3_credentials():
    cfg = _load()
    # Ray's own image for Python 3.11, at the Ray version pyproject.toml pins
    assert cfg["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-py311")
    assert not any(k in cfg["docker"] for k in ("head_image", "worker_image"))
    assert 'requires-python = ">=3.11"' in (REPO / "pyproject.toml").read_text()
    for name, node in cfg["available_node_types"].items():
        # an instance profile: training ranks, fleet actors and replicas reach s3:// themselves
        assert node["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name
    assert any("pip install" in c and "-e ." in c for c in cfg["setup_commands"])


def test_token_authentication_is_on_with_the_checkout_token_on_every_node():
    cfg = _load()
    token = Paths(REPO).token.relative_to(REPO).as_posix()
    assert cfg["file_mounts"]["~/.ray/auth_token"] == token == ".madis/ray_auth_token"
    assert ".madis" in cfg["rsync_exclude"]  # the checkout copy never carries it
    assert ".madis/" in (REPO / ".rayignore").read_text().split()  # nor a job's working dir
    assert any(c.startswith("chmod 600 ~/.ray/auth_token") for c in cfg["setup_commands"])
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cfg[key] if "ray start" in c]
        assert starts and all(c.startswith("RAY_AUTH_MODE=token ray start") for c in starts), key


def test_every_node_gets_the_smplx_model_where_madis_looks_for_it():
    mounts = _load()["file_mounts"]
    default = "~/" + DEFAULT_MODEL_DIR.relative_to(Path.home()).as_posix()
    assert mounts[default] == default


def test_node_groups_offer_what_the_paper_profile_asks_for():
    """Training workers fit the training group and fleet actors and replicas the eval group:
    one unit of the group's resource per GPU, and nothing else offers it."""
    tree = load_tree("paper")
    nodes = _load()["available_node_types"]
    asks = {"gpu_train": [train_config(tree, job).resources_per_worker
                          for job in ("tokenizer", "siclip", "pretrain", "finetune")],
            "gpu_eval_serve": [section(tree, "fleet", FleetConfig).resources_per_actor,
                               section(tree, "serve", ServeConfig).replica_resources]}
    gpus = {"gpu_train": 8, "gpu_eval_serve": 1}  # p4d.24xlarge, g5.2xlarge
    for group, wanted in asks.items():
        offered = nodes[group]["resources"]
        assert offered == {next(iter(offered)): gpus[group]}
        for ask in wanted:
            assert ask and set(ask) == set(offered) and all(v == 1 for v in ask.values())
        others = [n for n, node in nodes.items() if n != group]
        assert not any(set(offered) & set(nodes[n].get("resources", {})) for n in others)
    # the paper's training job uses all 8 GPUs of one training node
    assert train_config(tree, "pretrain").workers == gpus["gpu_train"]


def test_schema_rejects_a_broken_cluster_yaml():
    bad = _load()
    bad["available_node_types"]["gpu_train"]["max_workers"] = "four"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))
