"""The 券面 APs through the real stack: pyscard over pcscd + vpcd + `mynacard serve`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest
from national_checks import (
    TEXT_ACCESS,
    TEXT_AID,
    VISUAL_ACCESS,
    VISUAL_AID,
    Send,
    challenge_signature,
    check_access_matrix,
    check_card_face,
    check_signed_record,
    fields,
    municipality_key,
    open_image,
    read_by_sfi_extended,
    read_ef,
    read_text_ap,
    select,
    select_ef,
    sw,
    verify,
    verify_sha256,
)

from mynacard.personalize.profile import Profile, load_profile
from mynacard.personalize.tlv import parse_rsa_public_key

pytestmark = pytest.mark.pcsc

ServeCard = Callable[..., AbstractContextManager[str]]
JPKI_AID = bytes.fromhex("D392F000260100000001")


@contextmanager
def pyscard(reader_name: str) -> Iterator[Send]:
    """A pyscard connection to the reader, as `send(C-APDU) -> R-APDU`."""
    from smartcard.System import readers

    (reader,) = [r for r in readers() if str(r) == reader_name]
    connection = reader.createConnection()
    connection.connect()

    def send(apdu: bytes) -> bytes:
        data, sw1, sw2 = connection.transmit(list(apdu))
        return bytes(data) + bytes((sw1, sw2))

    try:
        yield send
    finally:
        connection.disconnect()
        connection.release()


@pytest.fixture(scope="module")
def profile() -> Profile:
    return load_profile("default")


@pytest.fixture
def send(serve: ServeCard) -> Iterator[Send]:
    with serve("default", reader=0) as name, pyscard(name) as transmit:
        yield transmit


def test_text_ap_reads_and_verifies(send: Send, profile: Profile) -> None:
    text = read_text_ap(send, profile.pins["text"])
    assert (text.my_number, text.name, text.address) == (
        profile.my_number,
        profile.holder.name,
        profile.holder.address,
    )
    assert (
        text.birth_date == f"{profile.holder.birth_date:%Y%m%d}" and text.sex == profile.holder.sex
    )


def test_visual_ap_reads_and_verifies(send: Send, profile: Profile) -> None:
    select(send, VISUAL_AID)
    signer = municipality_key(read_ef(send, 0x0004), "visual")
    assert sw(verify(send, 0x0011, profile.pins["birth"])) == "9000"
    age = check_signed_record(read_ef(send, 0x0001), 0xFF10, 0xDF13, signer)
    card_key = parse_rsa_public_key(age[0xDF12].value)
    assert sw(verify(send, 0x0013, profile.pins["code_a"])) == "9000"
    face, face_key = check_card_face(read_ef(send, 0x0002), signer)
    assert face_key == card_key
    assert face.expiry == f"{profile.card_expiry:%Y%m%d}"
    image = check_signed_record(read_ef(send, 0x0005), 0xFF40, 0xDF43, signer)
    assert open_image(image[0xDF41].value, "png").size == (72, 12)
    assert parse_rsa_public_key(image[0xDF42].value) == card_key
    basic = fields(read_ef(send, 0x0003), 0xFF30)
    assert basic[0xDF34].value == profile.municipality_code.encode()
    assert [len(basic[tag].value) for tag in range(0xDF31, 0xDF36)] == [4, 16, 1, 5, 272]
    assert read_ef(send, 0x0006) == b"\xff" * 16
    challenge, signature = challenge_signature(send)
    verify_sha256(card_key, signature, challenge)


KEY_NAMES = {
    TEXT_AID: {0x0011: "text", 0x0014: "code_a", 0x0015: "code_b"},
    VISUAL_AID: {0x0011: "birth", 0x0013: "code_a", 0x0012: "code_b"},
}


@pytest.mark.parametrize(
    ("aid", "access"),
    [(TEXT_AID, TEXT_ACCESS), (VISUAL_AID, VISUAL_ACCESS)],
    ids=["text", "visual"],
)
def test_access_matrix(
    send: Send, profile: Profile, aid: bytes, access: dict[int, set[int] | None]
) -> None:
    """Every EF with every key (and with none): read exactly where the spec says, else 6982,
    by SELECT and by SFI; leaving the AP ends the verified state between keys."""
    for key in [None, *KEY_NAMES[aid]]:
        select(send, JPKI_AID)
        select(send, aid)
        value = profile.pins[KEY_NAMES[aid][key]] if key is not None else ""
        check_access_matrix(send, access, key, value)


def test_set_session_key_is_refused_as_measured(send: Send, profile: Profile) -> None:
    cryptogram = bytes.fromhex("80AE0000000100") + bytes(range(256))
    for aid, expected in [(JPKI_AID, "6982"), (VISUAL_AID, "66F1"), (TEXT_AID, "6982")]:
        select(send, aid)
        assert sw(send(cryptogram)) == expected
    assert sw(verify(send, 0x0011, profile.pins["text"])) == "9000"
    assert sw(send(cryptogram)) == "6985"  # secure messaging is not emulated


def test_jsa_single_extended_reads_by_sfi(send: Send, profile: Profile) -> None:
    """VERIFY by SFI, then text 0001/0002 and visual 0002/0005 in one READ BINARY each."""
    select(send, TEXT_AID)
    assert sw(send(b"\x00\x20\x00\x91\x04" + profile.pins["text"].encode())) == "9000"
    number = read_by_sfi_extended(send, 0x01)
    assert number == b"\xff\x10\x0c" + profile.my_number.encode() + b"\xff\xff"
    assert read_by_sfi_extended(send, 0x02) == read_ef(send, 0x0002)
    select(send, VISUAL_AID)
    assert sw(send(b"\x00\x20\x00\x93\x0c" + profile.pins["code_a"].encode())) == "9000"
    face = read_by_sfi_extended(send, 0x02)
    assert len(face) > 256 and face == read_ef(send, 0x0002)
    assert read_by_sfi_extended(send, 0x05) == read_ef(send, 0x0005)


def test_bad_input_gets_precise_status_words(send: Send, profile: Profile) -> None:
    select(send, TEXT_AID)
    query = b"\x00\x20\x00\x80"
    assert sw(select_ef(send, 0x0011)) == "9000"
    assert sw(send(query + b"\x11" + b"1" * 17)) == "6700"  # too long: no try used
    assert sw(send(query + b"\x00")) == "6700"
    assert sw(send(query)) == "63C3"
    assert sw(send(query + b"\x05" + b"12345")) == "63C2"  # wrong format: a wrong value
    assert sw(send(query + b"\x04" + b"abcd")) == "63C1"
    assert sw(verify(send, 0x0011, profile.pins["text"])) == "9000"
    assert sw(send(query)) == "63C3"
    assert sw(select_ef(send, 0x0012)) == "9000"
    assert sw(send(query)) == "63C0"
    assert sw(send(query + b"\x04" + b"1234")) == "6984"
    assert sw(verify(send, 0x0014, profile.pins["code_a"])) == "9000"
    assert sw(send(b"\x00\x24\x01\x80\x0c" + b"123456789012")) == "6985"  # 照合番号 fixed
    assert sw(select_ef(send, 0x0005)) == "9000"
    whole = read_ef(send, 0x0005)
    assert sw(send(b"\x00\xb0\x01\x00\x10")) == "6B00"  # offset past the end
    assert send(b"\x00\xb0\x00\xf8\x20") == whole[0xF8:] + b"\x90\x00"  # Le past the end
    assert sw(send(b"\x00\xd6\x00\x00\x01\x00")) == "6982"  # no writes
    assert sw(send(b"\x00\xd6\x81\x00\x01\x00")) == "6982"
    assert read_ef(send, 0x0005) == whole
    assert read_by_sfi_extended(send, 0x01)[3:15] == profile.my_number.encode()
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420") + bytes(32)
    assert sw(send(b"\x80\x2a\x06\x00\x33" + digest_info + b"\x00")) == "6A86"  # P1 > 05
    assert sw(send(b"\x80\x2a\x00\x00\x00\x00\x33" + digest_info + b"\x00\x00")) == "6700"


def test_challenge_signature_with_p2_80(send: Send, profile: Profile) -> None:
    select(send, TEXT_AID)
    assert profile.text_ap is not None
    card_key = profile.text_ap.keys.card_key.public_key()
    assert sw(select_ef(send, 0x0013)) == "9000"
    challenge, signature = challenge_signature(send, p2=0x80)
    verify_sha256(card_key, signature, challenge)


def test_face_auth_card(serve: ServeCard) -> None:
    profile = load_profile("face-auth")
    with serve("face-auth", reader=0) as name, pyscard(name) as send:
        select(send, JPKI_AID)
        assert sw(verify(send, 0x0018, profile.pins["auth"])) == "6984"
        assert len(read_ef(send, 0x000A)) == 3808  # free reads still work
        select(send, TEXT_AID)
        assert sw(verify(send, 0x0011, profile.pins["text"])) == "6984"
        assert sw(verify(send, 0x0014, profile.pins["code_a"])) == "9000"
        assert read_ef(send, 0x0001)[3:15] == profile.my_number.encode()
        select(send, VISUAL_AID)
        assert sw(verify(send, 0x0012, profile.pins["code_b"])) == "9000"
        signer = municipality_key(read_ef(send, 0x0004), "visual")
        face, _ = check_card_face(read_ef(send, 0x0002), signer)
        assert face.birth_date == f"{profile.holder.birth_date:%Y%m%d}"
