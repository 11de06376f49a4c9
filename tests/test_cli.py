"""The `mynacard` command line, run as `python -m emulator` subprocesses."""

from __future__ import annotations

import json
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pcsc import REPO_ROOT

from emulator import open_card
from emulator.personalize.profile import (
    PIN_NAMES,
    load_profile,
    profile_as_json,
    shipped_profile_names,
)

SELECT_JPKI = bytes.fromhex("00A4040C0AD392F000260100000001")
SELECT_AUTH_PIN = bytes.fromhex("00A4020C020018")


def mynacard(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "emulator", *map(str, args)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=REPO_ROOT,
        timeout=60,
    )


def assert_user_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result
    assert result.stderr.startswith("mynacard: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr


def wrong_verifies(state: Path, count: int) -> None:
    with open_card("default", state) as card:
        card.power_on()
        assert card.transmit(SELECT_JPKI) == b"\x90\x00"
        assert card.transmit(SELECT_AUTH_PIN) == b"\x90\x00"
        for _ in range(count):
            assert card.transmit(b"\x00\x20\x00\x80\x04" + b"0000")[0] == 0x63


def test_profile_show_json_round_trips_japanese() -> None:
    result = mynacard("profile", "show", "default", "--json")
    assert result.returncode == 0, result.stderr
    assert any(ord(c) > 0x7F for c in result.stdout)  # ensure_ascii=False: UTF-8, not \\u escapes
    shown = json.loads(result.stdout)
    assert shown == json.loads(json.dumps(profile_as_json(load_profile("default"))))
    assert set(shown["pins"]) == set(PIN_NAMES)


def test_profile_show_human() -> None:
    profile = load_profile("default")
    result = mynacard("profile", "show", "default")
    assert result.returncode == 0, result.stderr
    assert profile.holder.name in result.stdout
    assert profile.atr.hex(" ").upper() in result.stdout


def test_profile_list() -> None:
    result = mynacard("profile", "list")
    assert result.returncode == 0, result.stderr
    assert "default" in result.stdout.split()


def test_profile_new(tmp_path: Path) -> None:
    path = tmp_path / "alice.toml"
    result = mynacard("profile", "new", path, "--seed", "7")
    assert result.returncode == 0, result.stderr
    assert path.exists()
    assert mynacard("profile", "show", path).returncode == 0


@pytest.mark.parametrize("name", shipped_profile_names())
def test_shipped_profile_header_command_recreates_it(tmp_path: Path, name: str) -> None:
    shipped = REPO_ROOT / "profiles" / f"{name}.toml"
    header = shipped.read_text(encoding="utf-8").split("# Made by", 1)[1].split("\n#\n", 1)[0]
    command = " ".join(line.lstrip("#").strip().rstrip("\\") for line in header.splitlines()[1:])
    argv = shlex.split(command)
    assert argv[:3] == ["mynacard", "profile", "new"]
    (tmp_path / "profiles").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "emulator", *argv[1:]],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "profiles" / f"{name}.toml").read_bytes() == shipped.read_bytes()


def test_status_and_reset_pin(tmp_path: Path) -> None:
    state = tmp_path / "state"
    wrong_verifies(state, 2)
    result = mynacard("status", "--state", state, "--json")
    assert result.returncode == 0, result.stderr
    auth = next(p for p in json.loads(result.stdout) if p["name"] == "auth")
    assert auth["remaining"] == auth["max_tries"] - 2
    assert auth["blocked"] is False

    text = mynacard("status", "--state", state).stdout
    assert re.search(rf"^auth\s+{auth['remaining']}/{auth['max_tries']}\s+no$", text, re.M), text

    result = mynacard("reset-pin", "--state", state, "auth")
    assert result.returncode == 0, result.stderr
    shown = json.loads(mynacard("status", "--state", state, "--json").stdout)
    auth = next(p for p in shown if p["name"] == "auth")
    assert auth["remaining"] == auth["max_tries"]


def test_blocked_pin_is_shown_and_reset(tmp_path: Path) -> None:
    state = tmp_path / "state"
    wrong_verifies(state, 3)
    shown = json.loads(mynacard("status", "--state", state, "--json").stdout)
    assert next(p for p in shown if p["name"] == "auth")["blocked"] is True
    assert mynacard("reset-pin", "--state", state, "auth", "--value", "4321").returncode == 0
    with open_card("default", state) as card:
        card.power_on()
        card.transmit(SELECT_JPKI)
        card.transmit(SELECT_AUTH_PIN)
        assert card.transmit(b"\x00\x20\x00\x80\x04" + b"4321") == b"\x90\x00"


def test_reset_pin_errors(tmp_path: Path) -> None:
    state = tmp_path / "state"
    wrong_verifies(state, 0)
    assert_user_error(mynacard("reset-pin", "--state", state, "nosuchpin"), "nosuchpin")
    with open_card("default", state):  # a live card holds the state
        assert_user_error(mynacard("reset-pin", "--state", state, "auth"))


def test_status_without_state(tmp_path: Path) -> None:
    assert_user_error(mynacard("status", "--state", tmp_path / "nothing"))


def test_damaged_state_is_a_clear_error(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "card.sqlite").write_bytes(bytes(range(256)) * 32)  # not a database
    vpcd = ("--vpcd", "127.0.0.1:9")
    for command in (("status",), ("reset-pin", "auth"), ("freearea", "list"), ("serve", *vpcd)):
        result = mynacard(*command, "--state", state)
        assert_user_error(result, "is not a usable card state")
    a_file = tmp_path / "a-file"
    a_file.touch()
    assert_user_error(mynacard("serve", "--state", a_file, *vpcd), "as a state directory")


def test_bad_profile_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    assert_user_error(mynacard("profile", "show", missing))
    assert_user_error(mynacard("serve", "--profile", missing, "--state", tmp_path / "s"))


def test_broken_profile_names_field(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("this is [not a profile\n", encoding="utf-8")
    assert_user_error(mynacard("profile", "show", broken))


@pytest.mark.parametrize("address", ["nonsense", "host:", ":35963", "127.0.0.1:99999"])
def test_bad_vpcd_address(tmp_path: Path, address: str) -> None:
    assert_user_error(mynacard("serve", "--vpcd", address, "--state", tmp_path), "HOST:PORT")


def test_bad_reader_number(tmp_path: Path) -> None:
    assert_user_error(mynacard("serve", "--reader", "-1", "--state", tmp_path), "--reader")


def test_serve_without_pcscd_says_how_to_start_it(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a local port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "emulator",
            "serve",
            "--state",
            str(tmp_path / "state"),
            "--vpcd",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        assert proc.stderr is not None
        assert select.select([proc.stderr], [], [], 30)[0], "no message on stderr"
        first = proc.stderr.readline()
        time.sleep(0.5)  # a few more refused attempts
        proc.send_signal(signal.SIGTERM)
        out, rest = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert first.startswith(f"mynacard: cannot reach vpcd at 127.0.0.1:{port} (connection refused)")
    assert "pcscd --foreground" in first
    assert "cannot reach" not in rest  # one message, then quiet retries
    assert "Traceback" not in rest
    assert proc.returncode == 0
    assert out.startswith("serving profile 'default'")
