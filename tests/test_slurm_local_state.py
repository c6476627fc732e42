"""slurm/local/up.sh runs as root with a state folder under /tmp by default: it must refuse a folder, or a
file in it, that another user could have planted, and write nothing through it."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT

UP = PROJECT_ROOT / "slurm" / "local" / "up.sh"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="up.sh runs as root only (it starts system daemons)")


def other_user() -> tuple[int, int]:
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


def up(state: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SSL_HPC_SLURM_DIR": str(state)}
    env.pop("SLURM_CONF", None)
    return subprocess.run(["bash", str(UP)], env=env, capture_output=True, text=True, timeout=60)


def test_hostile_state_folder_owned_by_another_user_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chown(state, *other_user())
    result = up(state)
    assert result.returncode != 0 and "not root" in result.stderr, result.stderr
    assert list(state.iterdir()) == []  # nothing written into it


def test_hostile_state_folder_that_is_a_link_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "state").symlink_to(target)
    result = up(tmp_path / "state")
    assert result.returncode != 0 and "symbolic link" in result.stderr, result.stderr
    assert list(target.iterdir()) == []


def test_hostile_group_writable_state_folder_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o775)
    result = up(state)
    assert result.returncode != 0 and "writable" in result.stderr, result.stderr


def test_hostile_planted_link_inside_the_state_folder_is_not_written_through(tmp_path):
    state = tmp_path / "state"
    (state / "etc").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.chown(victim, *other_user())
    (state / "etc" / "dbpass").symlink_to(victim)
    result = up(state)
    assert result.returncode != 0 and "symbolic link" in result.stderr and "dbpass" in result.stderr, result.stderr
    assert victim.read_text() == "precious\n" and victim.stat().st_uid == other_user()[0]
