"""APDU traces: JSON lines and scriptor scripts, secrets masked unless asked for."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ServeCard
from pcsc import REPO_ROOT
from test_vpcd import SELECT_JPKI, FakeVpcd, vpcd  # noqa: F401  (the fixture)

from mynacard import open_card, trace
from mynacard.cli import main
from mynacard.trace import Trace

SELECT_AUTH_PIN = bytes.fromhex("00A4020C020018")
VERIFY_1234 = bytes.fromhex("002000800431323334")


def traced(tmp_path: Path, fmt: str = "json", secrets: bool = False) -> str:
    out = io.StringIO()
    with Trace(open_card("default", tmp_path), out, reader="r0", fmt=fmt, secrets=secrets) as card:
        card.power_on()
        for command in (SELECT_JPKI, SELECT_AUTH_PIN, VERIFY_1234):
            assert card.transmit(command) == b"\x90\x00"
        card.reset()
    return out.getvalue()


def test_json_lines_with_pins_masked(tmp_path: Path) -> None:
    lines = [json.loads(line) for line in traced(tmp_path).splitlines()]
    assert [line.get("event") for line in lines] == ["power on", None, None, None, "reset"]
    verify = lines[3]
    assert verify["command"] == "00 20 00 80 04 ** ** ** **" and verify["response"] == "90 00"
    assert verify["reader"] == "r0" and isinstance(verify["us"], int) and verify["us"] >= 0
    assert lines[0]["atr"] == "3B E0 00 FF 81 31 FE 45 14"
    assert "31 32 33 34" not in traced(tmp_path / "again")


def test_secrets_only_when_asked(tmp_path: Path) -> None:
    assert "00 20 00 80 04 31 32 33 34" in traced(tmp_path, secrets=True)


def test_scriptor_script(tmp_path: Path) -> None:
    lines = traced(tmp_path, fmt="scriptor").splitlines()
    assert lines[0] == "# power on"
    assert lines[1] == "00 A4 04 0C 0A D3 92 F0 00 26 01 00 00 00 01"
    assert lines[2].startswith("# > 90 00")
    assert lines[5] == "# 00 20 00 80 04 ** ** ** **  (masked)"
    assert lines[-1] == "reset"


def test_serve_writes_a_private_trace(vpcd: FakeVpcd, tmp_path: Path) -> None:  # noqa: F811
    trace = tmp_path / "trace.jsonl"
    address = f"127.0.0.1:{vpcd.port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mynacard", "serve", "--state", str(tmp_path / "state"),
         "--vpcd", address, "--trace", str(trace)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    try:
        conn = vpcd.accept_from(proc)
        conn.control(1)
        assert conn.apdu(SELECT_JPKI) == b"\x90\x00"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert os.stat(trace).st_mode & 0o777 == 0o600
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    assert records[-1]["command"] == SELECT_JPKI.hex(" ").upper()
    assert records[-1]["reader"] == address


def test_lines_wait_until_a_power_event_or_a_full_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trace, "FLUSH_INTERVAL", 3600.0)  # only a full buffer wakes the thread
    out = io.StringIO()
    with Trace(open_card("default", tmp_path), out) as card:
        card.power_on()
        assert out.getvalue().count("\n") == 1  # a power event is written at once
        card.transmit(SELECT_JPKI)
        assert out.getvalue().count("\n") == 1  # an exchange waits
        card.power_off()
        assert out.getvalue().count("\n") == 3  # ... until the next power event
        card.power_on()
        for _ in range(trace.BUFFER_LINES - 1):
            card.transmit(SELECT_JPKI)
        time.sleep(10 * trace.CHECK_INTERVAL)  # the thread looked, and left them waiting
        assert out.getvalue().count("\n") == 4
        card.transmit(SELECT_JPKI)
        for _ in range(400):  # the thread looks every 5 ms; a loaded machine is slower
            if out.getvalue().count("\n") > 4:
                break
            time.sleep(trace.CHECK_INTERVAL)
        assert out.getvalue().count("\n") == 4 + trace.BUFFER_LINES  # a full buffer is written
        card.transmit(SELECT_AUTH_PIN)
    assert json.loads(out.getvalue().splitlines()[-1])["command"] == "00 A4 02 0C 02 00 18"


def test_tail_follows_and_sigkill_keeps_what_it_showed(vpcd: FakeVpcd, tmp_path: Path) -> None:  # noqa: F811
    """Without a power event or close, the lines reach the file within FLUSH_INTERVAL (a
    thread writes them), so `tail -f` follows and SIGKILL cannot take them back."""
    path = tmp_path / "trace.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mynacard", "serve", "--state", str(tmp_path / "state"),
         "--vpcd", f"127.0.0.1:{vpcd.port}", "--trace", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    try:
        conn = vpcd.accept_from(proc)
        conn.control(1)  # power on: written at once
        for command in (SELECT_JPKI, SELECT_AUTH_PIN):
            assert conn.apdu(command) == b"\x90\x00"
        for _ in range(200):  # the flushing thread runs every 50 ms; a loaded machine is slower
            if SELECT_AUTH_PIN.hex(" ").upper() in path.read_text():
                break
            time.sleep(0.05)
        proc.kill()
        proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [record.get("event") for record in records][-3:] == ["power on", None, None]
    assert records[-1]["command"] == SELECT_AUTH_PIN.hex(" ").upper()


# -- traces and scripts replayed (`mynacard replay`) ---------------------------------------

GET_CHALLENGE = bytes.fromhex("0084000008")
SELECT_TOKEN = bytes.fromhex("00A4020C020006")
READ_TOKEN = bytes.fromhex("00B0000010")


def write_trace(path: Path, fmt: str = "json", secrets: bool = True) -> None:
    with (
        path.open("w", encoding="utf-8") as out,
        Trace(open_card("default", path.parent / "traced"), out, fmt=fmt, secrets=secrets) as card,
    ):  # fmt: skip
        card.power_on()
        for command in (SELECT_JPKI, SELECT_AUTH_PIN, VERIFY_1234, GET_CHALLENGE):
            card.transmit(command)
        card.reset()
        for command in (SELECT_JPKI, SELECT_TOKEN, READ_TOKEN):
            card.transmit(command)


def replay(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["replay", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_a_trace_replays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "trace.jsonl"
    write_trace(trace)
    status, out, _ = replay(capsys, str(trace), "--target", "emulator")
    assert status == 0 and "all 9 exchanges matched on emulator (default)" in out
    status, out, _ = replay(capsys, str(trace), "--convert")
    lines = out.splitlines()
    assert status == 0 and lines[0] == "# mynacard transcript 1"
    assert lines[2] == "POWER -> 3BE000FF8131FE4514"
    assert lines[5] == "002000800431323334 -> 9000"
    assert lines[6] == "0084000008 -> [8] 9000"  # a challenge differs on every card
    assert lines[7] == "RESET -> 3BE000FF8131FE4514"


def test_a_replayed_trace_that_differs_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "trace.jsonl"
    write_trace(trace)
    status, out, _ = replay(capsys, str(trace), "--profile", "unified-pin")
    assert status == 1
    assert "exchange 4 of 9: expected 9000, got 63C2" in out  # another card's PIN


def test_masked_traces_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for fmt, where in (("json", "line 4"), ("scriptor", "line 6")):
        trace = tmp_path / f"trace.{fmt}"
        write_trace(trace, fmt=fmt, secrets=False)
        status, out, err = replay(capsys, str(trace))
        assert status == 2 and out == "" and err.count("\n") == 1
        assert f"{trace}: {where}:" in err and "needs a trace made with --trace-secrets" in err


def test_a_trace_of_several_readers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "trace.jsonl"
    record = {"reader": "A", "command": "00A4040C0AD392F000260100000001", "response": "9000"}
    trace.write_text("\n".join(json.dumps({**record, "reader": r}) for r in "AB") + "\n")
    status, _, err = replay(capsys, str(trace))
    assert status == 2 and "several readers; choose one: A, B" in err
    status, out, _ = replay(capsys, str(trace), "--reader", "B")
    assert status == 0 and "all 1 exchanges matched" in out


def test_a_scriptor_script_prints_the_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "script.txt"
    write_trace(script, fmt="scriptor")  # the scriptor trace of a card is a script
    status, out, _ = replay(capsys, str(script))
    assert status == 0
    assert out.splitlines() == [
        *(f"> {SELECT_JPKI.hex(' ').upper()}", "< 90 00"),
        *(f"> {SELECT_AUTH_PIN.hex(' ').upper()}", "< 90 00"),
        *("> 00 20 00 80 04 31 32 33 34", "< 90 00"),
        *(f"> {GET_CHALLENGE.hex(' ').upper()}", out.splitlines()[7]),
        *("> reset", "< 3B E0 00 FF 81 31 FE 45 14"),
        *(f"> {SELECT_JPKI.hex(' ').upper()}", "< 90 00"),
        *(f"> {SELECT_TOKEN.hex(' ').upper()}", "< 90 00"),
        *(f"> {READ_TOKEN.hex(' ').upper()}", f"< {b'JPKIAPICCTOKEN2 '.hex(' ').upper()} 90 00"),
    ]  # fmt: skip
    assert re.fullmatch(r"< ([0-9A-F]{2} ){8}90 00", out.splitlines()[7])
    script.write_text("00A4040C0AD392F000260100000001\nselect it\n")
    status, out, err = replay(capsys, str(script))
    assert status == 2 and out == ""
    assert "line 2: expected a command in hex, 'reset' or 'exit', got 'select it'" in err


@pytest.mark.pcsc
def test_a_trace_through_pcscd_replays(
    serve: ServeCard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pcsc import ScardConnection

    trace = tmp_path / "trace.jsonl"
    args = ("--trace", str(trace), "--trace-secrets")
    with serve("default", state_dir=tmp_path / "traced", extra_args=args) as name:
        connection = ScardConnection(name)
        for command in (SELECT_JPKI, SELECT_AUTH_PIN, VERIFY_1234, GET_CHALLENGE):
            connection.transmit(command)
        connection.reset()
        for command in (SELECT_JPKI, SELECT_TOKEN, READ_TOKEN):
            connection.transmit(command)
        connection.close()
    with serve("default", state_dir=tmp_path / "replayed") as name:
        status, out, err = replay(
            capsys, str(trace), "--target", f"pcsc:{name}", "--profile", "default"
        )
        assert status == 0, out + err
        assert f"on pcsc:{name}" in out
        script = tmp_path / "script.txt"
        script.write_text(f"{SELECT_JPKI.hex()}\n{SELECT_TOKEN.hex()}\nreset\n# done\n")
        status, out, _ = replay(capsys, str(script), "--target", f"pcsc:{name}")
        assert status == 0
        assert out.splitlines()[-2:] == ["> reset", "< 3B E0 00 FF 81 31 FE 45 14"]


def test_a_command_never_answered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mynacard.faults import CardRemoved, Fault, stack_faults

    path = tmp_path / "trace.jsonl"
    notes: list[Trace] = []
    faulty = stack_faults(
        open_card("default", tmp_path / "state"), [Fault("remove", ins=frozenset({0xB0}))],
        seed=0, note=lambda event: notes[0].note(event),
    )  # fmt: skip
    with path.open("w") as out, Trace(faulty, out, secrets=True) as card:
        notes.append(card)
        card.power_on()
        assert card.transmit(SELECT_JPKI) == b"\x90\x00"
        with pytest.raises(CardRemoved):
            card.transmit(READ_TOKEN)
        card.power_off()
        card.power_on()
        assert card.transmit(SELECT_JPKI) == b"\x90\x00"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records[2]["command"] == READ_TOKEN.hex(" ").upper()
    assert records[2]["response"] is None and records[2]["events"] == ["fault remove"]
    status, out, _ = replay(capsys, str(path), "--convert")
    assert status == 0 and "00B0000010" not in out  # the unanswered command is left out
    status, out, _ = replay(capsys, str(path))
    assert status == 0 and "all 4 exchanges matched" in out


def test_a_pss_signature_is_replayed_by_its_length(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "trace.jsonl"
    sign_pss = bytes.fromhex("802A048020") + bytes(31) + b"\x01\x00"  # a 32-byte hash
    with (
        trace.open("w") as out,
        Trace(open_card("default", tmp_path / "s"), out, secrets=True) as card,
    ):
        card.transmit(SELECT_JPKI)
        card.transmit(bytes.fromhex("00A4020C020017"))  # the auth key, its PIN not verified
        assert card.transmit(sign_pss) == b"\x69\x82"
        for command in (SELECT_AUTH_PIN, VERIFY_1234, bytes.fromhex("00A4020C020017")):
            assert card.transmit(command) == b"\x90\x00"
        signature = card.transmit(sign_pss)
        assert len(signature) == 258 and signature[-2:] == b"\x90\x00"
    status, out, _ = replay(capsys, str(trace), "--convert")
    assert status == 0 and out.splitlines()[-1] == f"{sign_pss.hex().upper()} -> [256] 9000"
    status, out, _ = replay(capsys, str(trace))
    assert status == 0 and "all 7 exchanges matched" in out


@pytest.mark.parametrize("fmt", ["json", "scriptor"])
def test_a_fault_is_noted_on_its_own_exchange(tmp_path: Path, fmt: str) -> None:
    """A note from a fault layer goes with the exchange it hit, and only with it."""
    from mynacard.faults import Fault, stack_faults

    tracing: list[Trace] = []
    faulty = stack_faults(
        open_card("default", tmp_path), [Fault("truncate", ins=frozenset({0xB0}))],
        seed=0, note=lambda event: tracing[0].note(event),
    )  # fmt: skip
    out = io.StringIO()
    with Trace(faulty, out, fmt=fmt) as card:
        tracing.append(card)
        for command in (SELECT_JPKI, SELECT_TOKEN, READ_TOKEN, SELECT_TOKEN):
            card.transmit(command)
    lines = out.getvalue().splitlines()
    truncated = b"JPKIAPICCTOKEN2 \x90".hex(" ").upper()
    if fmt == "json":
        records = [json.loads(line) for line in lines]
        assert [r.get("events") for r in records] == [None, None, ["fault truncate"], None]
        assert records[2]["response"] == truncated
    else:
        assert lines.count("# fault truncate") == 1
        assert lines[4:6] == ["# fault truncate", READ_TOKEN.hex(" ").upper()]
        assert lines[6].startswith(f"# > {truncated}  (")
