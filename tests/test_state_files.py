"""State files hold PIN values: created private, and refused when others can reach them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mynacard import StateError, open_card

SELECT_JPKI = bytes.fromhex("00A4040C0AD392F000260100000001")


def test_new_state_is_private(tmp_path: Path) -> None:
    state = tmp_path / "new" / "state"
    with open_card("default", state) as card:
        card.transmit(SELECT_JPKI)
        modes = {path.name: path.stat().st_mode & 0o777 for path in state.iterdir()}
    assert state.stat().st_mode & 0o777 == 0o700
    assert modes and all(mode == 0o600 for mode in modes.values()), modes
    assert {"card.sqlite", "card.lock"} <= set(modes)


REACHABLE = [("", 0o755), ("", 0o710), ("card.sqlite", 0o644), ("card.sqlite-wal", 0o640),
             ("card.lock", 0o606)]  # fmt: skip


@pytest.mark.parametrize(("name", "mode"), REACHABLE)
def test_state_others_can_reach_is_refused(tmp_path: Path, name: str, mode: int) -> None:
    state = tmp_path / "state"
    open_card("default", state).close()
    target = state / name if name else state
    if not target.exists():
        target.touch(mode=0o600)
    target.chmod(mode)
    with pytest.raises(StateError, match=r"can be read or written by others .*chmod"):
        open_card("default", state)
    result = subprocess.run(
        [sys.executable, "-m", "mynacard", "status", "--state", str(state)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "chmod" in result.stderr and "Traceback" not in result.stderr
    target.chmod(0o700 if not name else 0o600)
    open_card("default", state).close()  # fixed as the message says


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to hand a file to another user")
def test_state_of_another_user_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    open_card("default", state).close()
    os.chown(state / "card.sqlite", 65534, 65534)
    with pytest.raises(StateError, match="belongs to another user"):
        open_card("default", state)
