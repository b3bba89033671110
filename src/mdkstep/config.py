"""YAML configs as typed dataclasses.

Every config file maps onto one dataclass. Unknown keys and wrong types are errors that
name the file and the key; command-line overrides (``key=value`` strings or a dict of
values from argparse) are merged on top of the file.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

import yaml

from mdkstep.utils import MdkstepError

T = TypeVar("T")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice (plain YAML: the last one wins)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key]})", key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _yaml_error_text(e: yaml.YAMLError) -> str:
    """' line N: problem' (or ': problem') of a YAML error, on one line."""
    mark = getattr(e, "problem_mark", None)
    line = f" line {mark.line + 1}" if mark else ""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{line} {problem}"


def safe_load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that also refuses duplicate keys (raises yaml.YAMLError)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def _check_float(value: float, where: str, key: str, nonfinite_ok: bool) -> float:
    """Refuse inf/nan (unless the key allows them) and temperatures <= 0."""
    if not math.isfinite(value) and not nonfinite_ok:
        raise MdkstepError(f"{where}: expected a finite number, got {value!r}")
    if key.endswith("temperature_K") and not value > 0:
        raise MdkstepError(f"{where}: a temperature must be > 0 K, got {value!r}")
    return value


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``; raise MdkstepError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        last_err: MdkstepError | None = None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except MdkstepError as e:
                last_err = e
        raise last_err or MdkstepError(f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise MdkstepError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, Sequence, tuple):
        if not isinstance(value, (list, tuple)):
            raise MdkstepError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise MdkstepError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise MdkstepError(f"{where}: expected true/false, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                return float("inf") if value > 0 else float("-inf")
        raise MdkstepError(f"{where}: expected a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise MdkstepError(f"{where}: expected an integer, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise MdkstepError(f"{where}: expected a string, got {value!r}")
    return value


def _coerce_field(cls: type, key: str, value: Any, tp: Any, where: str) -> Any:
    """:func:`_coerce`, then :func:`_check_float` on a float result or on each float of a list
    (non-finite allowed only for keys in ``cls.NONFINITE_OK``)."""
    out = _coerce(value, tp, where)
    nonfinite_ok = key in getattr(cls, "NONFINITE_OK", ())
    if isinstance(out, float):
        _check_float(out, where, key, nonfinite_ok)
    elif isinstance(out, list):
        for i, v in enumerate(out):
            if isinstance(v, float):
                _check_float(v, f"{where}[{i}]", key, nonfinite_ok)
    return out


def drop_removed(cls: type, data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``data`` without the keys that ``cls.REMOVED`` (key -> its old default) lists.

    A config written before a key was removed (a YAML file, or one stored in a checkpoint)
    still reads when that key holds its old default: it meant the same without it. Any other
    value is refused in one line, since it asked for something the code no longer does."""
    out = dict(data)
    for key, default in getattr(cls, "REMOVED", {}).items():
        if key in out and out.pop(key) != default:
            raise MdkstepError(f"{source}: key '{key}' was removed (a lever measured as no help); only its old "
                               f"default {default!r} still reads, this config has {data[key]!r}")
    return out


def from_dict(cls: type[T], data: Mapping[str, Any], source: str) -> T:
    """Build dataclass ``cls`` from ``data``; ``source`` names the file in error messages.
    Removed keys at their old default are dropped (:func:`drop_removed`)."""
    if not isinstance(data, Mapping):
        raise MdkstepError(f"{source}: expected a mapping of keys to values at top level")
    data = drop_removed(cls, data, source)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise MdkstepError(
            f"{source}: unknown key '{unknown[0]}' (allowed: {', '.join(sorted(names))})"
        )
    kwargs = {k: _coerce_field(cls, k, v, hints[k], f"{source}: key '{k}'") for k, v in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except (ValueError, AssertionError) as e:
            raise MdkstepError(f"{source}: {e}") from None
    return obj


def parse_override(item: str) -> tuple[str, Any]:
    """Parse one ``key=value`` override; the value is read as YAML (numbers, bools, lists)."""
    if "=" not in item:
        raise MdkstepError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise MdkstepError(f"--set {item!r}: empty key")
    try:
        value = safe_load_yaml(raw)
    except yaml.YAMLError as e:
        raise MdkstepError(f"--set {item!r}: invalid value ({_yaml_error_text(e).strip()})") from None
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string; on the command line it means a number
            value = float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            pass
    return key, value


def load_config(
    cls: type[T],
    path: str | Path | None,
    overrides: Mapping[str, Any] | None = None,
    set_items: Sequence[str] = (),
) -> T:
    """Load ``path`` (YAML) into ``cls``, then apply ``overrides`` (None values skipped) and
    ``set_items`` (``key=value`` strings from ``--set``)."""
    data: dict[str, Any] = {}
    source = str(path) if path else "<defaults>"
    if path:
        p = Path(path)
        if not p.is_file():
            raise MdkstepError(f"{p}: config file not found")
        try:
            loaded = safe_load_yaml(p.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark else ""
            raise MdkstepError(f"{p}:{line} invalid YAML ({getattr(e, 'problem', None) or e})") from None
        except (OSError, UnicodeDecodeError) as e:
            raise MdkstepError(f"{p}: cannot read config ({e})") from None
        if loaded is not None and not isinstance(loaded, Mapping):
            raise MdkstepError(f"{p}: expected a mapping of keys to values at top level, found a YAML {type(loaded).__name__}")
        data = dict(loaded or {})
    for k, v in (overrides or {}).items():
        if v is not None:
            data[k] = v
    for item in set_items:
        k, v = parse_override(item)
        data[k] = v
    return from_dict(cls, data, source)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict view of a config dataclass (for checkpoints and metadata)."""
    return dataclasses.asdict(cfg)


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a script's ``main``; a :class:`MdkstepError` becomes one line on stderr and exit 2."""
    try:
        rc = main(argv)
    except MdkstepError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted (state up to the last checkpoint is kept; rerun to resume)", file=sys.stderr)
        sys.exit(130)
    sys.exit(rc or 0)
