from dataclasses import dataclass, field

import pytest

from madis.config import ConfigError, from_dict, load_tree, section


@dataclass
class Inner:
    a: int = 1
    xs: list[float] = field(default_factory=lambda: [0.75, 0.5])


def test_from_dict_types_and_unknown_keys():
    c = from_dict(Inner, {"a": 3, "xs": [1, 0.5]})
    assert c.a == 3 and c.xs == [1.0, 0.5] and isinstance(c.xs[0], float)
    with pytest.raises(ConfigError, match="unknown field"):
        from_dict(Inner, {"b": 1})
    with pytest.raises(ConfigError, match="expected int"):
        from_dict(Inner, {"a": "x"})


def test_profile_overrides(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("inner:\n  a: 2\n")
    tree = load_tree(str(p), ["inner.xs=[0.75]", "other.k=1"])
    assert section(tree, "inner", Inner) == Inner(a=2, xs=[0.75])
    assert tree["other"] == {"k": 1}
    with pytest.raises(ConfigError):
        load_tree(str(p), ["novalue"])
    with pytest.raises(ConfigError, match="unknown profile"):
        load_tree("no-such-profile")


@pytest.mark.parametrize("bad, message", [
    ("train.workers=0", "train.workers must be >= 1, got 0"),
    ("train.keep_checkpoints=-1", "train.keep_checkpoints must be >= 0, got -1"),
    ("train.lr=0", "train.lr must be > 0, got 0.0"),
    ("fleet.poll_interval_s=0", "fleet.poll_interval_s must be > 0, got 0.0"),
    ("serve.batch_wait_s=-0.5", "serve.batch_wait_s must be >= 0, got -0.5"),
    ("tokenizer.depth=0", "tokenizer.depth must be >= 1, got 0"),
    ("model.temperature=-1", "model.temperature must be >= 0, got -1.0"),
    ("siclip.embed_dim=0", "siclip.embed_dim must be >= 1, got 0"),
    ("train.resources_per_worker={GPU: 1}", "train.resources_per_worker: 'GPU' is not a custom "
     "resource name (CPUs, GPUs and memory have fields of their own)"),
    ("fleet.resources_per_actor={madis_eval: -1}",
     "fleet.resources_per_actor.madis_eval must be a number >= 0, got -1"),
    ("fleet.start_timeout_s=-1", "fleet.start_timeout_s must be >= 0, got -1.0"),
    ("serve.replica_resources=[madis_eval]",
     "serve.replica_resources: expected a mapping, got ['madis_eval']"),
    ("serve.proxy_location=Everywhere", "serve.proxy_location must be one of ('HeadOnly', "
     "'EveryNode', 'Disabled'), got 'Everywhere'"),
])
def test_section_bounds_name_the_field_and_value(bad, message):
    from madis.fleet.config import FleetConfig
    from madis.mdlm.config import ModelConfig
    from madis.metrics.siclip import SiCLIPConfig
    from madis.serve.config import ServeConfig
    from madis.tokenizer.config import TokenizerConfig
    from madis.train.config import TrainConfig

    classes = {"train": TrainConfig, "fleet": FleetConfig, "serve": ServeConfig,
               "tokenizer": TokenizerConfig, "model": ModelConfig, "siclip": SiCLIPConfig}
    name = bad.split(".", 1)[0]
    tree = load_tree("cpu-tiny", [bad])
    with pytest.raises(ConfigError) as err:
        section(tree, name, classes[name])
    assert str(err.value) == message
    section(load_tree("cpu-tiny"), name, classes[name])  # the profile itself is in range


def test_placement_pins_paper_jobs_to_node_groups_and_nothing_on_cpu_tiny():
    """Each paper-profile training worker asks for madis_train, each fleet actor and Serve
    replica for madis_eval (cluster.yaml's node groups offer them); cpu-tiny asks for none."""
    from madis.fleet.config import FleetConfig
    from madis.serve.app import build_app
    from madis.serve.config import ServeConfig
    from madis.train.config import train_config

    paper, tiny = load_tree("paper"), load_tree("cpu-tiny")
    for job in ("tokenizer", "siclip", "pretrain", "finetune"):
        assert train_config(paper, job).resources_per_worker == {"madis_train": 1.0}
        assert train_config(tiny, job).resources_per_worker == {}
    assert section(paper, "fleet", FleetConfig).resources_per_actor == {"madis_eval": 1.0}
    assert section(tiny, "fleet", FleetConfig).resources_per_actor == {}
    serve_paper = section(paper, "serve", ServeConfig)
    assert serve_paper.replica_resources == {"madis_eval": 1.0}
    assert section(tiny, "serve", ServeConfig).replica_resources == {}
    # what Serve is handed (the fleet's actor options and Ray Train's ScalingConfig are checked
    # on a real multi-node cluster: tests/test_cluster.py)
    options = build_app(serve_paper, checkpoint="unused")._bound_deployment.ray_actor_options
    assert options["resources"] == {"madis_eval": 1.0} and options["num_gpus"] == 1.0
