"""cluster.yaml must be a valid Ray cluster-launcher config (checked with the launcher's own schema)."""

import copy

import jsonschema
import pytest
import yaml

from conftest import REPO

pytest.importorskip("ray")
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402


def _load():
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_validates_against_launcher_schema():
    cfg = prepare_config(copy.deepcopy(_load()))
    validate_config(cfg)
    nodes = cfg["available_node_types"]
    assert cfg["head_node_type"] == "head"
    assert {"gpu_train", "gpu_eval_serve"} <= set(nodes)
    # training and eval/serve are separate groups with their own custom resources
    assert nodes["gpu_train"]["resources"] == {"madis_train": 1}
    assert nodes["gpu_eval_serve"]["resources"] == {"madis_eval": 1}
    # the dashboard/job server is never exposed beyond the head itself
    assert all("--dashboard-host=127.0.0.1" in c for c in cfg["head_start_ray_commands"] if "--head" in c)


def test_schema_rejects_a_broken_cluster_yaml():
    bad = _load()
    bad["available_node_types"]["gpu_train"]["max_workers"] = "four"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))
