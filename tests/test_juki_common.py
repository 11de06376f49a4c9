"""住基AP and 共通カードAP (docs/card-spec.md §6, §7): each behaviour on the card in process and
through pcscd (the `card` fixture)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cardtest import TestedCard, select, select_ef, tx
from juki_common_checks import (
    COMMON_AID,
    JUKI_AID,
    change_pin,
    internal_authenticate,
    parse_card_info,
    read_card_info,
    read_key_reference,
    read_record,
    retries,
    verify,
)

from mynacard.personalize.profile import ProfileError, load_profile
from mynacard.store import read_pin_status

SELECT_JUKI = "00A4040C0A" + JUKI_AID.hex()
SELECT_COMMON = "00A4040C0A" + COMMON_AID.hex()


def test_common_card_info_by_sfi_and_current_ef(card: TestedCard) -> None:
    profile = card.profile
    info = read_card_info(card.transmit)
    assert info.serial == profile.card_serial and len(info.serial) == 15
    assert info.municipality_code == profile.municipality_code
    assert info.expiry == profile.card_expiry
    # the current-EF form (SOL) gives the same record, and the SFI read made 0001 current
    by_sfi = read_record(card.transmit, 1)
    assert select_ef(card.transmit, 0x0001) == b"\x90\x00"
    assert read_record(card.transmit, 1) == by_sfi
    assert parse_card_info(by_sfi[:-2]) == info
    assert by_sfi[:2] == b"\x01\x1c"


def test_key_reference_is_the_same_in_both_aps_and_free(card: TestedCard) -> None:
    juki = read_key_reference(card.transmit, JUKI_AID)
    common = read_key_reference(card.transmit, COMMON_AID)
    assert juki == common


def test_record_bounds_and_forms(card: TestedCard) -> None:
    tx(card, SELECT_COMMON)
    assert tx(card, "00B2020C00") == "6A83"  # only record 1
    assert tx(card, "00B2000C00") == "6A83"  # no current record is kept
    assert tx(card, "00B2010D00") == "6A86"  # P2 modes other than 100: no record pointer
    assert tx(card, "00B2010C05") == "011C" + tx(card, "00B2010C00")[4:10] + "9000"  # Le 5
    assert tx(card, "00B2011C00") == "6A82"  # SFI 3: no such EF
    assert tx(card, "00B2010C") == "6700"  # no Le
    assert tx(card, "00B0810000") == "6981"  # a record EF is not transparent
    assert tx(card, "00B201CC00") == "6981"  # SFI 19 is the key, not a record EF
    assert tx(card, "00B0990000") == "6981"  # the key cannot be read
    assert tx(card, SELECT_JUKI, "00B2011400")[-4:] == "9000"
    assert tx(card, "00B2010C00") == "6A82"  # the 住基AP has no EF 0001


def test_internal_authenticate_needs_no_pin(card: TestedCard) -> None:
    assert card.profile.common_auth_key is not None
    public = card.profile.common_auth_key.public_key()
    select(card.transmit, COMMON_AID)
    internal_authenticate(card.transmit, public)  # 00 88 00 99: SFI 19
    assert select_ef(card.transmit, 0x0019) == b"\x90\x00"
    internal_authenticate(card.transmit, public, p2=0x80)  # the current EF
    for challenge in ("01", "FF" * 255):
        length = len(challenge) // 2
        assert tx(card, f"00880099{length:02X}{challenge}00")[-4:] == "9000"
    assert tx(card, "0088009900") == "6700"  # no challenge
    assert tx(card, "008800990401020304") == "6700"  # no Le
    assert tx(card, "00880099000004010203040000") == "6700"  # extended
    assert tx(card, "00880199040102030400") == "6A86"
    assert tx(card, "0088009C040102030400") == "6986"  # SFI 1C is the PIN
    assert tx(card, SELECT_JUKI, "00880099040102030400") == "6A82"  # not in the 住基AP


@pytest.mark.fresh_card
def test_pins_have_separate_counters(card: TestedCard) -> None:
    assert retries(card.transmit, JUKI_AID) == "63C3"
    assert verify(card.transmit, "0000")[-2:] == b"\x63\xc2"
    assert retries(card.transmit, COMMON_AID) == "63C3"  # docs/decisions.md #13
    assert verify(card.transmit, "0000")[-2:] == b"\x63\xc2"
    assert verify(card.transmit, "12")[-2:] == b"\x63\xc1"  # wrong format costs a try (#5)
    assert tx(card, "0020008011" + "31" * 17) == "6700"  # longer than 16: no try
    assert tx(card, "0020008000") == "6700"  # Le present: no try
    assert verify(card.transmit, card.profile.pins["common"]) == b"\x90\x00"
    assert retries(card.transmit, COMMON_AID) == "63C3"
    assert retries(card.transmit, JUKI_AID) == "63C2"
    counters = {p.name: p.remaining for p in read_pin_status(card.state_dir)}  # while live
    assert counters["juki"] == 2 and counters["common"] == 3


@pytest.mark.fresh_card
def test_pin_blocks_after_three_wrong_tries(card: TestedCard) -> None:
    juki = card.profile.pins["juki"]
    tx(card, SELECT_JUKI, "00A4020C02001C")
    assert [verify(card.transmit, "9999").hex() for _ in range(3)] == ["63c2", "63c1", "63c0"]
    assert verify(card.transmit, juki).hex() == "6984"
    assert tx(card, "00200080") == "63C0"
    assert change_pin(card.transmit, JUKI_AID, juki, "4321") == "6984"
    assert retries(card.transmit, COMMON_AID) == "63C3"


@pytest.mark.fresh_card
@pytest.mark.parametrize("aid", [JUKI_AID, COMMON_AID], ids=["juki", "common"])
def test_change_key(card: TestedCard, aid: bytes) -> None:
    pins = card.profile.pins
    old = pins["juki" if aid == JUKI_AID else "common"]
    tx(card, "00A4040C0A" + aid.hex(), "00A4020C02001C")
    assert tx(card, "8032008004" + b"5678".hex()) == "6982"  # not verified
    # JPKI's command: docs/decisions.md #31
    assert tx(card, "0024018004" + b"5678".hex()) == "6985"
    assert verify(card.transmit, old) == b"\x90\x00"
    assert tx(card, "0024018004" + b"5678".hex()) == "6985"
    assert tx(card, "8032008005" + b"56789".hex()) == "6A80"  # new value: 4 digits only
    assert tx(card, "8032008004" + b"12AB".hex()) == "6A80"
    assert tx(card, "8032018004" + b"5678".hex()) == "6A86"  # P1 must be 00
    assert tx(card, "80320080") == "6700"
    assert change_pin(card.transmit, aid, old, "567") == "6A80"
    assert change_pin(card.transmit, aid, old, "5678") == "9000"
    assert verify(card.transmit, "5678") == b"\x90\x00"
    assert verify(card.transmit, old).hex() == "63c2"
    other, other_name = (COMMON_AID, "common") if aid == JUKI_AID else (JUKI_AID, "juki")
    assert change_pin(card.transmit, other, pins[other_name], "1111") == "9000"
    card.reopen()  # durable
    tx(card, "00A4040C0A" + aid.hex(), "00A4020C02001C")
    assert verify(card.transmit, "5678") == b"\x90\x00"


@pytest.mark.parametrize(
    "leave",
    [
        lambda c: c.reset(),
        lambda c: c.power_cycle(),
        lambda c: c.transmit(bytes.fromhex("00A4040C0A" + COMMON_AID.hex())),
        lambda c: c.transmit(bytes.fromhex("00A4040C0AD392F000260100000001")),
    ],
    ids=["reset", "power-off", "other-ap", "jpki"],
)
def test_verified_state_ends(card: TestedCard, leave: object) -> None:
    assert callable(leave)
    tx(card, SELECT_JUKI, "00A4020C02001C")
    assert verify(card.transmit, card.profile.pins["juki"]) == b"\x90\x00"
    leave(card)
    tx(card, SELECT_JUKI, "00A4020C02001C")
    assert tx(card, "8032008004" + b"5678".hex()) == "6982"


def test_writes_to_national_record_efs_are_refused(card: TestedCard) -> None:
    tx(card, SELECT_COMMON, "00A4020C020001")
    before = tx(card, "00B2010400")
    assert tx(card, "00DC010402" + "0102") == "6982"  # UPDATE RECORD: no write access
    assert tx(card, "00E2000002" + "0102") == "6982"  # APPEND RECORD
    assert tx(card, "003001040101") == "6981"  # DECREASE: not a counter
    assert tx(card, "00D6000002" + "0102") == "6981"  # UPDATE BINARY: not transparent
    assert tx(card, "00B2010400") == before
    tx(card, "00A4040C0AD392F000260100000001", "00A4020C020006")
    assert tx(card, "00D6000002" + "0102") == "6982"  # JPKI token info
    assert tx(card, "00B0000004") == "4A504B499000"


DEFAULT_TEXT = (Path(__file__).resolve().parents[1] / "profiles" / "default.toml").read_text(
    encoding="utf-8"
)


def _common_key_pem() -> str:
    start = DEFAULT_TEXT.index("common_auth_key = '''\n") + len("common_auth_key = '''\n")
    return DEFAULT_TEXT[start : DEFAULT_TEXT.index("'''", start)]


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ('serial_number = "', 'serial_number = "1', "card.serial_number: expected a string of 15"),
        ('municipality_code = "', 'municipality_code = "X', "card.municipality_code"),
        ("municipality_code = ", "municipality = ", "card.municipality: expected one of"),
        ("common_auth_key = '''", "common_key = '''", "keys.common_key: expected one of"),
        (_common_key_pem()[40:80], "A" * 40, "keys.common_auth_key: expected an unencrypted"),
        ("\n[keys]\n", "\n[free_area]\ncapacity = -1\n\n[keys]\n", "free_area.capacity: expected"),
    ],
    ids=["serial", "municipality", "municipality-renamed", "key-renamed", "key-garbage", "area"],
)
def test_profile_fields_of_the_common_ap_are_checked(
    tmp_path: Path, old: str, new: str, fragment: str
) -> None:
    assert DEFAULT_TEXT.count(old) == 1
    path = tmp_path / "profile.toml"
    path.write_text(DEFAULT_TEXT.replace(old, new), encoding="utf-8")
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    assert str(caught.value).startswith(f"{path}: ") and fragment in str(caught.value)
