"""住基AP (D392…0401): one record EF and a 4-digit PIN changed by CHANGE KEY
(docs/card-spec.md §6)."""

from __future__ import annotations

from ..apdu import INS, SW
from ..files import Application, Pin, RecordEF
from ..personalize.profile import PIN_MAX_TRIES, Profile

AID = bytes.fromhex("D3921000310001010401")

EF_KEY_REFERENCE = 0x0002
PIN_JUKI = 0x001C

# EF 0002 holds "one 16-byte key reference", byte-identical to 共通カードAP EF 0002 (SOL,
# measured); its value and record layout are not public. Assumed here: the record is a
# simple-TLV object like 共通カードAP EF 0001 (tag 02, length 10) around a made-up test value.
KEY_REFERENCE = b"MYNACARD-TESTREF"
KEY_REFERENCE_TAG = 0x02


def simple_tlv(tag: int, value: bytes) -> bytes:
    """A simple-TLV object (JICSAP 4.4.1): 1-byte tag, 1-byte length (values < 255 bytes)."""
    return bytes((tag, len(value))) + value


def key_reference_record() -> bytes:
    """Record 1 of EF 0002 in both 住基AP and 共通カードAP."""
    return simple_tlv(KEY_REFERENCE_TAG, KEY_REFERENCE)


def build(profile: Profile) -> Application:
    """The 住基AP: EF 0002 read freely (docs/decisions.md #28), PIN 001C "juki" (#13, #17)."""
    return Application(
        AID,
        "住基AP",
        {
            EF_KEY_REFERENCE: RecordEF(EF_KEY_REFERENCE, [key_reference_record()]),
            PIN_JUKI: Pin(
                PIN_JUKI, "juki", "juki", PIN_MAX_TRIES["juki"], r"[0-9]{4}", INS.CHANGE_KEY
            ),
        },
        session_key_sw=SW.SECURITY_STATUS_NOT_SATISFIED,  # SET SESSION KEY, measured (SOL)
    )
