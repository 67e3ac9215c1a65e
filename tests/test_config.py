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
