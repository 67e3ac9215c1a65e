"""Configuration: one dataclass per concern, loaded from YAML profiles with dotted overrides.

A profile (``configs/cpu-tiny.yaml``, ``configs/paper.yaml``) is a YAML mapping whose top-level
sections name concerns (``data``, ``tokenizer``, ``model``, ``train``, ``fleet``, ``serve``...).
Each package owns the dataclass of its section (``madis.tokenizer.config.TokenizerConfig`` and so
on); this module only knows how to fill a dataclass from a mapping, strictly: an unknown key is an
error, not a silent no-op, because a typo in an ablation switch would otherwise run the wrong
experiment.

Overrides use ``section.field=value`` with YAML-typed values, e.g. ``train.zero_stage=2`` or
``model.utc_checkpoints=[0.75]``.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

T = TypeVar("T")

#: Directory holding the ready profiles (``<repo>/configs``).
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_PROFILE = "cpu-tiny"


class ConfigError(ValueError):
    """A config file, section or override is malformed or names an unknown field."""


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type ``tp`` (dataclasses, tuples, Optional...)."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _coerce(non_none[0], value, where)
        return value
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        return from_dict(tp, value, where)
    if origin in (list, Sequence, typing.List) or tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(inner, v, f"{where}[]") for v in value]
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if args and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[]") for v in value)
        if args:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, f"{where}[]") for a, v in zip(args, value))
        return tuple(value)
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp in (int, str, bool) and not isinstance(value, tp):
        if tp is str and isinstance(value, (int, float)):
            return str(value)
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def check_bounds(obj: Any, section_name: str, *, at_least_one: Sequence[str] = (),
                 non_negative: Sequence[str] = (), positive: Sequence[str] = ()) -> None:
    """Range checks of a section dataclass's numeric fields (call it in ``__post_init__``).

    Args:
        obj: the dataclass instance; section_name: its section, for the message.
        at_least_one, non_negative, positive: field names that must be ``>= 1``, ``>= 0`` and
            ``> 0``.
    Raises:
        ConfigError: naming the first field out of range, e.g. ``train.workers must be >= 1,
            got 0``.
    """
    for names, bad, rule in ((at_least_one, lambda v: v < 1, ">= 1"),
                             (non_negative, lambda v: v < 0, ">= 0"),
                             (positive, lambda v: v <= 0, "> 0")):
        for name in names:
            value = getattr(obj, name)
            if bad(value):
                raise ConfigError(f"{section_name}.{name} must be {rule}, got {value}")


def check_resources(value: Any, name: str) -> dict[str, float]:
    """A field of custom Ray resources, ``{resource: amount}`` (e.g. ``{madis_train: 1}``), checked
    and with float amounts; CPUs, GPUs and memory have fields of their own.

    Raises:
        ConfigError: not a mapping, an empty or built-in resource name, or an amount that is not a
            number >= 0; the message names the field ``name`` (``section.field``).
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name} must map resource names to amounts, got {value!r}")
    out = {}
    for key, amount in value.items():
        if not isinstance(key, str) or not key or key in ("CPU", "GPU", "memory"):
            raise ConfigError(f"{name}: {key!r} is not a custom resource name (CPUs, GPUs and "
                              f"memory have fields of their own)")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
            raise ConfigError(f"{name}.{key} must be a number >= 0, got {amount!r}")
        out[key] = float(amount)
    return out


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise :class:`ConfigError`."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown field(s) {unknown}; known: {sorted(names)}"
        )
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Dataclass (possibly nested) to plain YAML/JSON-able data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def resolve_profile(name_or_path: str | os.PathLike | None) -> Path:
    """A profile name (``cpu-tiny``) or a YAML path -> an existing path.

    Raises:
        ConfigError: the profile does not exist.
    """
    if name_or_path is None:
        name_or_path = DEFAULT_PROFILE
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise ConfigError(f"config file not found: {p}")
        return p
    cand = CONFIG_DIR / f"{name_or_path}.yaml"
    if not cand.exists():
        known = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown profile {str(name_or_path)!r}; known profiles: {known}")
    return cand


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
        node = nxt
    node[parts[-1]] = value


def load_tree(
    profile: str | os.PathLike | None = None, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """Load a profile as a nested dict and apply ``key.sub=value`` overrides.

    A profile may name a base with ``inherit: other-profile``; the base's sections are merged
    field by field under the profile's. Raises :class:`ConfigError` on a malformed override.
    """
    path = resolve_profile(profile)
    with open(path, encoding="utf-8") as f:
        tree = yaml.safe_load(f) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    base_name = tree.pop("inherit", None)
    if base_name:
        base = load_tree(base_name)
        for section, body in tree.items():
            if isinstance(body, dict) and isinstance(base.get(section), dict):
                base[section].update(body)
            else:
                base[section] = body
        tree = base
    for ov in overrides:
        _set_dotted(tree, *split_override(ov))
    return tree


def split_override(override: str) -> tuple[str, Any]:
    """``"section.field=value"`` -> ``("section.field", value)``, the value read as YAML.

    Raises:
        ConfigError: no ``=`` in ``override``.
    """
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like section.field=value")
    key, raw = override.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def section(tree: Mapping[str, Any], name: str, cls: type[T]) -> T:
    """Build section ``name`` of a loaded tree as dataclass ``cls`` (defaults when absent)."""
    return from_dict(cls, tree.get(name) or {}, where=name)


def job_section(tree: Mapping[str, Any], name: str, job: str | None, cls: type[T]) -> T:
    """Section ``name`` overridden field by field by section ``{name}_{job}`` (e.g. ``train`` and
    ``train_pretrain``), built as dataclass ``cls``; ``job`` None reads ``name`` alone.

    Raises:
        ConfigError: an unknown field or a bad value in either section.
    """
    merged = dict(tree.get(name) or {})
    where = name
    if job:
        merged.update(tree.get(f"{name}_{job}") or {})
        where = f"{name}/{name}_{job}"
    return from_dict(cls, merged, where)
