"""APDU traces: JSON lines and scriptor scripts, secrets masked unless asked for."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from pcsc import REPO_ROOT
from test_vpcd import SELECT_JPKI, FakeVpcd, vpcd  # noqa: F401  (the fixture)

from mynacard import open_card
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
