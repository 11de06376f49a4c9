"""共通カードAP (D392…0100): card information records, INTERNAL AUTHENTICATE key, 4-digit PIN.

docs/card-spec.md §6: EF 0001 record 1 = simple-TLV 01 1C + serial (15) + municipality code (5) +
expiry YYYYMMDD; EF 0002 = the key reference 住基AP EF 0002 holds too; EF 0019 signs an
INTERNAL AUTHENTICATE challenge with no credential; PIN 001C is changed by CHANGE KEY.
"""

from __future__ import annotations

from ..apdu import INS, SW
from ..files import ALWAYS, Application, Pin, RecordEF, RsaKey
from ..personalize.profile import PIN_MAX_TRIES, Profile
from .juki import key_reference_record, simple_tlv

AID = bytes.fromhex("D3921000310001010100")

EF_CARD_INFO = 0x0001
EF_KEY_REFERENCE = 0x0002
KEY_INTERNAL_AUTH = 0x0019
PIN_COMMON = 0x001C
CARD_INFO_TAG = 0x01


def card_info_record(profile: Profile) -> bytes:
    """EF 0001 record 1: 01 1C, then 28 ASCII digits."""
    digits = profile.card_serial + profile.municipality_code
    digits += profile.card_expiry.strftime("%Y%m%d")
    return simple_tlv(CARD_INFO_TAG, digits.encode("ascii"))


def build(profile: Profile) -> Application:
    """The 共通カードAP of `profile`: free reads (docs/decisions.md #28), PIN "common"
    (#13, #17)."""
    if profile.common_auth_key is None:
        raise ValueError(f"profile {profile.name} has no 共通カードAP key (keys.common_auth_key)")
    return Application(
        AID,
        "共通カードAP",
        {
            EF_CARD_INFO: RecordEF(EF_CARD_INFO, [card_info_record(profile)]),
            EF_KEY_REFERENCE: RecordEF(EF_KEY_REFERENCE, [key_reference_record()]),
            KEY_INTERNAL_AUTH: RsaKey(
                KEY_INTERNAL_AUTH, profile.common_auth_key, use=ALWAYS, internal_authenticate=True
            ),
            PIN_COMMON: Pin(
                PIN_COMMON, "common", "common", PIN_MAX_TRIES["common"], r"[0-9]{4}", INS.CHANGE_KEY
            ),
        },
        session_key_sw=SW.NO_SESSION_KEY_DELIVERY,  # SET SESSION KEY, measured (SOL)
    )
