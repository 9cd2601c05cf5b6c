"""One config loader for every recipe: YAML file + ``key=value`` overrides -> typed dataclasses.

Unknown keys are errors that name the key and the file, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that cannot be turned into the typed config."""


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping top level is a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML (nested too deeply to read: more levels of [ or {{ than Python's "
                          "recursion limit)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML: numbers, lists, null, {key: value}) to a nested dict
    copy. A value that is not YAML is taken as a string, unless it starts with ``{`` or ``[`` (a ConfigError)."""
    out = _deep_copy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key part")
        value = _override_value(item, raw)
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def _override_value(item: str, raw: str) -> Any:
    """An override's value parsed as YAML. Text that is not YAML stays a string, except text that starts like a YAML
    flow collection (``{`` or ``[``): meant as a mapping or list, it is a ConfigError saying how to quote."""
    if not raw.strip():
        return ""
    try:
        return yaml.safe_load(raw)
    except RecursionError:
        raise ConfigError(f"override {item[:80]!r}...: its value is nested too deeply to read") from None
    except yaml.YAMLError as exc:
        if raw.lstrip()[:1] not in "{[":
            return raw
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            f"override {item!r}: the value is not valid YAML ({problem}): inside {{...}} or [...], quote every value "
            "that holds {, }, [, ], a comma or ': ' (a path with {split} too), e.g. "
            "\"data={labels: 'a/det_{split}.json', images: 'a/{split}'}\"") from None


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping, recursing into nested dataclasses; unknown keys raise."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = unknown[0] if where == "config" else f"{where}.{unknown[0]}"
        raise ConfigError(f"unknown key {key!r} (known keys here: {', '.join(sorted(fields))})")
    kwargs = {name: _convert(hints[name], value, f"{where}.{name}" if where != "config" else name)
              for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@=-]*")


def check_name(value: str, what: str) -> str:
    """``value`` if it is safe as one file-name component (a run, dataset or derainer name becomes part of output
    paths), else a ConfigError: letters, digits and ``. _ + - @ =``, starting with a letter or digit (no ``/``,
    ``..``, spaces or hidden names), at most 100 characters."""
    if not isinstance(value, str) or not _SAFE_NAME.fullmatch(value) or len(value) > 100:
        raise ConfigError(f"{what} {value!r} is not a plain name: use letters, digits and . _ + - @ =, starting with a "
                          "letter or digit, at most 100 characters (it becomes part of output paths, so no '/', '..' "
                          "or spaces)")
    return value


def to_dict(obj: Any) -> Any:
    """Dataclass (possibly nested) -> plain dict/list structure suitable for YAML/JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Load ``cls`` from an optional YAML file plus ``key=value`` overrides (overrides win)."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        if path is not None:
            raise ConfigError(f"{path}: {exc}") from exc
        raise


def save_config(obj: Any, path: str | Path) -> None:
    """Write a (dataclass) config as YAML, atomically."""
    from derain.fileio import atomic_write_text  # imported late: config stays light

    atomic_write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Coerce a YAML value to annotation ``tp`` (dataclass, list/tuple, Optional, int/float/bool/str/Path)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        last: Exception | None = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as exc:
                last = exc
        raise last or ConfigError(f"{where}: cannot convert {value!r}")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, where)
    if origin in (list, Sequence) or tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where) for v in value)
        if args and len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, where) for a, v in zip(args or [Any] * len(value), value, strict=True))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        if len(args) == 2 and args[1] is not Any:  # e.g. dict[str, SourceConfig]: convert each value
            return {str(k): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, str):  # YAML 1.1 reads "2e-3" (no dot) as a string
            try:
                value = float(value) if tp is float or not value.strip().lstrip("+-").isdigit() else int(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if tp is int and (not math.isfinite(value) or float(value) != int(value)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return tp(value)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if tp is Path:
        return Path(value)
    return value
