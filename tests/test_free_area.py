"""The free storage area: the example applications and every command's status words on the card
in process and through pcscd (the `card` fixture); then durability across `kill -9`, profile
and CLI errors, and property tests that a refused command changes nothing."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cardtest import (
    CardProfile,
    InTheApplication,
    PcscCard,
    TestedCard,
    apdu,
    ok,
    select,
    select_ef,
    sw,
    tx,
)
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from free_area_checks import (
    ENTRY_AID,
    LIBRARY_AID,
    SIZE,
    TAXI_AID,
    TEST_AID,
    TEST_AREA,
    TEST_KEY,
    app_key,
    app_spec,
    cmac_of,
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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pcsc import REPO_ROOT

from mynacard import StateError, open_card
from mynacard.layers import CardInterface
from mynacard.personalize.free_area import RsaKeySpec, read_app, read_free_area
from mynacard.personalize.profile import PROFILES_DIR, Profile, ProfileError, load_profile
from mynacard.store import DB_NAME, read_pin_status

BENCH = CardProfile.of(append=TEST_AREA)  # the default card with the test application

# -- fixtures and helpers ----------------------------------------------------------------------


def fail(where: str, problem: str) -> Exception:
    return ProfileError(f"{where}: {problem}")


def with_free_area(profile: Profile, text: str) -> Profile:
    """`profile` with the [free_area] of a TOML text instead of its own."""
    spec = read_free_area(tomllib.loads(text).get("free_area"), fail)
    return dataclasses.replace(profile, free_area=spec)


@pytest.fixture(scope="module")
def default() -> Profile:
    return load_profile("default")


@pytest.fixture(scope="module")
def bench_profile(default: Profile) -> Profile:
    return with_free_area(default, TEST_AREA)


def snapshot(state_dir: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of the card state as committed (read through a second connection)."""
    conn = sqlite3.connect(state_dir / DB_NAME)
    try:
        tables = [
            name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in tables}
    finally:
        conn.close()


# -- the example profiles ----------------------------------------------------------------------


@pytest.mark.card_profile("building-entry")
def test_building_entry_by_internal_authenticate(card: TestedCard) -> None:
    profile = card.profile
    (key_spec,) = [f for f in app_spec(profile, "entry").files if isinstance(f, RsaKeySpec)]
    public = key_spec.key.public_key()
    employee = enter_building(card.transmit, public)
    assert (
        len(employee[0x01]) == 8
        and employee[0x02] == profile.card_expiry.strftime("%Y%m%d").encode()
    )
    signed = tx(card, "00A4020C020002", "0088008008" + "1122334455667788" + "00")
    assert len(signed) == 2 * 258 and signed.endswith("9000")  # P2 80: the current EF
    assert tx(card, "00B0000004") == "6981"  # the key is not readable
    assert tx(card, "00B0820004") == "6981"
    assert tx(card, "00B0820000") == "6981"
    assert tx(card, "00B2011400") == "6981"
    assert tx(card, "0088008108" + "1122334455667788" + "00") == "6986"  # SFI 1: no key
    assert tx(card, "0088008308" + "1122334455667788" + "00") == "6A82"
    # another key does not verify this card's answer
    assert profile.common_auth_key is not None
    with pytest.raises(InvalidSignature):
        enter_building(card.transmit, profile.common_auth_key.public_key())


@pytest.mark.backends("pcsc")
@pytest.mark.card_profile("taxi-tickets")
def test_opensc_still_sees_a_jpki_card(card: PcscCard) -> None:
    assert card.profile.free_area.apps
    result = subprocess.run(
        ["opensc-tool", "--reader", str(card.reader), "--name"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "jpki", result.stdout + result.stderr


@pytest.mark.fresh_card
@pytest.mark.card_profile("library-card")
def test_library_card_is_read_without_a_pin(card: TestedCard) -> None:
    profile = card.profile
    key = app_key(profile, "library", 1)
    patron = library_patron(card.transmit)
    assert patron[0x01] == profile.municipality_code.encode()
    assert len(patron[0x02]) == 10 and patron[0x02].isdigit()
    assert patron[0x03] == profile.card_expiry.strftime("%Y%m%d").encode()
    assert read_records(card.transmit, 2) == []
    assert tx(card, "00E2001004" + "20250101") == "6982"  # the log needs the library key
    assert sw(card.transmit(apdu("00E20010", b"no key"))) == "6982"
    visits = [f"2025010{n}-BR{n:02d}".encode().ljust(16, b" ") for n in range(1, 9)]
    for visit in visits:
        assert library_log_visit(card.transmit, key, visit) == "9000"
    assert library_log_visit(card.transmit, key, b"one too many") == "6A84"  # 8 records
    assert read_records(card.transmit, 2) == visits
    assert tx(card, "00DC011402" + "4142") == "9000"  # UPDATE RECORD 1 (key 1 open)
    assert read_records(card.transmit, 2)[0] == b"AB"
    card.reset()
    assert library_patron(card.transmit) == patron
    assert tx(card, "00DC011402" + "4142") == "6982"  # the key's access ended
    assert tx(card, "00E2001001" + "41") == "6982"
    card.reopen()  # durable
    library_patron(card.transmit)
    assert read_records(card.transmit, 2) == [b"AB", *visits[1:]]


@pytest.mark.fresh_card
@pytest.mark.card_profile("taxi-tickets")
def test_taxi_tickets_ride_by_ride(card: TestedCard) -> None:
    profile = card.profile
    meter, office = app_key(profile, "taxi", 1), app_key(profile, "taxi", 2)
    pin = app_spec(profile, "taxi").pins[0].value
    grant = taxi_grant(card.transmit)
    assert grant[0x01] == profile.municipality_code.encode()
    assert tickets(card.transmit) == 24
    assert sw(counter_step(card.transmit, 0x30, 1)) == "6982"  # no meter key
    rides = [taxi_ride(card.transmit, meter, 1500 + n, f"2025061{n}0930") for n in range(3)]
    assert [ride.tickets_left for ride in rides] == [23, 22, 21]
    assert tickets(card.transmit) == 21
    # the ride log is the holder's: it needs the application PIN
    assert tx(card, "00B2011C00") == "6982"
    assert tx(card, "00A4020C020011", "00200080") == "63C3"
    assert ok(card.transmit(apdu("00200080", pin.encode()))) == b""
    assert read_records(card.transmit, 3) == [ride.log_entry for ride in rides]
    # the meter key does not give tickets; the office key does, up to the maximum 48
    assert sw(counter_step(card.transmit, 0x32, 5)) == "6982"
    assert external_authenticate(card.transmit, 2, office) == "9000"
    assert ok(counter_step(card.transmit, 0x32, 27)) == (48).to_bytes(4, "big")
    assert sw(counter_step(card.transmit, 0x32, 1)) == "6985"
    assert tickets(card.transmit) == 48
    card.reopen()
    select(card.transmit, TAXI_AID)
    assert tickets(card.transmit) == 48


@pytest.mark.fresh_card
@pytest.mark.card_profile("taxi-tickets")
def test_taxi_counter_refuses_to_go_below_zero(card: TestedCard) -> None:
    meter = app_key(card.profile, "taxi", 1)
    select(card.transmit, TAXI_AID)
    assert external_authenticate(card.transmit, 1, meter) == "9000"
    assert ok(counter_step(card.transmit, 0x30, 24)) == bytes(4)
    before = snapshot(card.state_dir)
    assert sw(counter_step(card.transmit, 0x30, 1)) == "6985"
    assert snapshot(card.state_dir) == before
    assert tickets(card.transmit) == 0
    assert tx(card, "003001140200FF00") == "6985"
    assert tx(card, "0030011405000000000100") == "6700"  # wider than the counter
    assert tx(card, "00300114" + "00") == "6700"  # no amount
    assert tx(card, "00300214010100") == "6A83"  # only one counter
    assert tx(card, "00300014010100") == "6A83"
    assert tx(card, "003001150101") == "6A86"  # P2 mode other than 100
    assert tx(card, "00A4020C020001", "003001040101") == "6981"  # transparent
    assert tx(card, "00300114010100") == "6985"  # unchanged: 0


@pytest.mark.fresh_card
@pytest.mark.card_profile("taxi-tickets")
def test_external_authenticate_counter_blocks_and_persists(card: TestedCard) -> None:
    office = app_key(card.profile, "taxi", 2)
    select(card.transmit, TAXI_AID)
    assert external_authenticate(card.transmit, 2, bytes(16)) == "63C2"
    assert external_authenticate(card.transmit, 2, office) == "9000"  # resets the counter
    assert [external_authenticate(card.transmit, 2, bytes(16)) for _ in range(3)] == [
        "63C2",
        "63C1",
        "63C0",
    ]
    assert external_authenticate(card.transmit, 2, office) == "6984"
    assert sw(counter_step(card.transmit, 0x32, 1)) == "6982"
    assert external_authenticate(card.transmit, 1, bytes(16)) == "63C4"  # its own counter
    card.close()
    status = {p.name: (p.remaining, p.blocked) for p in read_pin_status(card.state_dir)}
    assert status["taxi:key2"] == (0, True) and status["taxi:key1"] == (4, False)
    assert mynacard("reset-pin", "--state", card.state_dir, "taxi:key2").returncode == 0
    result = mynacard("reset-pin", "--state", card.state_dir, "taxi:key2", "--value", "1234")
    assert result.returncode == 2 and "no value" in result.stderr
    card.open()
    select(card.transmit, TAXI_AID)
    assert external_authenticate(card.transmit, 2, office) == "9000"


def test_taxi_counter_survives_kill_9(tmp_path: Path) -> None:
    """In process: the process holding the card is killed after each ride."""
    profile = load_profile("taxi-tickets")
    meter = app_key(profile, "taxi", 1).hex()
    child = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(REPO_ROOT / "tests")!r})
        from free_area_checks import taxi_ride
        from mynacard import open_card
        card = open_card("taxi-tickets", {str(tmp_path)!r})
        ride = taxi_ride(card.transmit, bytes.fromhex({meter!r}), 2100, "202507011200")
        print(ride.tickets_left, flush=True)
        time.sleep(60)
        """
    )
    for expected in (23, 22):
        proc = subprocess.Popen(
            [sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == str(expected)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    with open_card(profile, tmp_path) as card:
        select(card.transmit, TAXI_AID)
        assert tickets(card.transmit) == 22


@pytest.mark.backends("pcsc")
@pytest.mark.fresh_card
@pytest.mark.card_profile("taxi-tickets")
def test_taxi_rides_survive_kill_9(card: PcscCard) -> None:
    """Through pcscd: `mynacard serve` is killed after each ride, then served again."""
    profile = card.profile
    meter = app_key(profile, "taxi", 1)
    pin = app_spec(profile, "taxi").pins[0].value
    rides = []
    for n in range(3):
        if n:
            card.open()
        assert taxi_grant(card.transmit)[0x01] == profile.municipality_code.encode()
        assert tickets(card.transmit) == 24 - n
        rides.append(taxi_ride(card.transmit, meter, 1800 + n, f"2025070{n + 1}0800"))
        assert rides[-1].tickets_left == 23 - n
        card.kill()
    card.open()
    select(card.transmit, TAXI_AID)
    assert tickets(card.transmit) == 21
    assert tx(card, "00B2011C00") == "6982"  # the log needs the PIN
    ok(select_ef(card.transmit, 0x0011))
    ok(card.transmit(apdu("00200080", pin.encode())))
    assert read_records(card.transmit, 3) == [ride.log_entry for ride in rides]
    # down to zero, then refused without change
    assert external_authenticate(card.transmit, 1, meter) == "9000"
    assert ok(counter_step(card.transmit, 0x30, 21)) == bytes(4)
    assert sw(counter_step(card.transmit, 0x30, 1)) == "6985"
    assert tickets(card.transmit) == 0


def test_every_shipped_free_area_application_takes_its_size(tmp_path: Path) -> None:
    for name, app in (
        ("library-card", "library"),
        ("taxi-tickets", "taxi"),
        ("building-entry", "entry"),
    ):
        profile = load_profile(name)
        spec = app_spec(profile, app)
        with open_card(profile, tmp_path / name):
            pass
        listing = json.loads(
            mynacard("freearea", "list", "--state", tmp_path / name, "--json").stdout
        )
        assert listing["capacity"] == 4096
        assert listing["apps"] == [
            {
                "name": app,
                "aid": spec.aid.hex().upper(),
                "size": spec.size,
                "description": spec.description,
                "files": [f"{f.fid:04X}" for f in spec.files],
                "pins": [f"{p.fid:04X}" for p in spec.pins],
                "keys": [k.number for k in spec.keys],
            }
        ]
        assert listing["used"] == spec.size


# -- commands and status words (the test application) ---------------------------------------


@pytest.mark.card_profile(BENCH)
class TestBenchApplication(InTheApplication):
    """The test application of TEST_AREA, selected: one EF of each kind, every access rule."""

    aid = TEST_AID

    def test_external_authenticate(self, card: TestedCard) -> None:
        challenge = bytes.fromhex(tx(card, "0084000008")[:-4])
        assert tx(card, "0082008110" + cmac_of(TEST_KEY, challenge).hex()) == "9000"  # 8 bytes
        assert tx(card, "0082008110" + cmac_of(TEST_KEY, challenge).hex()) == "6985"  # used up
        assert tx(card, "0082008110" + "00" * 16) == "6985"  # no challenge
        tx(card, "0084000010")
        assert tx(card, "0082008110" + "00" * 16) == "6300"  # wrong; key 1 has no counter
        tx(card, "0084000020")  # 32 bytes: not a challenge EXTERNAL AUTHENTICATE takes
        assert tx(card, "0082008110" + "00" * 16) == "6985"
        assert tx(card, "0082008210" + "00" * 16) == "6A88"  # no key 2
        assert tx(card, "0082000110" + "00" * 16) == "6A86"  # P2 must be 80|key
        assert tx(card, "0082018110" + "00" * 16) == "6A86"
        assert tx(card, "008200810F" + "00" * 15) == "6700"
        assert tx(card, "0082008110" + "00" * 16 + "00") == "6700"
        assert tx(card, "00A4040C0AD392F000260100000001", "0082008110" + "00" * 16) == "6A88"

    def test_selection_probes_and_fci(self, card: TestedCard) -> None:
        assert tx(card, "00A4040C05F001020304") == "9000"  # by prefix
        assert tx(card, "00A4040005F001020304") == "6F098407" + TEST_AID.hex().upper() + "9000"
        assert tx(card, "00A4040C07F0010203040507") == "6A82"
        for probe in (
            "A000000308000010000100",  # PIV
            "D27600012401",  # OpenPGP
            "A000000063504B43532D3135",  # PKCS#15
            "E82B0601040181C31F0201",  # SmartCard-HSM
        ):
            assert tx(card, f"00A4040C{len(probe) // 2:02X}{probe}") == "6A82"
        assert tx(card, "00A4020C020005") == "6A82"

    # -- what changes the card's state: a card of its own --

    @pytest.mark.fresh_card
    def test_update_binary(self, card: TestedCard) -> None:
        assert tx(card, "00A4020C020001", "00B0000008") == "00112233FFFFFFFF9000"
        assert tx(card, "00D6000203AABBCC") == "9000"
        assert tx(card, "00B0000006") == "0011AABBCCFF9000"
        assert tx(card, "00D6812602EEEE") == "9000"  # SFI form, offset 38: the last two bytes
        assert tx(card, "00B0002605") == "EEEE9000"  # Le past the end: the rest
        before = snapshot(card.state_dir)
        assert tx(card, "00D6002803AABBCC") == "6B00"  # offset past the end
        assert tx(card, "00D6002603AABBCC") == "6A84"  # runs past the end
        assert tx(card, "00D60000" + "29" + "00" * 41) == "6A84"  # larger than the EF
        assert tx(card, "00D60000") == "6700"  # no data
        assert tx(card, "00D6000002AABB00") == "6700"  # Le present
        assert tx(card, "00D6E10002AABB") == "6A86"  # SFI with RFU bits
        assert tx(card, "00D6850002AABB") == "6A82"  # no EF 0005
        assert tx(card, "00D6820002AABB") == "6981"  # a record EF
        assert tx(card, "00D6840002AABB") == "6982"  # EF 0004 needs PIN 0011 or key 1
        assert snapshot(card.state_dir) == before

    @pytest.mark.fresh_card
    def test_records_update_and_append(self, card: TestedCard) -> None:
        assert tx(card, "00B2011400") == "01029000"
        assert tx(card, "00DC011403AABBCC") == "9000"
        assert tx(card, "00E2001001DD") == "9000"
        assert tx(card, "00A4020C020002", "00E2000008" + "11" * 8) == "9000"  # current EF form
        assert tx(card, "00B2030400") == "11" * 8 + "9000"
        before = snapshot(card.state_dir)
        assert tx(card, "00DC050403AABBCC") == "6A83"  # record 5 does not exist
        assert tx(card, "00DC000403AABBCC") == "6A83"
        assert tx(card, "00DC010409" + "00" * 9) == "6700"  # longer than a record
        assert tx(card, "00E2000009" + "00" * 9) == "6700"
        assert tx(card, "00E2010001AA") == "6A86"  # P1 must be 00
        assert tx(card, "00E2000401AA") == "6A86"  # P2 mode must be 000
        assert tx(card, "00DC010101AA") == "6A86"  # no record pointer: mode 100 only
        assert tx(card, "00E2001801AA") == "6981"  # a counter EF takes no APPEND
        assert tx(card, "00E2000801AA") == "6981"  # SFI 1: transparent
        assert tx(card, "00DC010C01AA") == "6981"
        assert tx(card, "00E2001001AA") == "9000"  # record 4 of 4
        after_fill = snapshot(card.state_dir)
        assert tx(card, "00E2001001BB") == "6A84"  # full
        assert snapshot(card.state_dir) == after_fill
        assert before != after_fill

    @pytest.mark.fresh_card
    def test_counters(self, card: TestedCard) -> None:
        assert tx(card, "00B2011C00") == "000A9000"
        assert tx(card, "0030011C010300") == "00079000"  # DECREASE record 1 by 3
        assert tx(card, "0032021C02000500") == "00059000"  # INCREASE record 2 by 5
        assert tx(card, "0032021C0101") == "9000"  # no Le: no data back
        assert tx(card, "00B2021C00") == "00069000"
        assert tx(card, "00DC021C0201F4") == "9000"  # UPDATE RECORD to 500 (the maximum)
        before = snapshot(card.state_dir)
        assert tx(card, "0032021C010100") == "6985"  # past the maximum
        assert tx(card, "00DC021C0201F5") == "6A80"  # 501 > maximum
        assert tx(card, "00DC021C0101") == "6700"  # counters are 2 bytes
        assert tx(card, "0030011C0300000100") == "6700"  # wider than the counter
        assert tx(card, "0030031C010100") == "6A83"
        assert tx(card, "00300114010100") == "6981"  # a record EF is no counter
        assert snapshot(card.state_dir) == before
        assert tx(card, "80320080" + "0401020304") == "6986"  # CLA 80 INS 32 is CHANGE KEY

    @pytest.mark.fresh_card
    def test_pin_and_key_access_rules(self, card: TestedCard) -> None:
        assert tx(card, "00B0840008") == "6982"
        assert tx(card, "00D6840002AABB") == "6982"
        # an application PIN with its own counter, format and CHANGE REFERENCE DATA
        assert tx(card, "00A4020C020011", "00200080") == "63C2"
        assert tx(card, "0020008004" + b"1234".hex()) == "63C1"  # wrong format costs a try
        assert tx(card, "0020008006" + b"123456".hex()) == "9000"
        assert tx(card, "00B0840008") == "FF" * 8 + "9000"
        assert tx(card, "00A4020C020011", "0024018004" + b"1234".hex()) == "6A80"  # [0-9]{6}
        assert tx(card, "8032008006" + b"654321".hex()) == "6985"  # CHANGE KEY is for 住基/共通
        assert tx(card, "0024018006" + b"654321".hex()) == "9000"
        states = {p.name: (p.remaining, p.max_tries) for p in read_pin_status(card.state_dir)}
        assert states["bench:0011"] == (2, 2)
        card.reset()
        assert tx(card, "00A4040C07" + TEST_AID.hex(), "00B0840008") == "6982"
        # key 1 opens the update of EF 0004 but not its read
        assert external_authenticate(card.transmit, 1, TEST_KEY) == "9000"
        assert tx(card, "00D6840002AABB") == "9000"
        assert tx(card, "00B0840008") == "6982"
        tx(card, "00A4040C0AD392F000260100000001", "00A4040C07" + TEST_AID.hex())  # app change
        assert tx(card, "00D6840002AABB") == "6982"
        assert tx(card, "00A4020C020011", "0020008006" + b"654321".hex()) == "9000"
        assert tx(card, "00B0840008") == "AABB" + "FF" * 6 + "9000"

    @pytest.mark.fresh_card
    def test_bad_input_gets_precise_status_words(self, card: TestedCard) -> None:
        """A client's mistakes in a row, each with its precise SW; the refused writes change
        nothing, then the record EF fills up and the counter stays."""
        before = ok(card.transmit(bytes.fromhex("00B0810000")))
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
            assert tx(card, command) == expected, command
        # the refused writes changed nothing
        assert ok(card.transmit(bytes.fromhex("00B0810000"))) == before
        for _ in range(3):
            ok(card.transmit(apdu("00E20010", b"\x01")))
        assert sw(card.transmit(apdu("00E20010", b"\x02"))) == "6A84"  # 4 of 4 records
        assert read_records(card.transmit, 2) == [b"\x01\x02", b"\x01", b"\x01", b"\x01"]
        assert ok(card.transmit(bytes.fromhex("00B2011C00"))) == b"\x00\x0a"  # unchanged counter


# -- profiles and install files --------------------------------------------------------------


def declaration_error(text: str) -> str:
    with pytest.raises(ProfileError) as error:
        read_free_area(tomllib.loads(text).get("free_area"), fail)
    return str(error.value)


APP = '[[free_area.apps]]\nname = "x"\naid = "F0AABBCCDD"\n'
FILE = APP + '[[free_area.apps.files]]\nfid = "0001"\n'
BLOB = FILE + 'type = "transparent"\nsize = 2\n'


def app(aid: str, name: str = "x") -> str:
    return f'[[free_area.apps]]\nname = "{name}"\naid = "{aid}"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (app("D3921000310001010401"), "住基AP"),
        (app("D392100031"), "SELECT matches prefixes"),
        (app("A00000030800001000"), "PIV"),
        (app("A0000001510000FF"), "GlobalPlatform ISD"),
        (app("F0AABBCC"), "5 to 16 bytes"),
        (app("F0AABBCCDD", "X Y"), "free_area.apps[0].name"),
        (APP + APP, "apps[1].name: expected a name no other application has"),
        (APP + app("F0AABBCCDDEE", "y"), "clashes with 'x'"),
        (APP + 'colour = "red"', "free_area.apps[0].colour: expected one of the fields name, aid"),
        (FILE.replace("0001", "0020") + 'type = "transparent"\nsize = 4', "0001 to 001E"),
        (FILE + 'type = "blob"', "type: expected 'transparent', 'record', 'counter' or 'rsa_key'"),
        (FILE + 'type = "transparent"', "size: expected an integer 1 to 32767, got nothing"),
        (BLOB + 'content = "AABBCC"', "content: expected at most 2 bytes in hex, got 'AABBCC'"),
        (BLOB + 'read = "pin:0011"', "PIN or key of this application, got 'pin:0011'"),
        (BLOB + 'update = "key:3"', "PIN or key of this application, got 'key:3'"),
        (BLOB + 'read = ["always", "key:1"]', 'read: expected "always" and "never" alone'),
        (BLOB + 'read = "everyone"', "read: expected a rule: "),
        (BLOB + 'append = "always"', "files[0].append: expected one of the fields fid, type"),
        (FILE + 'type = "counter"\nwidth = 1\nvalues = [256]', "[0]: expected an integer 0 to 255"),
        (
            FILE + 'type = "record"\nrecord_size = 2\nmax_records = 1\nrecords = ["AA", "BB"]',
            "records: expected an array of at most 1 item",
        ),
        (FILE + 'type = "rsa_key"\nprivate_key = "nope"', "RSA-2048 PEM"),
        (APP + '[[free_area.apps.pins]]\nfid = "0011"\nvalue = "12"', "value of format '[0-9]{4}'"),
        (APP + '[[free_area.apps.pins]]\nfid = "0011"\nvalue = "1"\nformat = "["', "regular"),
        (APP + '[[free_area.apps.keys]]\nid = 1\naes = "0011"', "aes: expected 16 bytes in hex"),
        (
            "[free_area]\ncapacity = 100\n" + FILE + 'type = "transparent"\nsize = 101',
            "capacity: expected at least 101 (the bytes the applications take), got 100",
        ),
    ],
)
def test_bad_declarations_name_the_field(text: str, message: str) -> None:
    assert message in declaration_error(text)


def test_profile_with_a_bad_free_area_is_refused(tmp_path: Path) -> None:
    shipped = (REPO_ROOT / "profiles" / "taxi-tickets.toml").read_text(encoding="utf-8")
    broken = tmp_path / "broken.toml"
    broken.write_text(shipped.replace('aid = "F0544158490001"', 'aid = "D27600012401FF"'))
    with pytest.raises(ProfileError, match=r"broken.toml: free_area.apps\[0\].aid: .*OpenPGP"):
        load_profile(broken)


# -- the CLI: install, list, remove --------------------------------------------------------------


def mynacard(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mynacard", *map(str, args)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=REPO_ROOT,
        timeout=60,
    )


STAMP_CARD = """\
name = "stamps"
aid = "F05354414D5001"
description = "Coffee shop stamp card"

[[files]]
fid = "0001"
type = "counter"
width = 1
maximum = 10
values = [0]
increase = "key:1"
decrease = "key:1"

[[keys]]
id = 1
aes = "F0E1D2C3B4A5968778695A4B3C2D1E0F"
tries = 3
"""


def test_install_list_and_remove(default: Profile, tmp_path: Path) -> None:
    state = tmp_path / "state"
    app_file = tmp_path / "stamps.toml"
    app_file.write_text(STAMP_CARD, encoding="utf-8")
    assert "no card state" in mynacard("freearea", "install", "--state", state, app_file).stderr
    with open_card(default, state) as card:
        assert tx(card, "00A4040C07F05354414D5001") == "6A82"
        result = mynacard("freearea", "install", "--state", state, app_file)
        assert result.returncode == 2 and "in use by a live card" in result.stderr
        listing = mynacard("freearea", "list", "--state", state)  # works while live
        assert listing.stdout == "free area: 0 of 4096 bytes used\n"
    result = mynacard("freearea", "install", "--state", state, app_file)
    assert result.returncode == 0, result.stderr
    assert "installed 'stamps' (AID F05354414D5001, 17 bytes)" in result.stdout
    assert "17 of 4096 bytes used" in result.stdout
    again = mynacard("freearea", "install", "--state", state, app_file)
    assert again.returncode == 2 and "installed already" in again.stderr
    listing = mynacard("freearea", "list", "--state", state)
    assert "stamps  F05354414D5001  17 bytes  Coffee shop stamp card" in listing.stdout
    with open_card(default, state) as card:
        assert tx(card, "00A4040C07F05354414D5001", "00B2010C00") == "009000"
        key = bytes.fromhex("F0E1D2C3B4A5968778695A4B3C2D1E0F")
        assert external_authenticate(card.transmit, 1, key) == "9000"
        assert tx(card, "0032010C010100") == "019000"
        assert external_authenticate(card.transmit, 1, bytes(16)) == "63C2"
    assert "stamps:key1" in mynacard("status", "--state", state).stdout
    with open_card(default, state) as card:  # the stamp survived close
        assert tx(card, "00A4040C07F05354414D5001", "00B2010C00") == "019000"
    result = mynacard("freearea", "remove", "--state", state, "F05354414D5001")
    assert result.returncode == 0 and "removed 'stamps'" in result.stdout
    assert "stamps" not in mynacard("status", "--state", state).stdout
    assert mynacard("freearea", "remove", "--state", state, "stamps").returncode == 2
    with open_card(default, state) as card:
        assert tx(card, "00A4040C07F05354414D5001") == "6A82"
    # installed afresh after removal: new content
    assert mynacard("freearea", "install", "--state", state, app_file).returncode == 0
    with open_card(default, state) as card:
        assert tx(card, "00A4040C07F05354414D5001", "00B2010C00") == "009000"


def test_install_is_bounded_by_capacity_and_clashes(default: Profile, tmp_path: Path) -> None:
    state = tmp_path / "state"
    small = dataclasses.replace(
        default, free_area=dataclasses.replace(default.free_area, capacity=40)
    )
    with open_card(small, state):
        pass
    first, second, clash, bad = (tmp_path / f"{n}.toml" for n in ("a", "b", "c", "d"))
    body = '[[files]]\nfid = "0001"\ntype = "transparent"\nsize = 24\n'
    first.write_text('name = "a"\naid = "F0AAAAAAAA"\n' + body)
    second.write_text('name = "b"\naid = "F0BBBBBBBB"\n' + body)
    clash.write_text('name = "c"\naid = "F0AAAAAAAA01"\n' + body.replace("24", "1"))
    bad.write_text('name = "d"\naid = "F0DDDDDDDD"\n' + body.replace("size = 24\n", ""))
    assert mynacard("freearea", "install", "--state", state, first).returncode == 0
    before = snapshot(state)
    full = mynacard("freearea", "install", "--state", state, second)
    assert full.returncode == 2
    assert "'b' needs 24 bytes but the free area has 16 of 40 left" in full.stderr
    result = mynacard("freearea", "install", "--state", state, clash)
    assert result.returncode == 2 and "clashes with 'a'" in result.stderr
    result = mynacard("freearea", "install", "--state", state, bad)
    assert result.returncode == 2 and "d.toml: app.files[0].size: expected" in result.stderr
    assert snapshot(state) == before
    assert mynacard("freearea", "remove", "--state", state, "a").returncode == 0
    assert mynacard("freearea", "install", "--state", state, second).returncode == 0


def test_state_from_before_the_free_area_is_refused_by_install(
    default: Profile, tmp_path: Path
) -> None:
    with open_card(default, tmp_path):
        pass
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.execute("DELETE FROM meta WHERE key = 'free_area_capacity'")
    conn.commit()
    conn.close()
    app_file = tmp_path / "stamps.toml"
    app_file.write_text(STAMP_CARD, encoding="utf-8")
    result = mynacard("freearea", "install", "--state", tmp_path, app_file)
    assert result.returncode == 2 and "predates the free area" in result.stderr


def test_a_broken_stored_declaration_is_a_state_error(
    bench_profile: Profile, tmp_path: Path
) -> None:
    with open_card(bench_profile, tmp_path):
        pass
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.execute('UPDATE free_apps SET definition = \'{"name": "bench"}\'')
    conn.commit()
    conn.close()
    for _ in range(2):  # the failed open released the lock: the second fails the same way
        with pytest.raises(StateError, match="free-area application in the card state"):
            open_card(bench_profile, tmp_path)


# -- property tests: precise status words, nothing changed when refused --------------------------


class Model:
    """What the test application's EFs 0001-0003 hold, and the SW each command must get."""

    def __init__(self) -> None:
        self.binary = bytearray(bytes.fromhex("00112233") + b"\xff" * (SIZE - 4))
        self.records = [bytes.fromhex("0102")]
        self.counters = [10, 0]

    def expect(self, command: tuple[object, ...]) -> str:
        kind = command[0]
        if kind == "update_binary":
            _, offset, data = command
            assert isinstance(offset, int) and isinstance(data, bytes)
            if offset >= SIZE:
                return "6B00"
            if offset + len(data) > SIZE:
                return "6A84"
            self.binary[offset : offset + len(data)] = data
            return "9000"
        if kind == "read_binary":
            _, offset, le = command
            assert isinstance(offset, int) and isinstance(le, int)
            if offset >= SIZE:
                return "6B00"
            return self.binary[offset : offset + le].hex().upper() + "9000"
        _, sfi, number, data = command
        assert isinstance(sfi, int) and isinstance(number, int) and isinstance(data, bytes)
        if kind == "read_record":
            values = (
                [r.hex().upper() for r in self.records]
                if sfi == 2
                else [c.to_bytes(2, "big").hex().upper() for c in self.counters]
            )
            if sfi == 1:
                return "6981"
            return values[number - 1] + "9000" if 1 <= number <= len(values) else "6A83"
        if kind == "update_record":
            if sfi == 1:
                return "6981"
            existing = self.records if sfi == 2 else self.counters
            if not 1 <= number <= len(existing):
                return "6A83"
            if sfi == 2:
                if len(data) > 8:
                    return "6700"
                self.records[number - 1] = data
                return "9000"
            if len(data) != 2:
                return "6700"
            if int.from_bytes(data, "big") > 500:
                return "6A80"
            self.counters[number - 1] = int.from_bytes(data, "big")
            return "9000"
        if kind == "append_record":
            if sfi != 2:
                return "6981"
            if len(data) > 8:
                return "6700"
            if len(self.records) >= 4:
                return "6A84"
            self.records.append(data)
            return "9000"
        if sfi != 3:
            return "6981"
        if not 1 <= len(data) <= 2:
            return "6700"
        if not 1 <= number <= 2:
            return "6A83"
        step = int.from_bytes(data, "big")
        value = self.counters[number - 1] + (-step if kind == "decrease" else step)
        if not 0 <= value <= 500:
            return "6985"
        self.counters[number - 1] = value
        return value.to_bytes(2, "big").hex().upper() + "9000"


def encode(command: tuple[object, ...]) -> bytes:
    kind = command[0]
    if kind == "update_binary":
        _, offset, data = command
        assert isinstance(offset, int) and isinstance(data, bytes)
        return bytes((0x00, 0xD6, 0x81, offset, len(data))) + data
    if kind == "read_binary":
        _, offset, le = command
        assert isinstance(offset, int) and isinstance(le, int)
        return bytes((0x00, 0xB0, 0x81, offset, le))
    _, sfi, number, data = command
    assert isinstance(sfi, int) and isinstance(number, int) and isinstance(data, bytes)
    if kind == "read_record":
        return bytes((0x00, 0xB2, number, sfi << 3 | 4, 0x00))
    if kind == "append_record":
        return bytes((0x00, 0xE2, 0x00, sfi << 3, len(data))) + data
    ins = {"update_record": 0xDC, "decrease": 0x30, "increase": 0x32}[kind]
    le = b"\x00" if kind != "update_record" else b""
    return bytes((0x00, ins, number, sfi << 3 | 4, len(data))) + data + le


sfis = st.sampled_from([1, 2, 3])
record_numbers = st.integers(0, 6)
payloads = st.binary(min_size=1, max_size=12)
free_area_commands = st.one_of(
    st.tuples(st.just("update_binary"), st.integers(0, 48), st.binary(min_size=1, max_size=48)),
    st.tuples(st.just("read_binary"), st.integers(0, 48), st.integers(1, 255)),
    st.tuples(st.just("read_record"), sfis, record_numbers, st.just(b"")),
    st.tuples(st.just("update_record"), sfis, record_numbers, payloads),
    st.tuples(st.just("append_record"), sfis, st.just(0), payloads),
    st.tuples(
        st.sampled_from(["decrease", "increase"]),
        sfis,
        record_numbers,
        st.binary(min_size=1, max_size=3),
    ),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(free_area_commands, min_size=1, max_size=12))
def test_free_area_commands_match_the_model_and_refusals_change_nothing(
    bench_profile: Profile, commands: list[tuple[object, ...]]
) -> None:
    model = Model()
    with tempfile.TemporaryDirectory() as directory:
        state = Path(directory)
        with open_card(bench_profile, state) as card:
            assert card.transmit(b"\x00\xa4\x04\x0c\x07" + TEST_AID) == b"\x90\x00"
            for command in commands:
                before = snapshot(state)
                answer = card.transmit(encode(command)).hex().upper()
                assert answer == model.expect(command), command
                if not answer.endswith("9000") or command[0].startswith("read"):
                    assert snapshot(state) == before, command
        with open_card(bench_profile, state) as card:  # everything acknowledged is durable
            card.transmit(b"\x00\xa4\x04\x0c\x07" + TEST_AID)
            assert tx(card, "00B0810000") == model.binary.hex().upper() + "9000"
            for n, value in enumerate(model.counters, 1):
                assert (
                    tx(card, f"00B2{n:02X}1C00") == value.to_bytes(2, "big").hex().upper() + "9000"
                )
            assert [
                tx(card, f"00B2{n:02X}1400")[:-4] for n in range(1, len(model.records) + 1)
            ] == [r.hex().upper() for r in model.records]


def secret_windows(profile: Profile) -> list[bytes]:
    """8-byte windows of every AES key and RSA private number of the free-area applications."""
    windows = []
    for app in profile.free_area.apps:
        for key in app.keys:
            windows += [key.value[i : i + 8] for i in range(0, 9, 4)]
        for file in app.files:
            if isinstance(file, RsaKeySpec):
                numbers = file.key.private_numbers()
                for secret in (numbers.p, numbers.q, numbers.d):
                    raw = secret.to_bytes((secret.bit_length() + 7) // 8, "big")
                    windows += [raw[i : i + 8] for i in range(0, len(raw) - 8, 8)]
    return windows


any_commands = st.one_of(
    st.binary(max_size=64),
    st.builds(
        lambda cla, ins, p1, p2, body: bytes((cla, ins, p1, p2)) + body,
        st.sampled_from([0x00, 0x80]),
        st.sampled_from(
            [0xA4, 0xB0, 0xB2, 0xD6, 0xDC, 0xE2, 0x30, 0x32, 0x82, 0x84, 0x88, 0x20, 0x24]
        ),
        st.integers(0, 255),
        st.integers(0, 255),
        st.binary(max_size=40),
    ),
)


class ExampleCard:
    """A card with all three example applications, and windows of their secrets."""

    def __init__(self, card: CardInterface, secrets: list[bytes]) -> None:
        self.card = card
        self.secrets = secrets

    def __repr__(self) -> str:
        return "ExampleCard()"


@pytest.fixture(scope="module")
def all_examples(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExampleCard]:
    taxi = load_profile("taxi-tickets")
    others = [load_profile("library-card"), load_profile("building-entry")]
    apps = tuple(app for p in (taxi, *others) for app in p.free_area.apps)
    profile = dataclasses.replace(taxi, free_area=dataclasses.replace(taxi.free_area, apps=apps))
    with open_card(profile, tmp_path_factory.mktemp("state")) as card:
        yield ExampleCard(card, secret_windows(profile))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.sampled_from([TAXI_AID, LIBRARY_AID, ENTRY_AID]),
    st.sampled_from([1, 2, 3, 0x11, 0x19]),
    st.lists(any_commands, max_size=8),
)
def test_any_bytes_to_free_area_apps_get_an_answer_and_no_key(
    all_examples: ExampleCard, aid: bytes, fid: int, apdus: list[bytes]
) -> None:
    card, secrets = all_examples.card, all_examples.secrets
    select(card.transmit, aid)
    select_ef(card.transmit, fid)
    for raw in apdus:
        response = card.transmit(raw)
        assert len(response) >= 2
        assert response[-2] in (0x61, 0x63, 0x67, 0x68, 0x69, 0x6A, 0x6B, 0x6D, 0x6E, 0x6F, 0x90)
        assert response[-2:] != b"\x6f\x00", raw.hex()  # no internal error
        assert not any(window in response for window in secrets)


def building_entry_key_pem() -> str:
    """The PEM of the building-entry profile's RSA key file, as shipped."""
    text = (PROFILES_DIR / "building-entry.toml").read_text(encoding="utf-8")
    (entry,) = tomllib.loads(text)["free_area"]["apps"]
    (pem,) = [f["private_key"] for f in entry["files"] if f["type"] == "rsa_key"]
    assert isinstance(pem, str)
    return pem


PIN_GUARDED_KEY = CardProfile.of(
    append="\n[free_area]\n"
    + APP
    + '[[free_area.apps.files]]\nfid = "0002"\ntype = "rsa_key"\nuse = "pin:0011"\n'
    + f"private_key = '''\n{building_entry_key_pem()}'''\n"
    + '[[free_area.apps.pins]]\nfid = "0011"\nvalue = "1234"\nformat = "[0-9]{4,20}"\n'
)


@pytest.mark.fresh_card
@pytest.mark.card_profile(PIN_GUARDED_KEY)
def test_pin_guarded_key_and_long_pin_values(card: TestedCard) -> None:
    (key_spec,) = [f for f in app_spec(card.profile, "x").files if isinstance(f, RsaKeySpec)]
    assert tx(card, "00A4040C05F0AABBCCDD", "0088008208" + "11" * 8 + "00") == "6982"
    assert tx(card, "00A4020C020011", "0020008004" + b"1234".hex()) == "9000"
    signature = bytes.fromhex(tx(card, "0088008208" + "11" * 8 + "00")[:-4])
    key_spec.key.public_key().verify(signature, b"\x11" * 8, padding.PKCS1v15(), hashes.SHA256())
    before = snapshot(card.state_dir)
    assert tx(card, "0024018011" + (b"1" * 17).hex()) == "6700"  # VERIFY could not send it
    assert snapshot(card.state_dir) == before
    assert tx(card, "0024018010" + (b"1" * 16).hex()) == "9000"
    card.reset()
    assert tx(card, "00A4040C05F0AABBCCDD", "0088008208" + "11" * 8 + "00") == "6982"
    card.close()
    result = mynacard("reset-pin", "--state", card.state_dir, "x:0011", "--value", "1" * 17)
    assert result.returncode == 2 and "at most 16" in result.stderr


toml_values = st.recursive(
    st.one_of(st.integers(-(2**40), 2**40), st.text(max_size=40), st.booleans()),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def taxi_declaration() -> str:
    return app_spec(load_profile("taxi-tickets"), "taxi").definition()


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_corrupted_declaration_is_a_profile_error_or_valid(
    taxi_declaration: str, data: st.DataObject
) -> None:
    table = json.loads(taxi_declaration)
    node: object = table
    while True:  # walk down to a random field and replace its value
        assert isinstance(node, dict | list)
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = data.draw(st.sampled_from(keys))
        child = node[key]  # type: ignore[index]
        if not isinstance(child, dict | list) or not child or data.draw(st.booleans()):
            node[key] = data.draw(toml_values)  # type: ignore[index]
            break
        node = child
    with contextlib.suppress(ProfileError):
        read_app(table, fail)
