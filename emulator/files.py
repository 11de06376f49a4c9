"""The card's objects: applications (DFs), elementary files, PINs and keys, with access rules."""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import cmac, hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo, Prehashed
from cryptography.hazmat.primitives.ciphers.algorithms import AES

from .apdu import SW, StatusError


@dataclass(frozen=True, slots=True)
class Access:
    """Who may perform an operation: anyone (`free`), or whoever verified one of `keys`.

    `keys` holds PIN FIDs, and `key_access(n)` for AES key n opened by EXTERNAL AUTHENTICATE.
    """

    keys: frozenset[int] = frozenset()
    free: bool = False

    def granted(self, verified: set[int]) -> bool:
        return self.free or not self.keys.isdisjoint(verified)


ALWAYS = Access(free=True)
NEVER = Access()

MAX_PIN_LENGTH = 16  # the longest value VERIFY takes (docs/decisions.md #6)


def any_of(*fids: int) -> Access:
    """Access opened by verifying any one of these PINs (FIDs) or keys (`key_access`)."""
    return Access(keys=frozenset(fids))


_KEY_ACCESS = 0x10000  # above every FID


def key_access(number: int) -> int:
    """What EXTERNAL AUTHENTICATE with AES key `number` adds to the verified state."""
    return _KEY_ACCESS | number


@dataclass(slots=True)
class TransparentEF:
    """A transparent EF; `data` is the whole allocated content, filler included.

    Only free-area EFs can be written (`update`); their content lives in the card store.
    """

    fid: int
    data: bytes
    read: Access = ALWAYS
    update: Access = NEVER


@dataclass(slots=True)
class RecordEF:
    """A linear record EF; record numbers count from 1.

    Writable (free-area) ones hold up to `max_records` records of 1..`record_size` bytes.
    """

    fid: int
    records: list[bytes]
    read: Access = ALWAYS
    update: Access = NEVER
    append: Access = NEVER
    record_size: int = 255
    max_records: int = 254


@dataclass(slots=True)
class CounterEF:
    """A record EF of counters (free area): each record a `width`-byte unsigned big-endian
    value from 0 to `maximum`, changed by DECREASE / INCREASE (or UPDATE RECORD)."""

    fid: int
    records: list[bytes]
    width: int
    maximum: int
    read: Access = ALWAYS
    update: Access = NEVER
    decrease: Access = NEVER
    increase: Access = NEVER


def encode_records(records: list[bytes]) -> bytes:
    """Records as one byte string for the store: each as a 1-byte length and its bytes."""
    return b"".join(bytes((len(record),)) + record for record in records)


def decode_records(data: bytes) -> list[bytes]:
    """The records `encode_records` stored."""
    records = []
    position = 0
    while position < len(data):
        end = position + 1 + data[position]
        records.append(data[position + 1 : end])
        position = end
    return records


@dataclass(slots=True)
class Pin:
    """A PIN (reference data) object. Its value and counter live in the card's durable store.

    `state_name` names it in the store and `mynacard status`; `profile_name` is the profile
    PIN (and initial counter) it is personalised from, None for a key blocked at issuance
    (no value; give it max_tries 0) and for free-area PINs (the store holds them from their
    installation). `change_ins` is the INS that may change it (None: it cannot be changed
    by APDU).
    """

    fid: int
    state_name: str
    profile_name: str | None
    max_tries: int
    value_format: str  # regular expression a new value must match in full
    change_ins: int | None = None

    def accepts(self, value: bytes) -> bool:
        return re.fullmatch(self.value_format, value.decode("latin-1")) is not None


_PKCS1 = padding.PKCS1v15()
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
_SHA256 = hashes.SHA256()
_PREHASHED_SHA256 = Prehashed(_SHA256)
_NO_DIGEST_INFO = NoDigestInfo()  # the input padded as it is


class SignatureScheme:
    """P1 of COMPUTE DIGITAL SIGNATURE (80 2A), as measured on cards (docs/card-spec.md §8)."""

    RAW_PKCS1 = 0x00  # input padded as given (a DigestInfo, normally)
    HASH_BARE_PKCS1 = 0x01  # card hashes with SHA-256 and pads the bare hash
    DIGEST_PKCS1 = 0x02  # input is a SHA-256 hash; card wraps it in a DigestInfo
    HASH_PKCS1 = 0x03  # card hashes and wraps: ordinary sha256WithRSAEncryption
    DIGEST_PSS = 0x04  # input is a SHA-256 hash; RSASSA-PSS
    HASH_PSS = 0x05  # card hashes; RSASSA-PSS


_PSS_SCHEMES = frozenset((SignatureScheme.DIGEST_PSS, SignatureScheme.HASH_PSS))
KEPT_SIGNATURES = 1024  # PKCS#1 v1.5 signatures kept, in the process (every key together)


@dataclass(slots=True)
class RsaKey:
    """An RSA private key EF. It signs; nothing reads it.

    `use` is the access needed to sign (the PIN that guards it, or ALWAYS for card keys).
    `internal_authenticate`: the key answers INTERNAL AUTHENTICATE (a PKCS#1 v1.5
    signature of the challenge's SHA-256 DigestInfo, as 共通カードAP EF 0019 does).
    """

    fid: int
    key: RSAPrivateKey
    use: Access
    internal_authenticate: bool = False

    def sign(self, scheme: int, data: bytes) -> bytes:
        """Sign `data` under the P1 `scheme`; a bad input length raises StatusError(6700).

        PKCS#1 v1.5 signatures depend on the key and input alone: the last
        `KEPT_SIGNATURES` made in the process are kept, so the same input signed again (on
        this card or another opened with the same key) costs a lookup. PSS ones are always
        new."""
        if scheme in _PSS_SCHEMES:
            return _signature(self.key, scheme, data)
        return _kept_signature(self.key, scheme, data)

    def authenticate(self, challenge: bytes) -> bytes:
        """INTERNAL AUTHENTICATE: sign the SHA-256 DigestInfo of a 1-255 byte challenge."""
        if not challenge:
            raise StatusError(SW.WRONG_LENGTH)
        return self.sign(SignatureScheme.HASH_PKCS1, challenge)


def _signature(key: RSAPrivateKey, scheme: int, data: bytes) -> bytes:
    if scheme == SignatureScheme.RAW_PKCS1:
        return _raw_pkcs1(key, data)
    if not data:
        raise StatusError(SW.WRONG_LENGTH)
    if scheme == SignatureScheme.HASH_BARE_PKCS1:
        return _raw_pkcs1(key, hashlib.sha256(data).digest())
    if scheme == SignatureScheme.HASH_PKCS1:
        return key.sign(data, _PKCS1, _SHA256)
    if scheme == SignatureScheme.HASH_PSS:
        return key.sign(data, _PSS, _SHA256)
    if len(data) != 32:
        raise StatusError(SW.WRONG_LENGTH)
    if scheme == SignatureScheme.DIGEST_PKCS1:
        return key.sign(data, _PKCS1, _PREHASHED_SHA256)
    if scheme == SignatureScheme.DIGEST_PSS:
        return key.sign(data, _PSS, _PREHASHED_SHA256)
    raise StatusError(SW.INCORRECT_P1_P2)


_kept_signature = functools.lru_cache(maxsize=KEPT_SIGNATURES)(_signature)


def _raw_pkcs1(key: RSAPrivateKey, data: bytes) -> bytes:
    """PKCS#1 v1.5 type-1 padding of `data` exactly as given (no DigestInfo added), then the
    private operation; 1 to k - 11 bytes (6700 otherwise)."""
    if not 1 <= len(data) <= key.key_size // 8 - 11:
        raise StatusError(SW.WRONG_LENGTH)
    return key.sign(data, _PKCS1, _NO_DIGEST_INFO)


@dataclass(frozen=True, slots=True)
class AesKey:
    """An AES-128 key for EXTERNAL AUTHENTICATE (free area): the host proves it holds it.

    The host answers a GET CHALLENGE with AES-CMAC(key, challenge); success adds
    `key_access(number)` to the verified state. `state_name` names its retry counter in the
    store; None means unlimited tries (a wrong answer is 6300).
    """

    number: int
    value: bytes = field(repr=False)
    state_name: str | None = None

    def mac(self, challenge: bytes) -> bytes:
        code = cmac.CMAC(AES(self.value))
        code.update(challenge)
        return code.finalize()


CardObject = TransparentEF | RecordEF | CounterEF | Pin | RsaKey


@dataclass(slots=True)
class Application:
    """A DF named by its AID, holding objects by FID.

    `default_key` is the key COMPUTE DIGITAL SIGNATURE uses with P2 = 00 (the 券面 APs);
    `keys` are the AES keys EXTERNAL AUTHENTICATE names by number (free area).
    SET SESSION KEY (80 AE) answers 6982 without `session_key_use`; then, with a
    `session_key` (the text AP's EF 0006 key pair, whose private half nothing reads), it
    opens secure messaging, else it answers `session_key_sw`.
    """

    aid: bytes
    label: str
    objects: dict[int, CardObject]
    default_key: int | None = None
    keys: dict[int, AesKey] = field(default_factory=dict)
    session_key_sw: int = SW.INS_NOT_SUPPORTED
    session_key_use: Access = ALWAYS
    session_key: RSAPrivateKey | None = field(default=None, repr=False)

    def pins(self) -> Iterator[Pin]:
        return (obj for obj in self.objects.values() if isinstance(obj, Pin))

    def fci(self) -> bytes:
        """FCI for SELECT with P2 = 00: 6F { 84 DF name } (docs/decisions.md #9)."""
        name = bytes((0x84, len(self.aid))) + self.aid
        return bytes((0x6F, len(name))) + name
