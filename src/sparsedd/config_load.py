"""A config from what users write: presets, TOML files, ``--set key=value`` and sweep values, layered
in that order, each key and value checked for its type, then the whole checked (ranges in
:mod:`sparsedd.config`, names in :mod:`sparsedd.config_check`)."""

from __future__ import annotations

import dataclasses
import functools
import tomllib
import typing
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

from .config import RunConfig, brief, check_number
from .config_check import check
from .errors import SparseddError

_SECTIONS = {f.name: f for f in fields(RunConfig)}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def valid_keys() -> tuple[str, ...]:
    keys = []
    for name, f in _SECTIONS.items():
        hints = _field_types(RunConfig)
        if dataclasses.is_dataclass(hints[name]):
            keys += [f"{name}.{g.name}" for g in fields(hints[name])]
        else:
            keys.append(name)
    return tuple(keys)


def coerce(key: str, value: Any, typ: Any) -> Any:
    """Turn a TOML value or a --set string into the field's type, or raise a one-line error."""
    origin = typing.get_origin(typ)
    if origin is tuple:
        if isinstance(value, str):
            value = _list_items(key, value)
        if not isinstance(value, (list, tuple)):
            raise SparseddError(f"{key} must be a list, got {brief(value)}")
        (inner, _ellipsis) = typing.get_args(typ)
        return tuple(coerce(key, v, inner) for v in value)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise SparseddError(f"{key} must be true or false, got {brief(value)}")
    if typ is int:
        if isinstance(value, bool):
            raise SparseddError(f"{key} must be an integer, got {brief(value)}")
        if isinstance(value, float):  # as the command line refuses "2.0": an integer field takes integers
            raise SparseddError(f"{key} must be an integer, got {brief(value)}")
        if not isinstance(value, int):
            try:
                value = int(str(value))
            except ValueError:  # also a string of more than 4300 digits
                raise SparseddError(f"{key} must be an integer, got {brief(value)}") from None
        check_number(key, value)
        return value
    if typ is float:
        if isinstance(value, bool):
            raise SparseddError(f"{key} must be a number, got {brief(value)}")
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):  # overflow: an int beyond any float
            raise SparseddError(f"{key} must be a finite number, got {brief(value)}") from None
        check_number(key, number)
        return number
    if typ is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise SparseddError(f"{key} must be a string, got {brief(value)}")
        check_number(key, value)
        return str(value)
    raise TypeError(f"unsupported field type {typ} for {key}")


def _list_items(key: str, text: str) -> list[str]:
    """The items of a list given as text (``[1, 2]``, ``(1, 2)`` or ``1, 2``); a one-line error for anything
    else (unbalanced or nested brackets, an empty item), so that ``[1,`` is not read as ``[1]``."""
    t = text.strip()
    pairs = {"[": "]", "(": ")"}
    opened, closed = t[:1] in pairs, t[-1:] in pairs.values()
    balanced = opened and closed and pairs[t[0]] == t[-1]
    inner = t[1:-1] if balanced else t
    parts = [p.strip() for p in inner.split(",")]
    unbalanced = (opened or closed) and not balanced
    if unbalanced or any(c in inner for c in "[]()") or (parts != [""] and "" in parts):
        raise SparseddError(f"{key} must be a list of values like [1, 2], got {brief(text)}")
    return [] if parts == [""] else parts


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables to dotted keys: ``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``. Iterative, so a
    table nested thousands deep (a malformed file) ends in an unknown-key error, not a RecursionError."""
    flat: dict[str, Any] = {}
    stack = [(prefix, iter(tree.items()))]  # depth first, in the file's order, as a recursion would go
    while stack:
        at, items = stack[-1]
        for k, v in items:
            if isinstance(v, dict):
                stack.append((f"{at}{k}.", iter(v.items())))
                break
            flat[f"{at}{k}"] = v
        else:
            stack.pop()
    return flat


def typed(flat: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys to values of their fields' types (no range checks yet); a one-line error for an unknown
    key or a value of the wrong type."""
    hints = _field_types(RunConfig)
    allowed = valid_keys()
    out = {}
    for key, value in flat.items():
        if key not in allowed:
            raise SparseddError(f"unknown config key {brief(key)}; valid keys: {', '.join(sorted(allowed))}")
        sec, _, name = key.rpartition(".")
        out[key] = coerce(key, value, _field_types(hints[sec])[name] if sec else hints[key])
    return out


def build(flat: dict[str, Any]) -> RunConfig:
    """A RunConfig from dotted keys (``train.lr``) to values (TOML values or strings), checked against the
    registries (:func:`sparsedd.config_check.check`)."""
    hints = _field_types(RunConfig)
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for key, value in typed(flat).items():
        if "." in key:
            sec, name = key.split(".", 1)
            sections.setdefault(sec, {})[name] = value
        else:
            top[key] = value
    for sec, values in sections.items():
        top[sec] = hints[sec](**values)
    return check(RunConfig(**top))


def presets() -> list[str]:
    files = resources.files("sparsedd").joinpath("presets").iterdir()
    return sorted(p.name[: -len(".toml")] for p in files if p.name.endswith(".toml"))


def _read_toml(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SparseddError(f"malformed TOML in {where}: {e}; fix the file and run again") from None
    except RecursionError:  # arrays nested thousands deep
        raise SparseddError(f"malformed TOML in {where}: nested too deep; fix the file and run again") from None


def read_text_file(path: Path, what: str) -> str:
    """The text of a TOML file; one that cannot be read or is not UTF-8 (as TOML must be) is a one-line error."""
    if not path.is_file():
        problem = "is a folder" if path.is_dir() else "not found"
        raise SparseddError(f"{what} {path} {problem}; give the path of a TOML file")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise SparseddError(f"{what} {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise SparseddError(f"cannot read {what} {path} ({e.strerror or e})") from None


def preset_values(name: str) -> dict[str, Any]:
    if name not in presets():
        raise SparseddError(f"unknown preset {name!r}; available: {', '.join(presets())}")
    text = resources.files("sparsedd").joinpath("presets", f"{name}.toml").read_text()
    return flatten(_read_toml(text, f"preset {name}"))


def file_values(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    return flatten(_read_toml(read_text_file(p, "config file"), str(p)))


def parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise SparseddError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


DEFAULT_PRESET = "mnist1d-quick"


def load(preset: str | None = None, config_file: str | Path | None = None,
         sets: list[str] | None = None, seeds: int | None = None, values: dict[str, Any] | None = None) -> RunConfig:
    """Preset, then TOML file, then typed ``values`` (dotted keys, as a sweep gives them), then
    --set overrides, then --seeds; with none of them, the demo."""
    if preset is None and config_file is None:
        preset = DEFAULT_PRESET
    layers = [preset_values(preset) if preset is not None else {},
              file_values(config_file) if config_file is not None else {},
              values or {}, parse_sets(sets or []), {"seeds": seeds} if seeds is not None else {}]
    flat: dict[str, Any] = {}
    for layer in layers:  # each checked for keys and types, also where a later one overrides it
        flat.update(typed(layer))
    return build(flat)


def from_dict(d: dict[str, Any]) -> RunConfig:
    """Inverse of :func:`canonical_dict` (used to read stored configs)."""
    return build(flatten(d))
