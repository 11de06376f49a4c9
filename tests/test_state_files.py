"""State files hold PIN values: created private, and refused when others can reach them."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mynacard import StateError, open_card
from mynacard.store import read_pin_status

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


# -- a damaged state is an error naming the file and the fix, never a fresh card -------------

JPKI_AUTH = ("00A4040C0AD392F000260100000001", "00A4020C020018")


def blocked_auth(state: Path, profile: str = "default") -> None:
    """A card whose auth PIN is blocked (three wrong tries), closed."""
    with open_card(profile, state) as card:
        for command in (*JPKI_AUTH, *["002000800439393939"] * 3):
            card.transmit(bytes.fromhex(command))


def sql(*statements: str) -> Callable[[Path], None]:
    def damage(state: Path) -> None:
        conn = sqlite3.connect(state / "card.sqlite")
        for statement in statements:
            conn.execute(statement)
        conn.commit()
        conn.close()

    return damage


def truncate(size: int) -> Callable[[Path], None]:
    def damage(state: Path) -> None:
        os.truncate(state / "card.sqlite", size)

    return damage


def garbage_after_first_page(state: Path) -> None:
    path = state / "card.sqlite"
    data = path.read_bytes()
    path.write_bytes(data[:4096] + bytes((i * 37 + 11) % 256 for i in range(len(data) - 4096)))


def replace_with_another_card(state: Path) -> None:
    other = state.parent / "other"
    open_card("default", other).close()
    shutil.copy(other / "card.sqlite", state / "card.sqlite")


# (damage, what the message says, profile)
DAMAGES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "truncated to 0": (truncate(0), "is empty (0 bytes)", "default"),
    "truncated mid-file": (truncate(5000), "is not a usable card state", "default"),
    "deleted": (lambda s: (s / "card.sqlite").unlink(), "database is missing", "default"),
    "garbage after the first page": (garbage_after_first_page, "damaged", "default"),
    "pins rows deleted": (sql("DELETE FROM pins"), "PIN auth is missing", "default"),
    "auth row deleted": (sql("DELETE FROM pins WHERE name = 'auth'"), "PIN auth is missing",
                         "default"),
    "remaining -1": (sql("UPDATE pins SET remaining = -1 WHERE name = 'auth'"),
                     "PIN auth: remaining tries -1 is outside 0..3", "default"),
    "remaining 16": (sql("UPDATE pins SET remaining = 16 WHERE name = 'auth'"),
                     "PIN auth: remaining tries 16 is outside 0..3", "default"),
    "remaining 100": (sql("UPDATE pins SET remaining = 100, max_tries = 100 WHERE name = 'auth'"),
                      "PIN auth: maximum tries 100 is outside 0..15", "default"),
    "4 on a 3-try PIN": (sql("UPDATE pins SET remaining = 4 WHERE name = 'auth'"),
                         "remaining tries 4 is outside 0..3", "default"),
    "4 of 4 on a 3-try PIN": (sql("UPDATE pins SET remaining = 4, max_tries = 4 WHERE rowid = 1"),
                              "PIN auth allows 4 tries where its profile allows 3", "default"),
    "PIN stored as TEXT": (sql("UPDATE pins SET value = CAST(value AS TEXT) WHERE name = 'sign'"),
                           "PIN sign: its value is stored as TEXT, not BLOB", "default"),
    "counter stored as TEXT": (sql("UPDATE pins SET remaining = 'x' WHERE name = 'sign'"),
                               "PIN sign: its remaining tries is stored as TEXT", "default"),
    "table dropped": (sql("DROP TABLE free_files"), "has no table free_files", "default"),
    "another card's database": (replace_with_another_card, "is not the one of the card",
                                "default"),
    "marker not JSON": (lambda s: (s / "card.personalised").write_text("{"),
                        "card.personalised: the personalisation record does not read", "default"),
    "definition not JSON": (sql("UPDATE free_apps SET definition = '{not json'"),
                            "its definition is not a JSON object", "taxi-tickets"),
    "free-area EF rows deleted": (sql("DELETE FROM free_files"), "no stored content for EF",
                                  "taxi-tickets"),
    "free-area key counter deleted": (sql("DELETE FROM pins WHERE name LIKE 'taxi:key%'"),
                                      "PIN taxi:key1 is missing", "taxi-tickets"),
    "capacity not a number": (sql("UPDATE meta SET value = 'lots' WHERE key LIKE 'free_area%'"),
                              "the free-area capacity 'lots' is not a number", "taxi-tickets"),
}  # fmt: skip


def mynacard(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mynacard", *map(str, args)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def assert_one_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result
    assert result.stderr.startswith("mynacard: ") and result.stderr.count("\n") == 1, result
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


@pytest.mark.parametrize("name", DAMAGES)
def test_damaged_state_is_refused_naming_the_file_and_the_fix(name: str, tmp_path: Path) -> None:
    damage, says, profile = DAMAGES[name]
    state = tmp_path / "state"
    blocked_auth(state, profile)
    damage(state)
    fix = f"mynacard state reset --state {state}"
    where = "card.personalised" if "marker" in name else "card.sqlite"
    assert_one_line(mynacard("status", "--state", state), says, where, fix)
    for _ in range(2):  # a refused open changes nothing: the second is refused alike
        with pytest.raises(StateError, match=re.escape(says)) as error:
            open_card(profile, state)
        assert fix in str(error.value) and where in str(error.value)


@pytest.mark.parametrize("command", [("serve", "--vpcd", "127.0.0.1:9"), ("freearea", "list"),
                                     ("reset-pin", "auth")])  # fmt: skip
def test_every_command_refuses_a_damaged_state(command: tuple[str, ...], tmp_path: Path) -> None:
    state = tmp_path / "state"
    blocked_auth(state)
    sql(
        "UPDATE pins SET remaining = 3 WHERE name = 'auth'", "DELETE FROM pins WHERE name = 'sign'"
    )(state)
    assert_one_line(mynacard(*command, "--state", state), "PIN sign is missing", "state reset")


def test_state_reset_is_the_only_way_to_a_new_card(tmp_path: Path) -> None:
    state = tmp_path / "state"
    blocked_auth(state, "taxi-tickets")
    truncate(0)(state)
    assert_one_line(mynacard("status", "--state", state), "is empty")
    result = mynacard("state", "reset", "--state", state)  # the profile the state records
    assert result.returncode == 0 and "taxi-tickets" in result.stdout, result
    status = mynacard("status", "--state", state, "--json")
    counters = {row["name"]: row["remaining"] for row in json.loads(status.stdout)}
    assert counters["auth"] == 3 and counters["taxi:key1"] > 0
    assert (state / "card.personalised").stat().st_mode & 0o777 == 0o600
    with open_card("taxi-tickets", state):  # a live card's state is not reset under it
        assert_one_line(mynacard("state", "reset", "--state", state), "in use by a live card")
    (state / "card.personalised").unlink()
    (state / "card.sqlite").unlink()
    assert_one_line(mynacard("state", "reset", "--state", state), "give --profile")
    assert mynacard("state", "reset", "--state", state, "--profile", "default").returncode == 0


KILLED_WHILE_BLOCKING = """
import sys
from mynacard import open_card
card = open_card("default", sys.argv[1], exclusive=sys.argv[2] == "exclusive")
for command in ("00A4040C0AD392F000260100000001", "00A4020C020018", *["002000800439393939"] * 3):
    answer = card.transmit(bytes.fromhex(command))
print(answer.hex(), flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("locking", ["shared", "exclusive"])
def test_a_wal_deleted_after_kill_9_loses_no_answered_try(tmp_path: Path, locking: str) -> None:
    """The counters are in the database file before the card answers: without its -wal and
    -shm, the card comes back blocked, not full (whether others may read it meanwhile or it
    is locked to the card, as the bench's scratch cards are)."""
    state = tmp_path / "state"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_WHILE_BLOCKING, str(state), locking],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "63c0"  # answered: blocked
    assert (state / "card.sqlite-wal").exists()
    child.kill()
    child.wait()
    (state / "card.sqlite-wal").unlink()
    (state / "card.sqlite-shm").unlink(missing_ok=True)
    status = mynacard("status", "--state", state, "--json")
    assert status.returncode == 0
    assert {row["name"]: row["remaining"] for row in json.loads(status.stdout)}["auth"] == 0
    with open_card("default", state) as card:
        for command in JPKI_AUTH:
            card.transmit(bytes.fromhex(command))
        assert card.transmit(bytes.fromhex("002000800431323334"))[0] == 0x69  # still blocked


def test_a_card_opened_exclusive_keeps_its_state_to_itself(tmp_path: Path) -> None:
    """While it is open no other process reads its database (one line, exit 2); once it
    closes the state is whole and the counters it spent are there."""
    state = tmp_path / "state"
    with open_card("default", state, exclusive=True) as card:
        for command in JPKI_AUTH:
            card.transmit(bytes.fromhex(command))
        assert card.transmit(bytes.fromhex("002000800439393939")) == bytes.fromhex("63C2")
        assert_one_line(mynacard("status", "--state", state), "keeps it locked")
    assert {p.name: p.remaining for p in read_pin_status(state)}["auth"] == 2


def test_a_read_only_database_is_refused(tmp_path: Path) -> None:
    """chmod 400 card.sqlite: the card refuses to start rather than fail on its first write
    (root ignores file modes, so it runs the commands without CAP_DAC_OVERRIDE)."""
    state = tmp_path / "state"
    blocked_auth(state)
    (state / "card.sqlite").chmod(0o400)
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"]
    prefix = drop if os.getuid() == 0 else []
    if prefix and shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop root's file-mode override")
    opening = f"from mynacard import open_card; open_card('default', {str(state)!r})"
    for command in (
        ["-m", "mynacard", "status", "--state", str(state)],
        ["-m", "mynacard", "serve", "--vpcd", "127.0.0.1:9", "--state", str(state)],
        ["-c", f"import sys\n{opening}"],
    ):
        result = subprocess.run(
            [*prefix, sys.executable, *command], capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
        assert "card.sqlite cannot be written (Permission denied)" in result.stderr, result
        assert f"chmod 600 {state / 'card.sqlite'}" in result.stderr
    assert "StateError: " in result.stderr  # open_card's error, not sqlite's


def test_a_state_from_before_the_marker_is_adopted_whole(tmp_path: Path) -> None:
    """A state made before card.personalised existed keeps its counters and gets its marker;
    one that lost a PIN row is refused all the same."""
    state = tmp_path / "state"
    blocked_auth(state)
    (state / "card.personalised").unlink()
    status = mynacard("status", "--state", state, "--json")
    assert {row["name"]: row["remaining"] for row in json.loads(status.stdout)}["auth"] == 0
    open_card("default", state).close()
    assert json.loads((state / "card.personalised").read_text())["pins"]["auth"] == 3
    assert {p.name: p.remaining for p in read_pin_status(state)}["auth"] == 0
    (state / "card.personalised").unlink()
    sql("DELETE FROM pins WHERE name = 'auth'")(state)
    with pytest.raises(StateError, match="PIN auth is missing"):
        open_card("default", state)
    assert not (state / "card.personalised").exists()
