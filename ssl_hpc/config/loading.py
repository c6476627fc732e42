"""Reading a sweep: YAML, ``--set`` overrides, validation into a :class:`SweepConfig`."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from ssl_hpc.config.base import ConfigError, validate_model
from ssl_hpc.config.sweep import SweepConfig


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (['a', 'b', 'c'], value), the value parsed as YAML (``[1, 2]``, ``0.5``...)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected dotted.key=value")
    dotted, raw = text.split("=", 1)
    keys = [k for k in dotted.strip().split(".")]
    if not all(keys):
        raise ConfigError(f"--set {text!r}: empty key in {dotted!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {dotted}: value {raw!r} is not valid YAML ({error})") from None
    return keys, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Returns a copy of ``raw`` with each ``dotted.key=value`` set, creating sections as needed."""
    result = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = result
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {'.'.join(keys[: depth + 1])} is not a section")
            node = child
        node[keys[-1]] = value
    return result


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such sweep file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: malformed YAML{where}: {getattr(error, 'problem', error)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a sweep must be a YAML mapping (name:, grid:, ...), got {type(raw).__name__}")
    return raw


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> SweepConfig:
    """Reads, overrides and validates a sweep; raises :class:`ConfigError` naming the field."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    return validate_sweep(raw, source=str(path))


def validate_sweep(raw: dict[str, Any], source: str = "sweep") -> SweepConfig:
    return validate_model(SweepConfig, raw, source)
