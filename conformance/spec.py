"""The card's applications as data, from docs/card-spec.md §3-§7 and docs/decisions.md (never
from the card's own code).

Each application lists its elementary files (size where the spec fixes it, who may read),
its PINs (tries, value format, how they change) and its keys (who may use them, how).
The model, the survey and the PIN guard all work from this table, so a new application
is one more `AppSpec` in `CATALOGUE`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from enum import Enum

from .apdu import INS, SW

CERT_EF_SIZE = 3808  # docs/decisions.md #30
ISD_AID = bytes.fromhex("A0000001510000")  # GlobalPlatform ISD: restores power-on state (§2.1)
MAX_VERIFY_LENGTH = 16  # docs/decisions.md #6

# What opens an object, as a set of credentials any one of which will do: PIN FIDs, the
# free area's EXTERNAL AUTHENTICATE keys (KEY_CREDENTIAL | number), or nothing at all.
KEY_CREDENTIAL = 0x100
NEVER = frozenset({0x10000})  # opened by nothing (a free-area rule "never")


def key_credential(number: int) -> int:
    """The credential EXTERNAL AUTHENTICATE with free-area key `number` gives ("key:N")."""
    return KEY_CREDENTIAL | number


class Structure(Enum):
    TRANSPARENT = "transparent"
    RECORD = "record"
    COUNTER = "counter"  # free-area counters (DECREASE / INCREASE); how they read is open


class KeyUse(Enum):
    """How a key is exercised: COMPUTE DIGITAL SIGNATURE (80 2A) or INTERNAL AUTHENTICATE."""

    SIGN = "sign"
    INTERNAL_AUTHENTICATE = "internal-authenticate"


@dataclass(frozen=True)
class EfSpec:
    """An elementary file; `read` holds the PIN FIDs any one of which opens it (empty: free)."""

    fid: int
    name: str
    size: int | None = None  # allocated size where the spec fixes it
    read: frozenset[int] = frozenset()
    structure: Structure = Structure.TRANSPARENT
    # Free-area EFs (docs/free-area.md): the rule of each other operation (update, append,
    # decrease, increase; absent: never) and the record / counter limits.
    writes: tuple[tuple[str, frozenset[int]], ...] = ()
    record_size: int | None = None  # records: 1..record_size bytes; counters: the width
    max_records: int | None = None
    maximum: int | None = None  # counters

    @property
    def free(self) -> bool:
        return not self.read

    def rule(self, operation: str) -> frozenset[int]:
        """Who may do `operation` ("read", "update", "append", "decrease", "increase")."""
        if operation == "read":
            return self.read
        return next((rule for name, rule in self.writes if name == operation), NEVER)


@dataclass(frozen=True)
class AesKeySpec:
    """A free-area key for EXTERNAL AUTHENTICATE; `tries` None: no retry limit (6300)."""

    number: int
    tries: int | None


@dataclass(frozen=True)
class PinSpec:
    """A PIN; `name` is its name in profiles and `--pin` (empty: not personalised)."""

    fid: int
    name: str
    max_tries: int
    value_format: str  # regular expression over the ASCII value
    change_ins: int | None = (
        None  # 00 24 or 80 32; None: no APDU changes it (docs/decisions.md #31)
    )


@dataclass(frozen=True)
class KeySpec:
    """A private key EF; `use` holds the PIN FIDs that open it (empty: no credential)."""

    fid: int
    name: str
    use: frozenset[int]
    how: KeyUse = KeyUse.SIGN
    certificate: int | None = None  # EF with the X.509 certificate that verifies it
    default: bool = False  # P2 = 00 of 80 2A names it (券面 APs' card keys, §4-§5)


@dataclass(frozen=True)
class AppSpec:
    """An application (DF) named by its AID."""

    aid: bytes
    name: str
    section: str  # card-spec section, for reports
    efs: tuple[EfSpec, ...]
    pins: tuple[PinSpec, ...] = ()
    keys: tuple[KeySpec, ...] = ()
    required: bool = False  # a card without it does not conform
    optional_fids: frozenset[int] = field(
        default=frozenset()
    )  # may be absent (docs/decisions.md #11)
    # SET SESSION KEY (80 AE): refused with one of these (docs/card-spec.md §2.4), after 6982 while
    # none of `session_key_pins` is verified.
    session_key_sws: tuple[int, ...] = (SW.INS_NOT_SUPPORTED,)
    session_key_pins: frozenset[int] = frozenset()
    free_area: bool = False  # installed in the free area: writable EFs, AES keys
    aes_keys: tuple[AesKeySpec, ...] = ()

    def aes_key(self, number: int) -> AesKeySpec | None:
        return next((key for key in self.aes_keys if key.number == number), None)

    def ef(self, fid: int) -> EfSpec | None:
        return self._efs.get(fid)

    def pin(self, fid: int) -> PinSpec | None:
        return self._pins.get(fid)

    def key(self, fid: int) -> KeySpec | None:
        return self._keys.get(fid)

    # By FID, made once (the model and the bench look them up for every APDU).
    @functools.cached_property
    def _efs(self) -> dict[int, EfSpec]:
        return {ef.fid: ef for ef in reversed(self.efs)}

    @functools.cached_property
    def _pins(self) -> dict[int, PinSpec]:
        return {pin.fid: pin for pin in reversed(self.pins)}

    @functools.cached_property
    def _keys(self) -> dict[int, KeySpec]:
        return {key.fid: key for key in reversed(self.keys)}

    @functools.cached_property
    def fids(self) -> tuple[int, ...]:
        objects: tuple[EfSpec | PinSpec | KeySpec, ...] = (*self.efs, *self.pins, *self.keys)
        return tuple(o.fid for o in objects)


FOUR_DIGITS = r"[0-9]{4}"

JPKI = AppSpec(
    aid=bytes.fromhex("D392F000260100000001"),
    name="JPKI-AP",
    section="§3 JPKI-AP",
    efs=(
        EfSpec(0x0001, "sign certificate", CERT_EF_SIZE, read=frozenset({0x001B})),
        EfSpec(0x0002, "sign CA certificate", CERT_EF_SIZE),
        EfSpec(0x0006, "token info", 160),
        EfSpec(0x0008, "certificate availability", 3),
        EfSpec(0x000A, "auth certificate", CERT_EF_SIZE),
        EfSpec(0x000B, "auth CA certificate", CERT_EF_SIZE),
    ),
    pins=(
        PinSpec(0x0018, "auth", 3, FOUR_DIGITS, INS.CHANGE_REFERENCE_DATA),
        PinSpec(0x001B, "sign", 5, r"[A-Z0-9]{6,16}", INS.CHANGE_REFERENCE_DATA),
    ),
    keys=(
        KeySpec(0x0017, "auth key", frozenset({0x0018}), certificate=0x000A),
        KeySpec(0x001A, "sign key", frozenset({0x001B}), certificate=0x0001),
    ),
    required=True,
    optional_fids=frozenset({0x0001, 0x001A, 0x001B}),
    session_key_sws=(SW.SECURITY_STATUS_NOT_SATISFIED,),
)

_TEXT_ANY = frozenset({0x0011, 0x0014, 0x0015})
TEXT = AppSpec(
    aid=bytes.fromhex("D3921000310001010408"),
    name="text AP (券面事項入力補助)",
    section="§4 text AP",
    efs=(
        EfSpec(0x0001, "My Number", 17, read=frozenset({0x0011, 0x0014})),
        EfSpec(0x0002, "basic 4 items", read=frozenset({0x0011, 0x0015})),
        EfSpec(0x0003, "integrity record", 336, read=_TEXT_ANY),
        EfSpec(0x0004, "CV certificate", 568),
        EfSpec(0x0005, "AP basic info", 256),
        EfSpec(0x0006, "session key public key", read=_TEXT_ANY),
        EfSpec(0x0007, "signed card key", read=_TEXT_ANY),
        EfSpec(0x0008, "unknown", 16),
    ),
    pins=(
        PinSpec(0x0011, "text", 3, FOUR_DIGITS, INS.CHANGE_REFERENCE_DATA),
        PinSpec(0x0012, "", 0, r"[0-9]{4}"),
        PinSpec(0x0014, "code_a", 3, r"[0-9]{12}"),
        PinSpec(0x0015, "code_b", 3, r"[0-9]{14}"),
    ),
    keys=(KeySpec(0x0013, "text card key", frozenset(), default=True),),
    # After the PIN a real card opens secure messaging (a random cryptogram: 6A80 / 6F00);
    # an emulator without secure messaging refuses with 6985.
    session_key_sws=(SW.WRONG_DATA, SW.NO_PRECISE_DIAGNOSIS, SW.CONDITIONS_NOT_SATISFIED),
    session_key_pins=frozenset({0x0011}),
)

_CODES = frozenset({0x0012, 0x0013})
VISUAL = AppSpec(
    aid=bytes.fromhex("D3921000310001010402"),
    name="visual AP (券面事項確認)",
    section="§5 visual AP",
    efs=(
        EfSpec(0x0001, "age record", 547, read=frozenset({0x0011})),
        EfSpec(0x0002, "card face", read=_CODES),
        EfSpec(0x0003, "AP basic info"),
        EfSpec(0x0004, "CV certificate", 568),
        EfSpec(0x0005, "My Number image", read=frozenset({0x0013})),
        EfSpec(0x0006, "unknown", 16, read=_CODES),
    ),
    pins=(
        PinSpec(0x0011, "birth", 3, r"[0-9]{6}"),
        PinSpec(0x0012, "code_b", 3, r"[0-9]{14}"),
        PinSpec(0x0013, "code_a", 3, r"[0-9]{12}"),
    ),
    keys=(KeySpec(0x001A, "visual card key", frozenset(), default=True),),
    session_key_sws=(SW.NO_SESSION_KEY_DELIVERY,),
)

JUKI = AppSpec(
    aid=bytes.fromhex("D3921000310001010401"),
    name="住基AP",
    section="§6 住基AP",
    efs=(EfSpec(0x0002, "key reference", structure=Structure.RECORD),),
    pins=(PinSpec(0x001C, "juki", 3, FOUR_DIGITS, INS.CHANGE_KEY),),
    session_key_sws=(SW.SECURITY_STATUS_NOT_SATISFIED,),
)

COMMON = AppSpec(
    aid=bytes.fromhex("D3921000310001010100"),
    name="共通カードAP",
    section="§6 共通カードAP",
    efs=(
        EfSpec(0x0001, "card identification", structure=Structure.RECORD),
        EfSpec(0x0002, "key reference", structure=Structure.RECORD),
    ),
    pins=(PinSpec(0x001C, "common", 3, FOUR_DIGITS, INS.CHANGE_KEY),),
    keys=(KeySpec(0x0019, "card key", frozenset(), KeyUse.INTERNAL_AUTHENTICATE),),
    session_key_sws=(SW.NO_SESSION_KEY_DELIVERY,),
)

CATALOGUE: tuple[AppSpec, ...] = (JPKI, TEXT, VISUAL, JUKI, COMMON)


PIN_NAMES: tuple[str, ...] = tuple(
    sorted({pin.name for app in CATALOGUE for pin in app.pins if pin.name})
)  # what --pin NAME=VALUE may name


def distinguishing_length(app: AppSpec, catalogue: tuple[AppSpec, ...] = CATALOGUE) -> int:
    """The shortest prefix of `app`'s AID that no other AID of `catalogue` (nor the ISD)
    shares."""
    others = [a.aid for a in catalogue if a is not app] + [ISD_AID]
    for length in range(1, len(app.aid) + 1):
        if not any(other.startswith(app.aid[:length]) for other in others):
            return length
    return len(app.aid)
