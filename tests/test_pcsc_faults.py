"""Faults as a real PC/SC client sees them: `mynacard serve --fault PLAN` through pcscd."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from conftest import ServeCard
from pcsc import wait_for_card

pytestmark = pytest.mark.pcsc

SELECT_JPKI = bytes.fromhex("00A4040C0AD392F000260100000001")
SELECT_TOKEN = bytes.fromhex("00A4020C020006")


def plan(tmp_path: Path, text: str) -> tuple[str, str]:
    path = tmp_path / "plan.toml"
    path.write_text(text)
    return ("--fault", str(path))


def connect(name: str):  # type: ignore[no-untyped-def]
    from smartcard.System import readers

    connection = next(r for r in readers() if str(r) == name).createConnection()
    connection.connect()
    return connection


def transmit(connection, capdu: bytes) -> bytes:  # type: ignore[no-untyped-def]
    data, sw1, sw2 = connection.transmit(list(capdu))
    return bytes([*data, sw1, sw2])


def test_card_removed_in_the_middle_of_a_command(serve: ServeCard, tmp_path: Path) -> None:
    from smartcard.Exceptions import CardConnectionException

    args = plan(tmp_path, '[[fault]]\nkind = "remove"\nins = ["B0"]\n')
    with serve("default", reader=0, extra_args=args) as name:
        connection = connect(name)
        assert transmit(connection, SELECT_JPKI) == b"\x90\x00"
        with pytest.raises(CardConnectionException):
            transmit(connection, bytes.fromhex("00B0000010"))
        assert wait_for_card(name, present=False, timeout=2)  # pcscd sees the reader empty
        assert wait_for_card(name, present=True, timeout=5)  # then the card is back
        for _ in range(3):  # pcscd may still be powering the returned card up
            try:
                assert transmit(connect(name), SELECT_JPKI) == b"\x90\x00"
                break
            except CardConnectionException:
                time.sleep(0.2)
        else:
            pytest.fail("the card did not come back")


def test_wrong_le_is_retried_by_the_client(serve: ServeCard, tmp_path: Path) -> None:
    args = plan(tmp_path, '[[fault]]\nkind = "wrong-le"\nins = ["B0"]\n')
    with serve("default", reader=0, extra_args=args) as name:
        connection = connect(name)
        for command in (SELECT_JPKI, SELECT_TOKEN):
            assert transmit(connection, command) == b"\x90\x00"
        assert transmit(connection, bytes.fromhex("00B0000000")) == b"\x6c\xa0"
        answer = transmit(connection, bytes.fromhex("00B00000A0"))
        assert len(answer) == 162 and answer.endswith(b"\x90\x00")


def test_opensc_reads_certificates_under_t0_chaining(serve: ServeCard, tmp_path: Path) -> None:
    args = plan(tmp_path, '[[fault]]\nkind = "chain"\n')
    with serve("default", reader=0, extra_args=args):
        listing = subprocess.run(
            ["pkcs15-tool", "--reader", "0", "--read-certificate", "01"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    assert "-----BEGIN CERTIFICATE-----" in listing.stdout


def test_bad_plan_is_one_line(tmp_path: Path) -> None:
    import sys

    path = tmp_path / "plan.toml"
    path.write_text('[[fault]]\nkind = "melt"\n')
    result = subprocess.run(
        [sys.executable, "-m", "mynacard", "serve", "--fault", str(path), "--state",
         str(tmp_path / "s")],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "fault[0].kind: expected 'delay', 'wrong-le'" in result.stderr
