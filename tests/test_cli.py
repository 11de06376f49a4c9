"""The `mynacard` command line, run as `python -m mynacard` subprocesses."""

from __future__ import annotations

import base64
import io
import json
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import PIL
import pytest
from pcsc import REPO_ROOT
from PIL import Image

from mynacard import open_card
from mynacard.personalize.profile import (
    PIN_NAMES,
    load_profile,
    profile_as_json,
    shipped_profile_names,
)
from mynacard.vpcd import configured_readers

SELECT_JPKI = bytes.fromhex("00A4040C0AD392F000260100000001")
SELECT_AUTH_PIN = bytes.fromhex("00A4020C020018")


def mynacard(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mynacard", *map(str, args)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=REPO_ROOT,
        timeout=60,
    )


def assert_user_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result
    assert result.stderr.startswith("mynacard: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr  # one line
    assert "Traceback" not in result.stderr and "Errno" not in result.stderr
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
        [sys.executable, "-m", "mynacard", *argv[1:]],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    remade = (tmp_path / "profiles" / f"{name}.toml").read_bytes()
    drew = re.search(r"^# Pillow (\S+) drew the images", shipped.read_text(encoding="utf-8"), re.M)
    assert drew is not None
    if drew[1] == PIL.__version__:
        assert remade == shipped.read_bytes()
    else:  # another Pillow: the same profile, the images the same pixels in other bytes
        assert_same_profile(tomllib.loads(remade.decode()), tomllib.loads(shipped.read_text()))


IMAGE_FIELDS = ("name_image", "address_image", "photo", "security_code_image", "my_number_image")


def decoded(image: str) -> tuple[str | None, str, tuple[int, int], bytes]:
    with Image.open(io.BytesIO(base64.b64decode(image))) as opened:
        return opened.format, opened.mode, opened.size, opened.tobytes()


def assert_same_profile(remade: dict[str, Any], shipped: dict[str, Any]) -> None:
    """Equal but for the bytes of the images, whose decoded pixels must be equal."""
    remade_visual, shipped_visual = remade.pop("visual_ap", {}), shipped.pop("visual_ap", {})
    assert remade == shipped
    assert remade_visual.keys() == shipped_visual.keys()
    for key, value in shipped_visual.items():
        if key in IMAGE_FIELDS:
            assert decoded(remade_visual[key]) == decoded(value), key
        else:
            assert remade_visual[key] == value, key


def test_profile_comparison_sees_pixels_not_bytes() -> None:
    """The check used when another Pillow re-creates a profile: re-encoded images pass,
    a changed pixel or field fails."""
    shipped = (REPO_ROOT / "profiles" / "default.toml").read_text(encoding="utf-8")
    with Image.open(
        io.BytesIO(base64.b64decode(tomllib.loads(shipped)["visual_ap"]["name_image"]))
    ) as image:
        reencoded, changed = io.BytesIO(), io.BytesIO()
        image.save(reencoded, "PNG", compress_level=1)
        image.putpixel((0, 0), 1 - image.getpixel((0, 0)))
        image.save(changed, "PNG")
    for data, same in ((reencoded.getvalue(), True), (changed.getvalue(), False)):
        remade = tomllib.loads(shipped)
        assert base64.b64decode(remade["visual_ap"]["name_image"]) != data
        remade["visual_ap"]["name_image"] = base64.b64encode(data).decode()
        if same:
            assert_same_profile(remade, tomllib.loads(shipped))
        else:
            with pytest.raises(AssertionError):
                assert_same_profile(remade, tomllib.loads(shipped))
    remade = tomllib.loads(shipped)
    remade["holder"]["name"] += "　"
    with pytest.raises(AssertionError):
        assert_same_profile(remade, tomllib.loads(shipped))


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
    state.mkdir(mode=0o700)
    (state / "card.sqlite").write_bytes(bytes(range(256)) * 32)  # not a database
    (state / "card.sqlite").chmod(0o600)
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


def test_reader_outside_the_configured_slots(tmp_path: Path) -> None:
    assert_user_error(
        mynacard("serve", "--reader", "7", "--state", tmp_path), "--reader 7", "readers 0, 1"
    )


def test_configured_readers_follow_reader_conf(tmp_path: Path) -> None:
    assert configured_readers(tmp_path) == [0, 1]  # no vpcd configuration: the defaults
    (tmp_path / "vpcd").write_text("DEVICENAME /dev/null:0x8C7B\nDEVICENAME /dev/null:0x8C7D\n")
    (tmp_path / "other").write_text("DEVICENAME /dev/ttyS0\n")
    assert configured_readers(tmp_path) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["replay", "{binary}"], ["binary.apdu: not a transcript (not UTF-8"]),
        (["replay", "{latin1}"], ["latin1.apdu: not a transcript (not UTF-8"]),
        (["replay", "{tmp}/missing.apdu"], ["missing.apdu: cannot read: No such file"]),
        (["serve", "--state", "{binary}"], ["as a state directory: it is a file"]),
        (["status", "--state", "{binary}"], ["binary.apdu"]),
        (["conformance", "--report", "{binary}/out"], ["--report", "Not a directory"]),
        (["conformance", "--pin", "puk=1234"], ["no PIN named 'puk'", "auth, birth"]),
        (["replay", "{latin1}", "--pin", "puk=1"], ["latin1.apdu"]),
        (["conformance", "--profile", "nope"], ["no shipped profile named 'nope'", "default"]),
    ],
)
def test_error_paths_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], words: list[str]
) -> None:
    (tmp_path / "binary.apdu").write_bytes(bytes(range(256)))
    (tmp_path / "latin1.apdu").write_bytes("# ユーザー\n".encode("shift_jis"))
    paths = {
        "binary": tmp_path / "binary.apdu",
        "latin1": tmp_path / "latin1.apdu",
        "tmp": tmp_path,
    }
    result = mynacard(*(arg.format(**paths) for arg in args))
    assert_user_error(result, *words)
    assert not (tmp_path / "binary.apdu" / "out").exists()


def test_serve_without_pcscd_says_how_to_start_it(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a local port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mynacard",
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


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_pcsc_without_pyscard_says_which_extra() -> None:
    result = python(
        "import sys; sys.modules['smartcard'] = None\n"
        "from mynacard.cli import main\n"
        "sys.exit(main(['conformance', '--target', 'pcsc', '--max-examples', '1']))"
    )
    assert_user_error(result, "install mynacard[pcsc]")


def test_imports_stay_light() -> None:
    """The pytest plugin and the bench load nothing until asked; a card loads no Pillow."""
    result = python(
        "import sys, tempfile\n"
        "import mynacard.conformance.plugin\n"
        "assert 'hypothesis' not in sys.modules and 'mynacard.card' not in sys.modules\n"
        "import mynacard.conformance.runner\n"
        "assert 'mynacard.card' not in sys.modules\n"
        "from mynacard import open_card\n"
        "open_card('default', tempfile.mkdtemp()).close()\n"
        "assert 'PIL' not in sys.modules\n"
    )
    assert result.returncode == 0, result.stderr


def test_internal_errors_exit_3_with_a_traceback() -> None:
    result = python(
        "import sys\n"
        "from mynacard import cli\n"
        "def broken(args): raise ZeroDivisionError('planted')\n"
        "cli.cmd_profile_list = broken\n"
        "sys.exit(cli.main(['profile', 'list']))"
    )
    assert result.returncode == 3
    assert "Traceback" in result.stderr and "internal error" in result.stderr


@pytest.mark.parametrize(
    ("quirk", "words"),
    [
        ("nope=1", ["--quirk: nope: expected one of the fields blocked_sw, reselect_clears_state"]),
        ("blocked_sw=0x6A82", ["--quirk: blocked_sw: expected 0x6984 or 0x6983, got 0x6A82"]),
        ("t0_chaining=maybe", ["--quirk: t0_chaining: expected true or false, got 'maybe'"]),
        ("filler", ["expected NAME=VALUE"]),
    ],
)
def test_bad_quirk_is_one_line(tmp_path: Path, quirk: str, words: list[str]) -> None:
    result = mynacard("serve", "--quirk", quirk, "--state", tmp_path / "s")
    assert result.returncode == 2 and all(word in result.stderr for word in words), result


def test_quirks_at_run_time_change_the_card() -> None:
    from mynacard.personalize.profile import load_profile, with_quirks

    profile = with_quirks(
        load_profile("default"),
        [("blocked_sw", "0x6983"), ("t0_chaining", "true"), ("verified_query_sw", "0x9000")],
    )
    quirks = profile.quirks
    assert quirks.blocked_sw == 0x6983 and quirks.t0_chaining
    assert quirks.verified_query_sw == 0x9000
    assert with_quirks(profile, [("verified_query_sw", "none")]).quirks.verified_query_sw is None
