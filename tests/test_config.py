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
