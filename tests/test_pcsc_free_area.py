"""住基AP, 共通カードAP and the free area through the real stack: pyscard over pcscd + vpcd
talking to `mynacard serve`, including a taxi ticket counter that survives `kill -9`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from free_area_checks import (
    TAXI_AID,
    TEST_AID,
    TEST_AREA,
    app_key,
    app_spec,
    counter_step,
    enter_building,
    external_authenticate,
    library_log_visit,
    library_patron,
    read_records,
    taxi_grant,
    taxi_ride,
    tickets,
)
from juki_common_checks import (
    COMMON_AID,
    JUKI_AID,
    apdu,
    change_pin,
    internal_authenticate,
    ok,
    read_card_info,
    read_key_reference,
    retries,
    select,
    select_ef,
    sw,
    verify,
)
from pcsc import REPO_ROOT, wait_for_card

from mynacard.personalize.free_area import RsaKeySpec
from mynacard.personalize.profile import Profile, load_profile

pytestmark = pytest.mark.pcsc

ServeCard = Callable[..., AbstractContextManager[str]]


class Connection:
    """A pyscard connection: `send` takes C-APDU bytes and returns data + SW."""

    def __init__(self, reader_name: str) -> None:
        from smartcard.System import readers

        (match,) = [r for r in readers() if str(r) == reader_name]
        self._conn = match.createConnection()
        self._conn.connect()

    def send(self, command: bytes) -> bytes:
        data, sw1, sw2 = self._conn.transmit(list(command))
        return bytes(data) + bytes((sw1, sw2))

    def close(self) -> None:
        self._conn.disconnect()
        self._conn.release()


@contextmanager
def connected(reader: str) -> Iterator[Callable[[bytes], bytes]]:
    conn = Connection(reader)
    try:
        yield conn.send
    finally:
        conn.close()


def test_juki_and_common_objects(serve: ServeCard) -> None:
    profile = load_profile("default")
    assert profile.common_auth_key is not None
    with serve("default") as reader, connected(reader) as send:
        info = read_card_info(send)
        assert (info.serial, info.municipality_code, info.expiry) == (
            profile.card_serial,
            profile.municipality_code,
            profile.card_expiry,
        )
        assert read_key_reference(send, JUKI_AID) == read_key_reference(send, COMMON_AID)
        ok(select(send, COMMON_AID))
        internal_authenticate(send, profile.common_auth_key.public_key())
        ok(select_ef(send, 0x0019))
        internal_authenticate(send, profile.common_auth_key.public_key(), p2=0x80)
        assert sw(send(bytes.fromhex("00B2020C00"))) == "6A83"
        assert sw(send(bytes.fromhex("00B0990000"))) == "6981"  # the key is not readable
        # separate 4-digit PINs, CHANGE KEY after VERIFY
        assert retries(send, JUKI_AID) == "63C3"
        assert sw(verify(send, "0000")) == "63C2"
        assert sw(send(apdu("00200080", b"1" * 17))) == "6700"
        assert retries(send, COMMON_AID) == "63C3"
        assert sw(send(apdu("80320080", b"5678"))) == "6982"
        assert change_pin(send, COMMON_AID, profile.pins["common"], "567") == "6A80"
        assert change_pin(send, COMMON_AID, profile.pins["common"], "5678") == "9000"
        assert sw(verify(send, "5678")) == "9000"
        assert retries(send, JUKI_AID) == "63C2"


def test_library_card(serve: ServeCard) -> None:
    profile = load_profile("library-card")
    key = app_key(profile, "library", 1)
    with serve("library-card") as reader, connected(reader) as send:
        patron = library_patron(send)
        assert patron[0x01] == profile.municipality_code.encode()
        assert patron[0x02].isdigit() and len(patron[0x02]) == 10
        assert sw(send(apdu("00E20010", b"no key"))) == "6982"
        assert library_log_visit(send, key, b"20250701 BR01") == "9000"
        assert read_records(send, 2) == [b"20250701 BR01"]


def test_building_entry(serve: ServeCard) -> None:
    profile = load_profile("building-entry")
    (key,) = [f for f in app_spec(profile, "entry").files if isinstance(f, RsaKeySpec)]
    with serve("building-entry") as reader, connected(reader) as send:
        employee = enter_building(send, key.key.public_key())
        assert employee[0x02] == profile.card_expiry.strftime("%Y%m%d").encode()
        assert sw(send(bytes.fromhex("00B0820000"))) == "6981"


@contextmanager
def killable_server(profile: str, state: Path, reader: int = 0) -> Iterator[str]:
    """`mynacard serve` that the test ends with SIGKILL (no clean shutdown)."""
    name = f"Virtual PCD 00 {reader:02d}"
    command = [sys.executable, "-m", "mynacard", "serve", "--profile", profile]
    proc = subprocess.Popen(
        [*command, "--state", str(state), "--reader", str(reader)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO_ROOT,
    )
    try:
        assert wait_for_card(name, present=True, timeout=10.0), "the card did not appear"
        yield name
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert wait_for_card(name, present=False, timeout=10.0)


def test_taxi_rides_survive_kill_9(serve: ServeCard, tmp_path: Path) -> None:
    profile = load_profile("taxi-tickets")
    meter = app_key(profile, "taxi", 1)
    pin = app_spec(profile, "taxi").pins[0].value
    state = tmp_path / "state"
    rides = []
    for n in range(3):
        with killable_server("taxi-tickets", state) as reader, connected(reader) as send:
            assert taxi_grant(send)[0x01] == profile.municipality_code.encode()
            assert tickets(send) == 24 - n
            rides.append(taxi_ride(send, meter, 1800 + n, f"2025070{n + 1}0800"))
            assert rides[-1].tickets_left == 23 - n
    with serve("taxi-tickets", state_dir=state) as reader, connected(reader) as send:
        ok(select(send, TAXI_AID))
        assert tickets(send) == 21
        assert sw(send(bytes.fromhex("00B2011C00"))) == "6982"  # the log needs the PIN
        ok(select_ef(send, 0x0011))
        ok(verify(send, pin))
        assert read_records(send, 3) == [ride.log_entry for ride in rides]
        # down to zero, then refused without change
        assert external_authenticate(send, 1, meter) == "9000"
        assert ok(counter_step(send, 0x30, 21)) == bytes(4)
        assert sw(counter_step(send, 0x30, 1)) == "6985"
        assert tickets(send) == 0


def test_bad_input_gets_precise_status_words(serve: ServeCard, tmp_path: Path) -> None:
    shipped = (REPO_ROOT / "profiles" / "default.toml").read_text(encoding="utf-8")
    profile_path = tmp_path / "bench.toml"
    profile_path.write_text(shipped + TEST_AREA, encoding="utf-8")
    with serve(profile_path) as reader, connected(reader) as send:
        ok(select(send, TEST_AID))
        before = ok(send(bytes.fromhex("00B0810000")))
        cases = [
            ("00B0812800", "6B00"),  # READ BINARY offset past the end
            ("00B0812400", "FFFFFFFF9000"),  # Le past the end: the rest
            ("00D6812803AABBCC", "6B00"),  # UPDATE BINARY offset past the end
            ("00D6812603AABBCC", "6A84"),  # runs past the end
            ("00B2051400", "6A83"),  # no record 5
            ("00DC051401AA", "6A83"),
            ("00DC011409" + "00" * 9, "6700"),  # longer than the records
            ("00B0840008", "6982"),  # EF 0004: PIN 0011 or key 1
            ("00D6840001AA", "6982"),
            ("00300114010100", "6981"),  # DECREASE on a record EF
            ("00300118010100", "6A86"),  # P2 mode 000: no record pointer
            ("0030011C0300000100", "6700"),
            ("0030011C010B00", "6985"),  # 10 - 11 < 0
            ("00A4020C020011", "9000"),
            ("0020008004" + b"1234".hex(), "63C1"),  # wrong format costs a try
            ("0020008000", "6700"),
            ("00200080", "63C1"),
        ]
        for command, expected in cases:
            answer = send(bytes.fromhex(command)).hex().upper()
            assert answer == expected, command
        assert ok(send(bytes.fromhex("00B0810000"))) == before  # the refused writes changed nothing
        for _ in range(3):
            ok(send(apdu("00E20010", b"\x01")))
        assert sw(send(apdu("00E20010", b"\x02"))) == "6A84"  # 4 of 4 records
        assert read_records(send, 2) == [b"\x01\x02", b"\x01", b"\x01", b"\x01"]
        assert ok(send(bytes.fromhex("00B2011C00"))) == b"\x00\x0a"  # unchanged counter


def test_opensc_still_sees_a_jpki_card(serve: ServeCard) -> None:
    profile: Profile = load_profile("taxi-tickets")
    assert profile.free_area.apps
    with serve("taxi-tickets"):
        result = subprocess.run(
            ["opensc-tool", "--reader", "0", "--name"], capture_output=True, text=True, timeout=60
        )
    assert result.stdout.strip() == "jpki", result.stdout + result.stderr
