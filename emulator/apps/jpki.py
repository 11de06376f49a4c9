"""公的個人認証AP (JPKI-AP): certificates, keys and PINs (docs/card-spec.md §3, §7, §8)."""

from __future__ import annotations

import struct

from ..apdu import INS, SW
from ..files import ALWAYS, Application, CardObject, Pin, RsaKey, TransparentEF, any_of
from ..personalize.profile import Profile

AID = bytes.fromhex("D392F000260100000001")

EF_SIGN_CERT = 0x0001
EF_SIGN_CA_CERT = 0x0002
EF_TOKEN_INFO = 0x0006
EF_CERT_AVAILABILITY = 0x0008
EF_AUTH_CERT = 0x000A
EF_AUTH_CA_CERT = 0x000B
KEY_AUTH = 0x0017
PIN_AUTH = 0x0018
KEY_SIGN = 0x001A
PIN_SIGN = 0x001B

CERT_EF_SIZE = 3808  # measured allocation of the certificate EFs (docs/card-spec.md §9)
# EF 0006's label by the profile's form (docs/card-spec.md §1: MYNA-GO, SOL).
TOKEN_LABELS = {
    "card": b"JPKIAPICCTOKEN2",
    "smartphone-android": b"JPKIAPGPSETOKEN",
    "smartphone-ios": b"JPKIAPIOSTOKEN",
}
_CERT_PRESENT = 0x8F


def token_info(form: str = "card") -> bytes:
    """EF 0006: a serialised PKCS#11 CK_TOKEN_INFO, 160 bytes (docs/card-spec.md §3.1, SOL
    fixture); only the label tells a phone from the card (its other fields are not public)."""
    return b"".join(
        (
            TOKEN_LABELS[form].ljust(32, b" "),
            b"0" * 31 + b"1",  # manufacturerID
            b"E16R01NJ".ljust(16, b" "),  # model
            b"0000000020500003",  # serialNumber
            struct.pack(
                ">IIIIIIIIIIII",
                0x0000040D,  # flags: RNG, LOGIN_REQUIRED, USER_PIN_INITIALIZED, TOKEN_INITIALIZED
                1,  # maxSessionCount
                0,  # sessionCount
                1,  # maxRwSessionCount
                0,  # rwSessionCount
                16,  # maxPinLen
                6,  # minPinLen
                0xFFFFFFFF,  # totalPublicMemory
                0xFFFFFFFF,  # freePublicMemory
                0xFFFFFFFF,  # totalPrivateMemory
                0xFFFFFFFF,  # freePrivateMemory
                0x30333031,  # hardwareVersion "03", firmwareVersion "01" (ASCII on the card)
            ),
            b" " * 16,  # utcTime: not set (the token has no clock)
        )
    )


def _padded(der: bytes, filler: int) -> bytes:
    return der + bytes((filler,)) * (CERT_EF_SIZE - len(der))


def build(profile: Profile) -> Application:
    """The JPKI-AP of `profile`. A card without a signature certificate has no 0001/001A/001B;
    on a smartphone the auth certificate needs the auth PIN (MYNA-RS, MYNA-GO)."""
    credentials = profile.jpki
    if credentials is None:
        raise ValueError(f"profile {profile.name} has no JPKI keys")
    filler = profile.quirks.filler
    has_sign = credentials.sign_key is not None and credentials.sign_cert is not None
    objects: list[CardObject] = [
        TransparentEF(EF_SIGN_CA_CERT, _padded(credentials.sign_ca_cert, filler)),
        TransparentEF(EF_TOKEN_INFO, token_info(profile.form)),
        TransparentEF(
            EF_CERT_AVAILABILITY, bytes((_CERT_PRESENT if has_sign else 0x00, _CERT_PRESENT, 0))
        ),
        TransparentEF(
            EF_AUTH_CERT,
            _padded(credentials.auth_cert, filler),
            ALWAYS if profile.form == "card" else any_of(PIN_AUTH),
        ),
        TransparentEF(EF_AUTH_CA_CERT, _padded(credentials.auth_ca_cert, filler)),
        RsaKey(KEY_AUTH, credentials.auth_key, use=any_of(PIN_AUTH)),
        Pin(PIN_AUTH, "auth", "auth", 3, r"[0-9]{4}", INS.CHANGE_REFERENCE_DATA),
    ]
    if has_sign:
        assert credentials.sign_cert is not None and credentials.sign_key is not None
        objects += [
            TransparentEF(EF_SIGN_CERT, _padded(credentials.sign_cert, filler), any_of(PIN_SIGN)),
            RsaKey(KEY_SIGN, credentials.sign_key, use=any_of(PIN_SIGN)),
            Pin(PIN_SIGN, "sign", "sign", 5, r"[A-Z0-9]{6,16}", INS.CHANGE_REFERENCE_DATA),
        ]
    return Application(
        AID,
        "JPKI-AP",
        {obj.fid: obj for obj in objects},
        session_key_sw=SW.SECURITY_STATUS_NOT_SATISFIED,  # SET SESSION KEY, measured (SOL)
    )
