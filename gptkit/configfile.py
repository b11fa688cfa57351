"""Strict reading of typed dataclass configs: YAML (safe_load) + dotted overrides.

`load(Config, "x.yaml", ["train.lr=3e-4"])` builds the dataclass tree, coercing each value to its
declared type; unknown keys get the closest valid key; every problem is collected and raised once
in a `ConfigError`. Also YAML dumping and the field docs behind `--help` and the README reference.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import math
import textwrap
import types
import typing
from pathlib import Path
from typing import Literal

import yaml

from gptkit.errors import GptkitError


class ConfigError(GptkitError):
    """One or more problems in a config file or override."""


def load(cls, path: str | Path | None = None, overrides: list[str] = ()):
    """Read a YAML file (optional) and `section.key=value` overrides into a validated `cls`."""
    raw, where = {}, "the command line"
    if path is not None:
        raw, where = _read_yaml(Path(path)), str(path)
    problems: list[str] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            problems.append(f"override {item!r} is not section.key=value (e.g. train.lr=3e-4)")
            continue
        _set_dotted(raw, key.strip().split("."), _parse_scalar(value), item, problems)
    cfg = build(cls, raw, "", problems, where)
    if len(problems) == 1:
        p = problems[0]
        raise ConfigError(p if where in p else f"{p} (in {where})")
    if problems:
        listing = "\n  ".join(problems)
        raise ConfigError(f"{len(problems)} problems in {where}:\n  {listing}")
    return cfg


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass an existing file with -c")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{at} is not valid YAML ({reason}); fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of sections (model:, train:, ...)")
    return data


def _parse_scalar(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _set_dotted(raw: dict, keys: list[str], value, item: str, problems: list[str]):
    node = raw
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            problems.append(f"override {item!r}: {k} is not a section")
            return
        node = child
    node[keys[-1]] = value


def build(cls, raw, prefix: str, problems: list[str], where: str):
    """Build dataclass `cls` from a dict, appending every problem found to `problems`."""
    if not isinstance(raw, dict):
        problems.append(f"`{prefix.rstrip('.')}` must be a mapping, got {raw!r}")
        raw = {}
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            problems.append(_unknown(f"{prefix}{key}", key, names, prefix, where))
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build(
                tp, value if value is not None else {}, f"{prefix}{key}.", problems, where
            )
            continue
        try:
            kwargs[key] = coerce(value, tp)
        except ValueError as e:
            problems.append(f"`{prefix}{key}`: {e}")
    try:
        return cls(**kwargs)
    except ValueError as e:
        problems.extend(str(e).splitlines())
        return cls()


def _unknown(full: str, key: str, names: list[str], prefix: str, where: str) -> str:
    key = str(key)
    close = [n for n in names if key.startswith(n + "_") or n.startswith(key)]
    close = close or difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f"; valid: {', '.join(names)}"
    return f"unknown key '{full}' in {where}{hint}"


def coerce(value, tp):
    """Convert a YAML value to declared type `tp`, or raise ValueError saying what was expected."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0])
    if origin is Literal:
        if value not in args:
            raise ValueError(f"must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin is list:
        items = value if isinstance(value, list) else [value]
        return [coerce(v, args[0]) for v in items]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ValueError(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            f = float(str(value).replace("_", ""))
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
        if not f.is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {value!r}") from None
        if not math.isfinite(number):  # nan/.inf pass float() but poison every use
            raise ValueError(f"expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ValueError(f"expected a string, got {value!r}")
        return str(value)
    raise AssertionError(f"unsupported config type {tp}")


# ---------------------------------------------------------------------------------------------
# Writing and documenting


def to_dict(cfg) -> dict:
    """Plain nested dict of a config (for YAML, JSON and checkpoints)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg) -> str:
    """The resolved config as YAML, sections in declaration order."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


def field_docs(cls, prefix: str = "") -> list[tuple[str, str, object, str]]:
    """(dotted key, type, default, one-line doc) for every leaf field, from the docstrings."""
    docs = _docstrings(cls)
    hints = typing.get_type_hints(cls)
    rows = []
    default = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += field_docs(tp, f"{prefix}{f.name}.")
        else:
            name = _type_name(tp)
            rows.append((f"{prefix}{f.name}", name, getattr(default, f.name), docs.get(f.name, "")))
    return rows


def _type_name(tp) -> str:
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _docstrings(cls) -> dict[str, str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr):
            if isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = nxt.value.value.strip()
    return docs
