"""Cluster profiles: ``slurm/profiles/<name>.yaml``, validated like sweeps before anything is submitted."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ssl_hpc.config import ConfigError, SweepConfig, read_yaml, validate_model
from ssl_hpc.config.cluster import PROFILE_NAME, SlurmProfile

PROFILE_DIR = Path("slurm") / "profiles"
PROFILE_ENV = "SSL_HPC_SLURM_PROFILE"


def available_profiles(project_root: Path) -> list[str]:
    folder = Path(project_root) / PROFILE_DIR
    return sorted(path.stem for path in folder.glob("*.yaml")) if folder.is_dir() else []


def profile_path(name: str, project_root: Path) -> Path:
    """A profile's file: a name in ``slurm/profiles/`` or a path to a YAML file."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        path = Path(name).expanduser()
        return path if path.is_absolute() else (Path.cwd() / path)
    if not PROFILE_NAME.match(name):
        raise ConfigError(
            f"slurm.profile: {name!r} is not a profile name; "
            f"accepted: {', '.join(available_profiles(project_root)) or '(none found)'} or a path"
        )
    return Path(project_root) / PROFILE_DIR / f"{name}.yaml"


def load_profile(name: str, project_root: Path, overrides: dict[str, Any] | None = None) -> SlurmProfile:
    """Reads and validates a profile; raises :class:`ConfigError` naming the file and the field."""
    path = profile_path(name, project_root)
    if not path.is_file():
        raise ConfigError(
            f"slurm.profile: no profile {name!r} ({path}); "
            f"accepted: {', '.join(available_profiles(project_root)) or '(none found)'} or a path"
        )
    raw = merge_sections(read_yaml(path), overrides or {})
    return validate_model(SlurmProfile, raw, source=str(path))


def merge_sections(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` on top, sections merged key by key (a sweep's ``slurm.aggregate.time_min``
    keeps the profile's ``aggregate.partition``)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_sections(merged[key], value)
        else:
            merged[key] = value
    return merged


def sweep_profile(sweep: SweepConfig, project_root: Path) -> tuple[str, SlurmProfile]:
    """The profile a sweep runs with: ``slurm.profile``, else ``$SSL_HPC_SLURM_PROFILE``; with the sweep's overrides."""
    name = sweep.slurm.profile or os.environ.get(PROFILE_ENV)
    if not name:
        raise ConfigError(
            f"slurm.profile: --backend slurm needs a cluster profile; set slurm.profile in the sweep, pass "
            f"--set slurm.profile=NAME or export {PROFILE_ENV}; accepted: "
            f"{', '.join(available_profiles(project_root)) or '(none found in slurm/profiles/)'}"
        )
    return name, load_profile(name, project_root, sweep.slurm.overrides)
