"""Reference model of the card's observable behaviour, written from card-spec and docs/decisions.md.

`CardFacts` is what the bench knows about one card (from the spec, a profile, and what the
card itself showed in the survey); `CardModel` is one session on it.  For every command the
model gives an `Expectation`: the response pattern (status word and data byte for byte where
the spec fixes them, wildcards where the bytes are card-specific or random), an optional
check for what a pattern cannot say (signatures verified with the card's own certificates),
and the effect the command has on the card's state once the response is in.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo, Prehashed
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC

from . import secure_messaging
from .apdu import INS, ISO_INS, PROPRIETARY_INS, SW, WRITE_INS, Apdu, MalformedApdu, sw_of
from .profile import FreeApp, ProfileFacts, Quirks
from .spec import (
    CATALOGUE,
    ISD_AID,
    JPKI,
    MAX_VERIFY_LENGTH,
    AppSpec,
    EfSpec,
    KeySpec,
    KeyUse,
    PinSpec,
    Structure,
    key_credential,
)
from .transcript import Pattern

if TYPE_CHECKING:
    from .secure_messaging import SmState

ObjectKey = tuple[bytes, int]  # (AID, FID)
CardObject = EfSpec | PinSpec | KeySpec

SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
TOKEN_LABEL = b"JPKIAPICCTOKEN2".ljust(32, b" ")  # docs/card-spec.md §3.1: a My Number Card
RSA_BYTES = 256
PSS_SALT_LENGTH = 32  # docs/card.md (an assumption: no source gives it)
_PKCS1 = padding.PKCS1v15()
_NO_DIGEST_INFO = NoDigestInfo()  # the whole block after the padding
# MF-level GET DATA objects of a few bytes (docs/card-spec.md §2.3): card identification,
# municipality code, expiry, contact ATR; the others (0042, 0066, 00F7, 00F8, 7F21) are
# key ids and certificates, of sizes no source gives.
SMALL_MF_OBJECTS = frozenset((0x0045, 0x00F0, 0x00F2, 0x5F51))
MF_OBJECTS = (0x0042, 0x0045, 0x0066, 0x00F0, 0x00F2, 0x00F7, 0x00F8, 0x7F21, 0x5F51)
PSS_SCHEMES = frozenset((0x04, 0x05))  # RSASSA-PSS: a random salt, a new signature each time

SECTION_CARD = "§2 card-wide commands"
SECTION_PINS = "§7 PINs"
SECTION_SIGN = "§8 signing"
SECTION_READ = "§9 READ BINARY"
SECTION_POWER = "§2.2 security state, reset and power"
SECTION_FREE = "§10 free area"
CHALLENGE_SIZES = (8, 16)  # what EXTERNAL AUTHENTICATE answers (docs/free-area.md)
NO_INFORMATION = 0x6300  # a wrong EXTERNAL AUTHENTICATE with a key that has no retry limit
NOT_ENOUGH_MEMORY = 0x6A84  # data past the end of a free-area EF, or a full record EF
CHAINING_NOT_SUPPORTED = 0x6884  # CLA bit 5 (ISO 7816-4 §5.4.1): the card does not chain


def cmac(key: bytes, message: bytes) -> bytes:
    """AES-CMAC: the host's answer to a free-area challenge (docs/free-area.md)."""
    mac = CMAC(algorithms.AES(key))
    mac.update(message)
    return mac.finalize()


class Unknown:
    """Marks an object whose presence on the card is not known yet."""


UNKNOWN = Unknown()


@dataclass
class EfContent:
    """What is known of an EF's bytes: `data[i]` is known where `mask[i]` is set."""

    size_min: int = 0
    size_max: int | None = None
    data: bytearray = field(default_factory=bytearray)
    mask: bytearray = field(default_factory=bytearray)

    @classmethod
    def exact(cls, data: bytes) -> EfContent:
        return cls(len(data), len(data), bytearray(data), bytearray(b"\x01" * len(data)))

    def known(self, start: int, end: int) -> bytes | None:
        end = min(end, len(self.data))
        if start >= end or not all(self.mask[start:end]):
            return None
        return bytes(self.data[start:end])

    def learn(self, offset: int, chunk: bytes) -> None:
        end = offset + len(chunk)
        if end > len(self.data):
            grow = end - len(self.data)
            self.data.extend(bytes(grow))
            self.mask.extend(bytes(grow))
        self.data[offset:end] = chunk
        self.mask[offset:end] = b"\x01" * len(chunk)
        self.size_min = max(self.size_min, end)

    def pattern(self, offset: int, count_min: int, count_max: int) -> str:
        """Hex pattern of bytes offset.. with count_min..count_max of them, known ones exact."""
        parts = []
        position = offset
        end = offset + count_min
        mask = self.mask
        while position < end:
            known = position < len(mask) and mask[position]
            if known:  # a run of known bytes, up to the next unknown one
                run_end = mask.find(0, position, end)
                run_end = min(end, len(mask)) if run_end < 0 else run_end
                parts.append(bytes(self.data[position:run_end]).hex().upper())
            else:
                run_end = mask.find(1, position, end) if position < len(mask) else -1
                run_end = end if run_end < 0 else run_end
                parts.append(f"[{run_end - position}]")
            position = run_end
        if count_max > count_min:
            parts.append(f"[0-{count_max - count_min}]")
        return " ".join(parts)


@dataclass
class CardFacts:
    """What the bench knows about a card; learned facts are shared by every example of a run."""

    quirks: Quirks
    exact: bool  # a profile fixes the data: objects outside the spec do not exist
    atr: bytes | None = None
    apps: dict[bytes, bool | None] = field(default_factory=dict)
    objects: dict[ObjectKey, bool] = field(default_factory=dict)  # presence, where learned
    contents: dict[ObjectKey, EfContent] = field(default_factory=dict)
    records: dict[tuple[bytes, int, int], bytes] = field(default_factory=dict)
    record_ends: dict[ObjectKey, int] = field(default_factory=dict)  # first missing record
    pin_values: dict[ObjectKey, bytes] = field(default_factory=dict)
    initial_counters: dict[ObjectKey, int] = field(default_factory=dict)
    live_counters: dict[ObjectKey, int] = field(default_factory=dict)  # last seen, all examples
    extra_apps: tuple[AppSpec, ...] = ()  # free-area applications a profile installs
    aes_keys: dict[ObjectKey, bytes] = field(default_factory=dict)  # (AID, key number)
    card_objects: dict[int, bytes] = field(default_factory=dict)  # MF GET DATA a profile fixes
    _public_keys: dict[ObjectKey, rsa.RSAPublicKey] = field(default_factory=dict)

    @classmethod
    def learning(
        cls, pins: dict[str, str] | None = None, quirks: Quirks | None = None
    ) -> CardFacts:
        """A card known only through the spec (and the PINs the user gave)."""
        facts = cls(quirks or Quirks(), exact=False)
        facts.apps = {app.aid: True if app.required else None for app in CATALOGUE}
        facts._set_pins(pins or {})
        facts.contents[(JPKI.aid, 0x0006)] = EfContent()
        facts.contents[(JPKI.aid, 0x0006)].learn(0, TOKEN_LABEL)
        return facts

    @classmethod
    def from_profile(cls, profile: ProfileFacts, pins: dict[str, str] | None = None) -> CardFacts:
        """A card personalised from `profile`: its exact ATR, certificates, PINs and counters."""
        facts = cls.learning({**profile.pins, **(pins or {})}, profile.quirks)
        facts.exact = True
        facts.atr = profile.atr
        facts.card_objects = dict(profile.card_objects)
        filler = bytes((profile.quirks.filler,))
        aid = JPKI.aid
        by_name = {"sign": 0x0001, "sign_ca": 0x0002, "auth": 0x000A, "auth_ca": 0x000B}
        for name, fid in by_name.items():
            der = profile.certificates.get(name)
            if der is not None:
                ef = JPKI.ef(fid)
                size = ef.size if ef is not None and ef.size is not None else len(der)
                facts.contents[(aid, fid)] = EfContent.exact(der + filler * (size - len(der)))
        has_sign = profile.has_sign_cert
        facts.contents[(aid, 0x0008)] = EfContent.exact(bytes((0x8F if has_sign else 0, 0x8F, 0)))
        for fid in JPKI.optional_fids:
            facts.objects[(aid, fid)] = has_sign
        for app in CATALOGUE:
            for pin in app.pins:
                if pin.name:
                    start = profile.counters.get(pin.name, pin.max_tries)
                    facts.initial_counters[(app.aid, pin.fid)] = start
        for free in profile.free_area:
            facts.add_free_app(free)
        for key, data in profile.efs.items():  # the layouts of docs/card.md, filler included
            facts.contents[key] = EfContent.exact(data)
        for key, (size, runs) in profile.partial_efs.items():
            content = facts.contents[key] = EfContent()
            for offset, known in runs:
                content.learn(offset, known)
            content.size_min = content.size_max = size
        for (aid, fid), records in profile.records.items():
            for number, record in enumerate(records, 1):
                facts.records[(aid, fid, number)] = record
            facts.record_ends[(aid, fid)] = len(records) + 1
        facts._public_keys.update(profile.public_keys)
        return facts

    def add_free_app(self, free: FreeApp) -> None:
        """A free-area application the profile installs, with what it says of its data."""
        app = free.spec
        self.extra_apps += (app,)
        self.apps[app.aid] = True
        for ef in app.efs:
            if ef.size is not None:  # the declared content, then FF to the size (free-area.md)
                initial = free.contents.get(ef.fid, b"")
                filled = initial + b"\xff" * (ef.size - len(initial))
                self.contents[(app.aid, ef.fid)] = EfContent.exact(filled)
        for fid, records in free.records.items():
            for number, record in enumerate(records, 1):
                self.records[(app.aid, fid, number)] = record
            self.record_ends[(app.aid, fid)] = len(records) + 1
        for pin in app.pins:
            self.initial_counters[(app.aid, pin.fid)] = pin.max_tries
            self.pin_values[(app.aid, pin.fid)] = free.pins[pin.fid]
        for key in app.aes_keys:
            self.aes_keys[(app.aid, key.number)] = free.aes[key.number]
            if key.tries is not None:
                self.initial_counters[(app.aid, key_credential(key.number))] = key.tries

    @property
    def catalogue(self) -> tuple[AppSpec, ...]:
        """Every application the bench knows of: the national ones, then the free area's."""
        return CATALOGUE + self.extra_apps

    def _set_pins(self, pins: dict[str, str]) -> None:
        for app in CATALOGUE:
            for pin in app.pins:
                if pin.name in pins:
                    self.pin_values[(app.aid, pin.fid)] = pins[pin.name].encode()
                if pin.max_tries == 0:  # blocked at issuance (text 0012)
                    self.initial_counters[(app.aid, pin.fid)] = 0

    def present(self, app: AppSpec, fid: int) -> bool | Unknown:
        """Whether object `fid` exists in `app` on this card."""
        learned = self.objects.get((app.aid, fid))
        if learned is not None:
            return learned
        if fid in app.optional_fids:
            return UNKNOWN
        if fid in app.fids:
            return True
        return False if self.exact else UNKNOWN

    def content(self, app: AppSpec, ef: EfSpec) -> EfContent:
        key = (app.aid, ef.fid)
        content = self.contents.get(key)
        if content is None:
            content = self.contents[key] = EfContent()
        if ef.size is not None and self.exact and content.size_max is None:
            content.size_min = max(content.size_min, ef.size)
            content.size_max = ef.size
        return content

    def public_key(self, app: AppSpec, key: KeySpec) -> rsa.RSAPublicKey | None:
        """The public key of `key`: from the profile, or from its certificate EF once the
        certificate's bytes are known."""
        cached = self._public_keys.get((app.aid, key.fid))
        if cached is not None or key.certificate is None:
            return cached
        content = self.contents.get((app.aid, key.certificate))
        head = content.known(0, 4) if content else None
        if content is None or head is None or head[:2] != b"\x30\x82":
            return None
        der = content.known(0, int.from_bytes(head[2:4], "big") + 4)
        if der is None:
            return None
        public = x509.load_der_x509_certificate(der).public_key()
        if not isinstance(public, rsa.RSAPublicKey):
            return None
        self._public_keys[(app.aid, key.fid)] = public
        return public


Effect = Callable[[bytes], None]
Check = Callable[[bytes], str | None]


@dataclass
class Expectation:
    """What the card must answer, and what the answer does to the card's state."""

    pattern: Pattern
    section: str
    effect: Effect | None = None
    check: Check | None = None
    portable: bool = True  # every conformant card answers these very bytes (differential mode)
    note: str = ""  # a transcript comment (secure messaging: the plaintext)
    observed: bytes = b""  # the plain command an SM one stands for, for the invariants

    def problem(self, response: bytes) -> str | None:
        """Why `response` does not conform, or None."""
        if not self.pattern.matches(response):
            return f"expected {self.pattern}, got {brief(response)}"
        return self.check(response) if self.check else None


def brief(response: bytes, limit: int = 24) -> str:
    """A response in hex for messages: long data shortened, the status word always shown."""
    if not response:
        return "(nothing)"
    if len(response) <= limit + 2:
        return response.hex().upper()
    head, sw = response[:limit].hex().upper(), response[-2:].hex().upper()
    return f"{head}… ({len(response) - 2} bytes) {sw}"


@functools.lru_cache(maxsize=8192)
def _pattern(text: str) -> Pattern:
    """A response pattern; the same text is compiled once (patterns are immutable)."""
    return Pattern(text)


@functools.lru_cache(maxsize=1024)
def _status(*sws: int) -> Pattern:
    return _pattern(" | ".join(f"{sw:04X}" for sw in sws))


class _Refused(Exception):
    """Internal: the command ends in an error status word (any of `sws`), after `effect`
    (the EF it named made current)."""

    def __init__(self, *sws: int, effect: Effect | None = None) -> None:
        super().__init__(*sws)
        self.sws = sws
        self.effect = effect

    def __str__(self) -> str:
        return " ".join(f"{sw:04X}" for sw in self.sws)


@dataclass
class _RecordTarget:
    """The EF a record command acts on, once the checks before its own have passed."""

    app: AppSpec
    ef: EfSpec
    records: list[bytes] | None  # free area: its records as they are now; else None
    make_current: Effect | None  # what naming it by SFI did


def _expects_answer(apdu: Apdu, ef: EfSpec) -> bool:
    return apdu.le is not None and not apdu.data


def _carries_data(apdu: Apdu, ef: EfSpec) -> bool:
    return bool(apdu.data) and apdu.le is None


def _amount_fits(apdu: Apdu, ef: EfSpec) -> bool:
    return 1 <= len(apdu.data) <= (ef.record_size or 4)


@dataclass
class Session:
    """The card's volatile state: selection and security status (cleared by reset)."""

    app: AppSpec | None = None
    current: int | None = None
    verified: set[ObjectKey] = field(default_factory=set)
    # The challenge an EXTERNAL AUTHENTICATE would check: none, or not known (another
    # application was selected since: whether that drops it, no document says).
    challenge: bytes | Unknown | None = None
    last_challenge: bytes | None = None  # the last GET CHALLENGE answer, used up or not
    secure: SmState | None = None  # an open secure-messaging session (secure_messaging.py)


class Kept(NamedTuple):
    """What a card must keep across a power loss (`CardModel.kept`), each part sorted."""

    counters: tuple[tuple[ObjectKey, int], ...]
    values: tuple[tuple[ObjectKey, bytes], ...]
    written: tuple[tuple[ObjectKey, bytes], ...]
    records: tuple[tuple[ObjectKey, tuple[bytes, ...]], ...]


class CardModel:
    """One run of commands against a card described by `facts`."""

    def __init__(self, facts: CardFacts, *, fresh: bool) -> None:
        self.facts = facts
        self.session = Session()
        source = facts.initial_counters if fresh else facts.live_counters
        self.counters: dict[ObjectKey, int] = dict(source)
        self.values: dict[ObjectKey, bytes] = dict(facts.pin_values)
        self.durable_changes = 0  # counters, PINs and EFs written: what a restart must keep
        # Free-area EFs as this example wrote them (the facts keep the initial bytes).
        self.written: dict[ObjectKey, bytearray] = {}
        self.record_lists: dict[ObjectKey, list[bytes]] = {}
        self.irreversible = False  # a change APDUs cannot undo (a write, a key counter)
        self.pss_signatures: set[bytes] = set()  # each must be new
        # PINs a VERIFY with a value went to (the card wrote their counters); the bench
        # empties it at every power-on.
        self.tried: set[ObjectKey] = set()
        self.initially_kept = self.kept()

    def kept(self) -> Kept:
        """What the card must keep across a power loss, as the model knows it now."""
        facts = self.facts
        records = [
            (key, tuple(found))
            for key, found in self.record_lists.items()
            if len(found) + 1 != facts.record_ends.get(key, 1)
            or any(facts.records.get((*key, n)) != r for n, r in enumerate(found, 1))
        ]
        return Kept(
            tuple(sorted(self.counters.items())),
            tuple(sorted(self.values.items())),
            tuple(sorted((key, bytes(data)) for key, data in self.written.items())),
            tuple(sorted(records)),
        )

    # -- queries the state machine uses to pick commands ---------------------------------

    @property
    def app(self) -> AppSpec | None:
        return self.session.app

    def present_apps(self) -> list[AppSpec]:
        return [app for app in self.facts.catalogue if self.facts.apps.get(app.aid)]

    def pins(self) -> list[tuple[AppSpec, PinSpec]]:
        """PINs of the selected application that exist on this card."""
        app = self.session.app
        return [] if app is None else [(app, pin) for pin in self.pins_in(app)]

    def pins_in(self, app: AppSpec) -> list[PinSpec]:
        """PINs of `app` that exist on this card."""
        return [pin for pin in app.pins if self.facts.present(app, pin.fid) is True]

    def keys(self) -> list[tuple[AppSpec, KeySpec]]:
        app = self.session.app
        if app is None:
            return []
        return [(app, key) for key in app.keys if self.facts.present(app, key.fid) is True]

    def efs(self) -> list[tuple[AppSpec, EfSpec]]:
        app = self.session.app
        if app is None:
            return []
        return [(app, ef) for ef in app.efs if self.facts.present(app, ef.fid) is True]

    def remaining(self, app: AppSpec, pin: PinSpec) -> int | None:
        return self.counters.get((app.aid, pin.fid))

    def value(self, app: AppSpec, pin: PinSpec) -> bytes | None:
        return self.values.get((app.aid, pin.fid))

    def is_verified(self, app: AppSpec, fid: int) -> bool:
        return (app.aid, fid) in self.session.verified

    # -- power --------------------------------------------------------------------------

    def expect_atr(self) -> Expectation:
        """Reset or power cycle: the ATR, and a session back to the power-on state."""

        def effect(atr: bytes) -> None:
            self.session = Session()
            if self.facts.atr is None:
                self.facts.atr = atr

        atr = self.facts.atr
        pattern = Pattern.exact(atr) if atr is not None else _pattern("3B [*] | 3F [*]")
        return Expectation(pattern, SECTION_POWER, effect, portable=atr is not None)

    # -- commands -----------------------------------------------------------------------

    def expect(self, command: bytes) -> Expectation:
        """What the card must answer; secure messaging is secure_messaging.expect's."""
        return secure_messaging.expect(self, command, self._expect_plain)

    def _expect_plain(self, command: bytes) -> Expectation:
        try:
            apdu = Apdu.parse(command)
        except MalformedApdu:
            return Expectation(_status(SW.WRONG_LENGTH), SECTION_CARD)
        try:
            return self._dispatch(apdu)
        except _Refused as refused:
            known = apdu.cla in (0, 0x80) and apdu.ins in _SECTIONS
            section = _SECTIONS[INS(apdu.ins)] if known else SECTION_CARD
            return Expectation(_status(*refused.sws), section, refused.effect)

    def _dispatch(self, apdu: Apdu) -> Expectation:
        cla, ins = apdu.cla, apdu.ins
        if cla not in (0x00, 0x80):
            raise _Refused(*_class_errors(cla, ins))
        own, other = (ISO_INS, PROPRIETARY_INS) if cla == 0x00 else (PROPRIETARY_INS, ISO_INS)
        if ins not in own:
            if ins in other:
                raise _Refused(SW.CLA_NOT_SUPPORTED, SW.INS_NOT_SUPPORTED)
            raise _Refused(SW.INS_NOT_SUPPORTED)
        if apdu.extended and not self.facts.quirks.extended_length:
            raise _Refused(SW.WRONG_LENGTH)
        if cla == 0x00 and ins in WRITE_INS:
            return self._write(apdu)
        handler = self._handlers[ins]
        return handler(self, apdu)

    def _write(self, apdu: Apdu) -> Expectation:
        """Writes and EXTERNAL AUTHENTICATE: exact in free-area applications
        (docs/free-area.md); the national APs have nothing to write, so any error status
        there (the content is unchanged, which later reads check)."""
        app = self.session.app
        if app is None or not app.free_area:
            return Expectation(_pattern("6..."), SECTION_CARD, portable=False)
        handler = {
            INS.UPDATE_BINARY: self._update_binary,
            INS.UPDATE_RECORD: self._update_record,
            INS.APPEND_RECORD: self._append_record,
            INS.DECREASE: self._step_counter,
            INS.INCREASE: self._step_counter,
            INS.EXTERNAL_AUTHENTICATE: self._external_authenticate,
        }[INS(apdu.ins)]
        try:
            return handler(app, apdu)
        except _Refused as refused:
            return Expectation(_status(*refused.sws), SECTION_FREE, refused.effect)

    # the free area (docs/free-area.md: the order of the checks is the order of the raises)

    def _named_ef(self, sfi: int) -> tuple[CardObject | Unknown, Effect | None]:
        """The object a command names by SFI (6A82 if absent; made current), or the current
        EF when `sfi` is 0 (6986 if none)."""
        if not sfi:
            return self._current(), None
        target = self._object(sfi)

        def make_current(response: bytes) -> None:
            self.session.current = sfi

        return target, make_current

    def _record_ef(
        self,
        apdu: Apdu,
        operation: str,
        structures: tuple[Structure, ...],
        lengths_ok: Callable[[Apdu, EfSpec], bool],
        mode: int = 0x04,
    ) -> _RecordTarget | Expectation:
        """The EF of READ / UPDATE / APPEND RECORD, DECREASE and INCREASE, checked in the
        order that is the status-word precedence: P2 names it (SFI << 3 | `mode`: that EF,
        made current even when a later check fails; `mode` alone: the current EF; other
        modes 6A86), its structure (6981), the lengths (6700), the rule of `operation`
        (6982), then the record P1 numbers (6A83; `mode` 04) where the model knows how many
        there are. An EF the model does not know yet: the expectation "anything"."""
        if apdu.p2 & 0x07 != mode:
            raise _Refused(SW.INCORRECT_P1_P2)
        target, effect = self._named_ef(apdu.p2 >> 3)
        app = self.session.app
        if isinstance(target, Unknown) or app is None:
            section = SECTION_READ if operation == "read" else SECTION_FREE
            return Expectation(_pattern("[*]"), section, effect, portable=False)
        if not isinstance(target, EfSpec) or target.structure not in structures:
            raise _Refused(SW.COMMAND_INCOMPATIBLE_WITH_FILE, effect=effect)
        if not lengths_ok(apdu, target):
            raise _Refused(SW.WRONG_LENGTH, effect=effect)
        if not self._granted(app, target.rule(operation)):
            raise _Refused(SW.SECURITY_STATUS_NOT_SATISFIED, effect=effect)
        records = self._records(app, target) if app.free_area else None
        if mode == 0x04 and records is not None and not 1 <= apdu.p1 <= len(records):
            raise _Refused(SW.RECORD_NOT_FOUND, effect=effect)
        return _RecordTarget(app, target, records, effect)

    def _records(self, app: AppSpec, ef: EfSpec) -> list[bytes]:
        """The records of a free-area EF as they are now (copied from the facts at first)."""
        key = (app.aid, ef.fid)
        records = self.record_lists.get(key)
        if records is None:
            end = self.facts.record_ends.get(key, 1)
            records = [self.facts.records[(app.aid, ef.fid, n)] for n in range(1, end)]
            self.record_lists[key] = records
        return records

    def holds(self, app: AppSpec, ef: EfSpec) -> list[bytes] | bytes:
        """What a free-area EF holds now: its records, or its bytes (as far as known)."""
        if ef.structure is not Structure.TRANSPARENT:
            return list(self._records(app, ef))
        written = self.written.get((app.aid, ef.fid))
        if written is not None:
            return bytes(written)
        return self.facts.content(app, ef).known(0, ef.size or 0) or b""

    def _wrote(self) -> None:
        self.durable_changes += 1
        self.irreversible = True

    def _update_binary(self, app: AppSpec, apdu: Apdu) -> Expectation:
        if apdu.p1 & 0x80 and apdu.p1 & 0x60:
            raise _Refused(SW.INCORRECT_P1_P2)
        sfi = apdu.p1 & 0x1F if apdu.p1 & 0x80 else 0
        offset = apdu.p2 if sfi else apdu.p1 << 8 | apdu.p2
        ef, make_current = self._named_ef(sfi)
        try:
            if not isinstance(ef, EfSpec) or ef.structure is not Structure.TRANSPARENT:
                raise _Refused(SW.COMMAND_INCOMPATIBLE_WITH_FILE)
            if not apdu.data or apdu.le is not None:
                raise _Refused(SW.WRONG_LENGTH)
            if not self._granted(app, ef.rule("update")):
                raise _Refused(SW.SECURITY_STATUS_NOT_SATISFIED)
            size = ef.size or 0
            if offset >= size:
                raise _Refused(SW.OFFSET_OUTSIDE_EF)
            if offset + len(apdu.data) > size:
                raise _Refused(NOT_ENOUGH_MEMORY)
        except _Refused as refused:
            return Expectation(_status(*refused.sws), SECTION_FREE, make_current)
        key, data = (app.aid, ef.fid), apdu.data

        def write(response: bytes) -> None:
            if make_current is not None:
                make_current(response)
            content = self.written.get(key)
            if content is None:
                known = self.facts.content(app, ef).known(0, size)
                content = self.written[key] = bytearray(known or bytes(size))
            content[offset : offset + len(data)] = data
            self._wrote()

        return Expectation(_status(SW.OK), SECTION_FREE, write)

    def _update_record(self, app: AppSpec, apdu: Apdu) -> Expectation:
        both = (Structure.RECORD, Structure.COUNTER)
        found = self._record_ef(apdu, "update", both, _carries_data)
        if isinstance(found, Expectation):
            return found
        ef, records, number, data = found.ef, self._records(found.app, found.ef), apdu.p1, apdu.data
        counter = ef.structure is Structure.COUNTER
        try:
            _sizes_and_values(
                (len(data) > (ef.record_size or 0), SW.WRONG_LENGTH),
                (counter and int.from_bytes(data, "big") > (ef.maximum or 0), SW.WRONG_DATA),
            )
        except _Refused as refused:
            raise _Refused(*refused.sws, effect=found.make_current) from None
        if counter and len(data) != ef.record_size:  # a shorter value: no rule for it
            return Expectation(_pattern("9000 | 6700"), SECTION_FREE, found.make_current)

        def write(response: bytes) -> None:
            if found.make_current is not None:
                found.make_current(response)
            records[number - 1] = data
            self._wrote()

        return Expectation(_status(SW.OK), SECTION_FREE, write)

    def _append_record(self, app: AppSpec, apdu: Apdu) -> Expectation:
        if apdu.p1 != 0x00:
            raise _Refused(SW.INCORRECT_P1_P2)
        found = self._record_ef(apdu, "append", (Structure.RECORD,), _carries_data, mode=0x00)
        if isinstance(found, Expectation):
            return found
        ef, records, data = found.ef, self._records(found.app, found.ef), apdu.data
        try:
            _sizes_and_values(
                (len(records) >= (ef.max_records or 0), NOT_ENOUGH_MEMORY),
                (len(data) > (ef.record_size or 0), SW.WRONG_LENGTH),
            )
        except _Refused as refused:
            raise _Refused(*refused.sws, effect=found.make_current) from None

        def append(response: bytes) -> None:
            if found.make_current is not None:
                found.make_current(response)
            records.append(data)
            self._wrote()

        return Expectation(_status(SW.OK), SECTION_FREE, append)

    def _step_counter(self, app: AppSpec, apdu: Apdu) -> Expectation:
        """DECREASE / INCREASE: the amount (1..width bytes) taken from or added to the
        counter record P1; 6985 and nothing changed past 0 or the maximum."""
        operation = "decrease" if apdu.ins == INS.DECREASE else "increase"
        found = self._record_ef(apdu, operation, (Structure.COUNTER,), _amount_fits)
        if isinstance(found, Expectation):
            return found
        ef, records, number = found.ef, self._records(found.app, found.ef), apdu.p1
        width, make_current = ef.record_size or 4, found.make_current
        amount = int.from_bytes(apdu.data, "big")
        value = int.from_bytes(records[number - 1], "big")
        new = value - amount if operation == "decrease" else value + amount
        if not 0 <= new <= (ef.maximum or 0):
            return Expectation(_status(SW.CONDITIONS_NOT_SATISFIED), SECTION_FREE, make_current)
        stored = new.to_bytes(width, "big")

        def step(response: bytes) -> None:
            if make_current is not None:
                make_current(response)
            records[number - 1] = stored
            self._wrote()

        answer = f"{stored.hex().upper()} 9000" if apdu.le is not None else "9000"
        return Expectation(_pattern(answer), SECTION_FREE, step)

    def _external_authenticate(self, app: AppSpec, apdu: Apdu) -> Expectation:
        """AES-CMAC over the pending challenge: 9000 opens key:N (and, as VERIFY does for
        PINs, puts its counter back); wrong 63Cx or 6300; the challenge is used up."""
        if apdu.p1 != 0x00 or apdu.p2 & 0x80 == 0:
            raise _Refused(SW.INCORRECT_P1_P2)
        number = apdu.p2 & 0x7F
        key = app.aes_key(number)
        bad_length = len(apdu.data) != 16 or apdu.le is not None
        if key is None:  # which of the two a card checks first is not written down
            raise _Refused(*[SW.WRONG_LENGTH] * bad_length, SW.REFERENCE_DATA_NOT_FOUND)
        if bad_length:
            raise _Refused(SW.WRONG_LENGTH)
        credential = (app.aid, key_credential(number))
        remaining = self.counters.get(credential)
        session = self.session
        challenge = session.challenge
        if remaining == 0 or challenge is None:
            sws: list[int] = [self.facts.quirks.blocked_sw] if remaining == 0 else []
            sws += [SW.CONDITIONS_NOT_SATISFIED] if challenge is None else []

            def spent(response: bytes) -> None:
                if sw_of(response) != SW.CONDITIONS_NOT_SATISFIED:
                    session.challenge = UNKNOWN if session.challenge is not None else None

            return Expectation(_status(*sws), SECTION_FREE, spent)
        right = False
        if isinstance(challenge, bytes):
            right = apdu.data == cmac(self.facts.aes_keys[(app.aid, number)], challenge)

        def answered(response: bytes) -> None:
            sw = sw_of(response)
            session.challenge = None
            if sw == SW.OK:
                session.verified.add(credential)
                if key.tries is not None:
                    self._set_key_counter(credential, key.tries)
            elif sw & 0xFFF0 == SW.VERIFY_FAILED or sw == NO_INFORMATION:
                session.verified.discard(credential)
                if key.tries is not None:
                    self._set_key_counter(credential, sw & 0x0F)

        if isinstance(challenge, Unknown):
            wrong = "6300" if key.tries is None else "63C."
            pattern = _pattern(f"9000 | 6985 | {wrong}")
        elif right:
            pattern = _status(SW.OK)
        elif key.tries is None:
            pattern = _status(NO_INFORMATION)
        else:
            pattern = _status(0x63C0 | (remaining - 1)) if remaining else _pattern("63C.")
        return Expectation(pattern, SECTION_FREE, answered)

    def _set_key_counter(self, key: ObjectKey, remaining: int) -> None:
        if self.counters.get(key) != remaining:
            self.irreversible = True
        self._set_counter(key, remaining)

    # SELECT (docs/card-spec.md §2.1, docs/decisions.md #9) ------------------------------------

    def _select(self, apdu: Apdu) -> Expectation:
        if apdu.p1 == 0x04:
            return self._select_name(apdu)
        if apdu.p1 == 0x02:
            return self._select_ef(apdu)
        if apdu.p1 == 0x00:
            if apdu.data == b"\x3f\x00":
                raise _Refused(SW.FILE_NOT_FOUND)
            if self.session.app is None:
                raise _Refused(SW.INCORRECT_P1_P2)
            return Expectation(_status(SW.OK), SECTION_CARD)
        raise _Refused(SW.INCORRECT_P1_P2)

    def _select_name(self, apdu: Apdu) -> Expectation:
        name = apdu.data
        if not name:
            raise _Refused(SW.FILE_NOT_FOUND)
        if apdu.p2 not in (0x00, 0x0C):
            # A name on the card: 6A86. Another: 6A82 or 6A86 (which check a card makes
            # first is not known; the emulator answers 6A82).
            on_card = ISD_AID.startswith(name) or any(
                app.aid.startswith(name) and self.facts.apps.get(app.aid) is True
                for app in self.facts.catalogue
            )
            sws = (SW.INCORRECT_P1_P2,) if on_card else (SW.INCORRECT_P1_P2, SW.FILE_NOT_FOUND)
            raise _Refused(*sws)
        fci = apdu.p2 == 0x00
        if ISD_AID.startswith(name):

            def back_to_power_on(response: bytes) -> None:
                self.session = Session()

            # An FCI template (ISO 7816-4 §7.4.1: tag 6F), whatever it holds.
            pattern = _pattern("6F [*] 9000") if fci else _status(SW.OK)
            return Expectation(pattern, SECTION_CARD, back_to_power_on, portable=not fci)
        candidates = [app for app in self.facts.catalogue if app.aid.startswith(name)]
        present = [app for app in candidates if self.facts.apps.get(app.aid) is not False]
        if not present:
            raise _Refused(SW.FILE_NOT_FOUND)
        app = present[0]
        known = self.facts.apps.get(app.aid)

        def select(response: bytes) -> None:
            if sw_of(response) != SW.OK:
                self.facts.apps[app.aid] = False
                return
            self.facts.apps[app.aid] = True
            session = self.session
            if app is not session.app or self.facts.quirks.reselect_clears_state:
                session.verified.clear()
            if session.challenge is not None:
                session.challenge = UNKNOWN
            session.app = app
            session.current = None

        ok = (b"\x6f" + bytes((len(app.aid) + 2, 0x84, len(app.aid))) + app.aid).hex().upper()
        answer = f"{ok} 9000" if fci else "9000"
        pattern = _pattern(answer if known else f"{answer} | 6A82")
        return Expectation(pattern, SECTION_CARD, select)

    def _select_ef(self, apdu: Apdu) -> Expectation:
        if apdu.p2 != 0x0C:
            raise _Refused(SW.INCORRECT_P1_P2)
        if len(apdu.data) != 2:
            raise _Refused(SW.WRONG_LENGTH)
        app = self.session.app
        if app is None:
            raise _Refused(SW.FILE_NOT_FOUND)
        fid = int.from_bytes(apdu.data, "big")
        present = self.facts.present(app, fid)
        if present is False:
            raise _Refused(SW.FILE_NOT_FOUND)

        def select(response: bytes) -> None:
            found = sw_of(response) == SW.OK
            self.facts.objects[(app.aid, fid)] = found
            if found:
                self.session.current = fid

        pattern = _status(SW.OK) if present is True else _status(SW.OK, SW.FILE_NOT_FOUND)
        return Expectation(pattern, SECTION_CARD, select)

    # objects ---------------------------------------------------------------------------

    def _object(self, fid: int) -> CardObject | Unknown:
        """The object `fid` of the selected application: FILE_NOT_FOUND if it is absent."""
        app = self.session.app
        if app is None or not fid:
            raise _Refused(SW.FILE_NOT_FOUND)
        present = self.facts.present(app, fid)
        if present is False:
            raise _Refused(SW.FILE_NOT_FOUND)
        if isinstance(present, Unknown):
            return UNKNOWN
        found = app.ef(fid) or app.pin(fid) or app.key(fid)
        return found if found is not None else UNKNOWN

    def _current(self) -> CardObject | Unknown:
        app, fid = self.session.app, self.session.current
        if app is None or fid is None:
            raise _Refused(SW.NO_CURRENT_EF)
        found = app.ef(fid) or app.pin(fid) or app.key(fid)
        return found if found is not None else UNKNOWN

    def _granted(self, app: AppSpec, pins: frozenset[int]) -> bool:
        return not pins or any((app.aid, fid) in self.session.verified for fid in pins)

    # READ BINARY (docs/card-spec.md §9) / READ RECORD -----------------------------------------

    def _read_binary(self, apdu: Apdu) -> Expectation:
        effect: Effect | None = None
        if apdu.p1 & 0x80:
            if apdu.p1 & 0x60:
                raise _Refused(SW.INCORRECT_P1_P2)
            sfi = apdu.p1 & 0x1F
            target = self._object(sfi)
            offset = apdu.p2

            def make_current(response: bytes, sfi: int = sfi) -> None:
                self.session.current = sfi

            effect = make_current
            try:
                return self._read_ef(apdu, target, offset, effect)
            except _Refused as refused:
                return Expectation(_status(*refused.sws), SECTION_READ, effect)
        return self._read_ef(apdu, self._current(), apdu.p1 << 8 | apdu.p2, None)

    def _read_ef(
        self, apdu: Apdu, target: CardObject | Unknown, offset: int, before: Effect | None
    ) -> Expectation:
        app = self.session.app
        if isinstance(target, Unknown) or app is None:
            return Expectation(_pattern("[*]"), SECTION_READ, before, portable=False)
        if not isinstance(target, EfSpec) or target.structure is not Structure.TRANSPARENT:
            raise _Refused(SW.COMMAND_INCOMPATIBLE_WITH_FILE)
        le = apdu.le
        if le is None or apdu.data:
            raise _Refused(SW.WRONG_LENGTH)
        if not self._granted(app, target.read):
            raise _Refused(SW.SECURITY_STATUS_NOT_SATISFIED)
        written = self.written.get((app.aid, target.fid))
        content = EfContent.exact(bytes(written)) if written else self.facts.content(app, target)
        size_max = content.size_max
        if size_max is not None and offset >= size_max:
            raise _Refused(SW.OFFSET_OUTSIDE_EF)
        if offset < content.size_min:
            count_min = min(le, content.size_min - offset)
            count_max = le if size_max is None else min(le, size_max - offset)
            text = f"{content.pattern(offset, count_min, count_max)} 9000"
        else:
            count_max = le if size_max is None else min(le, size_max - offset)
            text = f"{content.pattern(offset, 1, count_max)} 9000 | 6B00"

        def learn(response: bytes) -> None:
            if before is not None:
                before(response)
            if sw_of(response) == SW.OFFSET_OUTSIDE_EF:
                content.size_max = min(offset, content.size_max or offset)
                return
            chunk = response[:-2]
            content.learn(offset, chunk)
            if len(chunk) < le:
                content.size_min = content.size_max = offset + len(chunk)

        return Expectation(_pattern(text), SECTION_READ, learn, portable=False)

    def _read_record(self, apdu: Apdu) -> Expectation:
        """READ RECORD P1; P2 = 04 reads the current EF, (SFI << 3) | 04 that EF, made current."""
        structures = (Structure.RECORD, Structure.COUNTER)
        found = self._record_ef(apdu, "read", structures, _expects_answer)
        if isinstance(found, Expectation):
            return found
        app, target, before = found.app, found.ef, found.make_current
        number, le = apdu.p1, apdu.le or 0
        if found.records is not None:  # the free area: known record by record, as written
            pattern = _pattern(f"{found.records[number - 1][:le].hex().upper()} 9000")
            return Expectation(pattern, SECTION_READ, before)
        ef_key = (app.aid, target.fid)
        end = self.facts.record_ends.get(ef_key)
        known = self.facts.records.get((app.aid, target.fid, number))

        def learn(response: bytes) -> None:
            if before is not None:
                before(response)
            if sw_of(response) == SW.RECORD_NOT_FOUND and number:
                self.facts.record_ends[ef_key] = min(number, end or number)
            elif sw_of(response) == SW.OK and len(response) - 2 < le:
                self.facts.records[(app.aid, target.fid, number)] = response[:-2]

        if number == 0 or (end is not None and number >= end):
            pattern = _status(SW.RECORD_NOT_FOUND)
        elif known is not None:
            pattern = _pattern(f"{known[:le].hex().upper()} 9000")
        else:
            pattern = _pattern(f"[1-{le}] 9000 | 6A83")
        return Expectation(pattern, SECTION_READ, learn, portable=False)

    # PINs (docs/card-spec.md §7, docs/decisions.md #1-#6, #15-#17, #31) -----------------------

    def _pin(self, p2: int) -> tuple[AppSpec, PinSpec]:
        if p2 & 0xE0 != 0x80:
            raise _Refused(SW.INCORRECT_P1_P2)
        app = self.session.app
        if p2 == 0x80:
            target = self._current()
            if not isinstance(target, PinSpec):
                raise _Refused(SW.NO_CURRENT_EF)
        else:
            found = app.pin(p2 & 0x1F) if app is not None else None
            if found is None or self.facts.present(app, found.fid) is not True:  # type: ignore[arg-type]
                raise _Refused(SW.REFERENCE_DATA_NOT_FOUND)
            target = found
        assert app is not None
        return app, target

    def _verify(self, apdu: Apdu) -> Expectation:
        if apdu.p1 != 0x00:
            raise _Refused(SW.INCORRECT_P1_P2)
        app, pin = self._pin(apdu.p2)
        key = (app.aid, pin.fid)
        if apdu.le is not None or len(apdu.data) > MAX_VERIFY_LENGTH:
            raise _Refused(SW.WRONG_LENGTH)
        remaining = self.counters.get(key)
        quirks = self.facts.quirks
        if not apdu.data:
            if key in self.session.verified and quirks.verified_query_sw is not None:
                return Expectation(_status(quirks.verified_query_sw), SECTION_PINS)

            def learn_count(response: bytes) -> None:
                sw = sw_of(response)
                if sw & 0xFFF0 == SW.VERIFY_FAILED:
                    self._set_counter(key, sw & 0x0F)

            pattern = _pattern("63C.") if remaining is None else _status(0x63C0 | remaining)
            return Expectation(pattern, SECTION_PINS, learn_count)
        if remaining == 0:
            raise _Refused(quirks.blocked_sw)
        self.tried.add(key)
        value = self.values.get(key)
        if value is None:

            def learn(response: bytes) -> None:
                sw = sw_of(response)
                if sw == SW.OK:
                    self._set_counter(key, pin.max_tries)
                    self.session.verified.add(key)
                elif sw & 0xFFF0 == SW.VERIFY_FAILED:
                    self.session.verified.discard(key)
                    self._set_counter(key, sw & 0x0F)

            pattern = _pattern(f"9000 | 63C. | {quirks.blocked_sw:04X}")
            return Expectation(pattern, SECTION_PINS, learn)
        if apdu.data == value:

            def verified(response: bytes) -> None:
                self._set_counter(key, pin.max_tries)
                self.session.verified.add(key)

            return Expectation(_status(SW.OK), SECTION_PINS, verified)

        def failed(response: bytes) -> None:
            self.session.verified.discard(key)
            sw = sw_of(response)
            if sw & 0xFFF0 == SW.VERIFY_FAILED:
                self._set_counter(key, sw & 0x0F)

        if remaining is None:
            pattern = _pattern(f"63C. | {quirks.blocked_sw:04X}")
        else:
            pattern = _status(0x63C0 | (remaining - 1))
        return Expectation(pattern, SECTION_PINS, failed)

    def _set_counter(self, key: ObjectKey, remaining: int) -> None:
        if self.counters.get(key) != remaining:
            self.durable_changes += 1
        self.counters[key] = remaining
        self.facts.live_counters[key] = remaining

    def _change(self, apdu: Apdu) -> Expectation:
        if apdu.p1 != (0x01 if apdu.ins == INS.CHANGE_REFERENCE_DATA else 0x00):
            raise _Refused(SW.INCORRECT_P1_P2)
        app, pin = self._pin(apdu.p2)
        key = (app.aid, pin.fid)
        if len(apdu.data) > MAX_VERIFY_LENGTH:  # no rule for CHANGE: refused one way or another
            raise _Refused(
                SW.WRONG_LENGTH,
                SW.WRONG_DATA,
                SW.SECURITY_STATUS_NOT_SATISFIED,
                SW.CONDITIONS_NOT_SATISFIED,
                self.facts.quirks.blocked_sw,
            )
        if pin.change_ins != apdu.ins:
            raise _Refused(SW.CONDITIONS_NOT_SATISFIED)
        if not apdu.data or apdu.le is not None:
            raise _Refused(SW.WRONG_LENGTH)
        if self.counters.get(key) == 0:
            raise _Refused(self.facts.quirks.blocked_sw, SW.SECURITY_STATUS_NOT_SATISFIED)
        if key not in self.session.verified:
            raise _Refused(SW.SECURITY_STATUS_NOT_SATISFIED)
        if re.fullmatch(pin.value_format, apdu.data.decode("latin-1")) is None:
            raise _Refused(SW.WRONG_DATA)

        def changed(response: bytes) -> None:
            self.values[key] = apdu.data
            self.durable_changes += 1

        return Expectation(_status(SW.OK), SECTION_PINS, changed)

    # keys (docs/card-spec.md §8, docs/decisions.md #7, #8, #20c, #21, #21a, #32, #33) ---------

    def _key(self, p2: int) -> tuple[AppSpec, KeySpec] | Unknown:
        app = self.session.app
        if p2 == 0x80:
            target = self._current()
        elif p2 & 0xE0 == 0x80:
            target = self._object(p2 & 0x1F)
        elif p2 == 0x00 and app is not None and any(k.default for k in app.keys):
            target = next(k for k in app.keys if k.default)
        else:
            raise _Refused(SW.INCORRECT_P1_P2)
        if isinstance(target, Unknown):
            return UNKNOWN
        if not isinstance(target, KeySpec):
            raise _Refused(SW.NO_CURRENT_EF)
        assert app is not None
        return app, target

    def _sign(self, apdu: Apdu) -> Expectation:
        if apdu.extended:
            raise _Refused(SW.WRONG_LENGTH)
        if apdu.p1 > 0x05:
            raise _Refused(SW.INCORRECT_P1_P2)
        found = self._key(apdu.p2)
        if isinstance(found, Unknown):
            return Expectation(_pattern("[*]"), SECTION_SIGN, portable=False)
        app, key = found
        if not self._granted(app, key.use):
            raise _Refused(SW.SECURITY_STATUS_NOT_SATISFIED)
        data, scheme = apdu.data, apdu.p1
        public = self.facts.public_key(app, key)

        def check(response: bytes) -> str | None:
            if public is None or sw_of(response) != SW.OK:
                return None
            signature = response[:-2]
            if scheme in PSS_SCHEMES:  # a random salt makes each signature new
                if signature in self.pss_signatures:
                    return f"P1 {scheme:02X}: the same RSASSA-PSS signature as before (no salt?)"
                self.pss_signatures.add(signature)
            return signature_problem(public, scheme, data, signature)

        if key.how is not KeyUse.SIGN:
            # docs/card-spec.md §6: this key answers INTERNAL AUTHENTICATE "instead"; whether 80 2A
            # is refused or signs too is not recorded anywhere. A signature must still be P1's
            # scheme exactly, and differs between cards (their keys; PSS is randomised).
            pattern = _pattern(f"6985 | 6700 | [{RSA_BYTES}] 9000")
            return Expectation(pattern, SECTION_SIGN, check=check, portable=False)
        bad_length = (
            not 1 <= len(data) <= RSA_BYTES - 11
            if scheme == 0
            else not data or (scheme in (2, 4) and len(data) != 32)
        )
        if bad_length:
            raise _Refused(SW.WRONG_LENGTH, SW.CONDITIONS_NOT_SATISFIED)
        return Expectation(
            _pattern(f"[{RSA_BYTES}] 9000"), SECTION_SIGN, check=check, portable=False
        )

    def _internal_authenticate(self, apdu: Apdu) -> Expectation:
        if apdu.p1 != 0x00 or apdu.p2 == 0x00:
            raise _Refused(SW.INCORRECT_P1_P2)
        found = self._key(apdu.p2)
        if isinstance(found, Unknown):
            return Expectation(_pattern("[*]"), SECTION_SIGN, portable=False)
        app, key = found
        if not self._granted(app, key.use):
            raise _Refused(SW.SECURITY_STATUS_NOT_SATISFIED)
        if key.how is not KeyUse.INTERNAL_AUTHENTICATE:
            raise _Refused(SW.CONDITIONS_NOT_SATISFIED)
        if apdu.extended or apdu.le is None or not 1 <= len(apdu.data) <= 255:
            raise _Refused(SW.WRONG_LENGTH)
        public, challenge = self.facts.public_key(app, key), apdu.data

        def check(response: bytes) -> str | None:
            # docs/card-spec.md §6, free-area.md: PKCS#1 v1.5 of the challenge's SHA-256
            # DigestInfo, the whole recovered block compared.
            if public is None:
                return None
            return signature_problem(public, 0x03, challenge, response[:-2])

        pattern = _pattern(f"[{RSA_BYTES}] 9000")
        return Expectation(pattern, SECTION_SIGN, check=check, portable=False)

    def _set_session_key(self, apdu: Apdu) -> Expectation:
        """SET SESSION KEY: refused as measured per application (docs/card-spec.md §2.4, §4)."""
        app = self.session.app
        if app is None:
            raise _Refused(SW.INS_NOT_SUPPORTED)
        if app.session_key_pins and not self._granted(app, app.session_key_pins):
            raise _Refused(SW.SECURITY_STATUS_NOT_SATISFIED)
        raise _Refused(*app.session_key_sws)

    # other ISO commands ----------------------------------------------------------------

    def _get_challenge(self, apdu: Apdu) -> Expectation:
        if apdu.p1 or apdu.p2:
            raise _Refused(SW.INCORRECT_P1_P2)
        if apdu.extended:
            raise _Refused(SW.CONDITIONS_NOT_SATISFIED)
        if apdu.le is None or apdu.data:
            raise _Refused(SW.WRONG_LENGTH)

        def pending(response: bytes) -> None:
            # The challenge for the next EXTERNAL AUTHENTICATE, if it is of a size that
            # command takes (docs/free-area.md); a new one replaces the last.
            fits = sw_of(response) == SW.OK and len(response) - 2 in CHALLENGE_SIZES
            self.session.challenge = response[:-2] if fits else None
            if sw_of(response) == SW.OK:
                self.session.last_challenge = response[:-2]

        return Expectation(_pattern(f"[{apdu.le}] 9000"), SECTION_CARD, pending, portable=False)

    def _get_data(self, apdu: Apdu) -> Expectation:
        # MF-level objects are optional (docs/card-spec.md §2.3): absent ones answer 6A88;
        # only the big ones need an extended Le, so a small one answers Le 00 whole.
        # With a profile the small ones' bytes are known (an emulator may still leave them out).
        tag = apdu.p1 << 8 | apdu.p2
        whole = apdu.le == 256 and not apdu.data and not apdu.extended
        if self.session.app is None and tag in SMALL_MF_OBJECTS and whole:
            known = self.facts.card_objects.get(tag)
            data = known.hex().upper() if known is not None else "[1-256]"
            return Expectation(_pattern(f"6A88 | {data} 9000"), SECTION_CARD, portable=False)
        return Expectation(_pattern("6A88 | 6700 | [1-65536] 9000"), SECTION_CARD, portable=False)

    def _get_response(self, apdu: Apdu) -> Expectation:
        # Answers come whole (T=1): there is never anything to fetch (docs/decisions.md #23).
        return Expectation(
            _status(SW.CONDITIONS_NOT_SATISFIED, SW.NO_PRECISE_DIAGNOSIS), SECTION_CARD
        )

    _handlers: ClassVar[dict[int, Callable[[CardModel, Apdu], Expectation]]] = {
        INS.SELECT: _select,
        INS.READ_BINARY: _read_binary,
        INS.READ_RECORD: _read_record,
        INS.VERIFY: _verify,
        INS.CHANGE_REFERENCE_DATA: _change,
        INS.CHANGE_KEY: _change,
        INS.COMPUTE_SIGNATURE: _sign,
        INS.INTERNAL_AUTHENTICATE: _internal_authenticate,
        INS.GET_CHALLENGE: _get_challenge,
        INS.GET_DATA: _get_data,
        INS.GET_RESPONSE: _get_response,
        INS.SET_SESSION_KEY: _set_session_key,
    }


_SECTIONS = {
    INS.SELECT: SECTION_CARD,
    INS.READ_BINARY: SECTION_READ,
    INS.READ_RECORD: SECTION_READ,
    INS.VERIFY: SECTION_PINS,
    INS.CHANGE_REFERENCE_DATA: SECTION_PINS,
    INS.CHANGE_KEY: SECTION_PINS,
    INS.COMPUTE_SIGNATURE: SECTION_SIGN,
    INS.INTERNAL_AUTHENTICATE: SECTION_SIGN,
}


def _sizes_and_values(*checks: tuple[bool, int]) -> None:
    """The last of docs/free-area.md's checks (6A84, 6700 for a record too long, 6A80):
    their order among themselves is not written down, so any that applies may answer."""
    sws = [sw for failed, sw in checks if failed]
    if sws:
        raise _Refused(*sws)


def _class_errors(cla: int, ins: int) -> tuple[int, ...]:
    """A CLA other than 00 / 80 (docs/decisions.md #19-#20, ISO 7816-4 §5.4.1): 40-7F are
    logical channels 4-19; 20-3F are reserved (RFU) and A0-FF unused: not a class; 01-1F
    carry a channel, secure messaging or chaining; 81-9F are proprietary, which a card may
    read as 01-1F or refuse (no document says)."""
    if 0x40 <= cla <= 0x7F:
        return (SW.LOGICAL_CHANNEL_NOT_SUPPORTED,)
    if 0x20 <= cla <= 0x3F or cla >= 0xA0:
        return (SW.CLA_NOT_SUPPORTED,)
    interindustry: int
    if cla & 0x03:
        interindustry = SW.LOGICAL_CHANNEL_NOT_SUPPORTED
    elif cla & 0x0C:
        select = ins == INS.SELECT
        interindustry = SW.SECURE_MESSAGING_NOT_SUPPORTED if select else SW.SM_DATA_OBJECT_MISSING
    else:
        interindustry = CHAINING_NOT_SUPPORTED
    return (SW.CLA_NOT_SUPPORTED, interindustry) if cla & 0x80 else (interindustry,)


def signature_problem(
    public: rsa.RSAPublicKey, scheme: int, data: bytes, signature: bytes
) -> str | None:
    """Why `signature` is not what P1 `scheme` (docs/card-spec.md §8) makes of `data`, or None."""
    if scheme in (4, 5):
        # docs/card.md: MGF1-SHA-256 and a 32-byte salt, checked exactly (not "some" salt).
        algorithm = Prehashed(hashes.SHA256()) if scheme == 4 else hashes.SHA256()
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT_LENGTH)
        try:
            public.verify(signature, data, pss, algorithm)
        except InvalidSignature:
            return (
                f"P1 {scheme:02X}: not an RSASSA-PSS signature (SHA-256, MGF1-SHA-256, "
                f"{PSS_SALT_LENGTH}-byte salt) of the input"
            )
        return None
    if scheme == 0:
        payload = data
    elif scheme == 1:
        payload = hashlib.sha256(data).digest()
    else:
        digest = data if scheme == 2 else hashlib.sha256(data).digest()
        payload = SHA256_DIGEST_INFO + digest
    try:  # OpenSSL checks the whole type-1 block (00 01, FF only, 00) and gives what follows
        if public.recover_data_from_signature(signature, _PKCS1, _NO_DIGEST_INFO) == payload:
            return None
    except (InvalidSignature, ValueError):
        pass
    numbers = public.public_numbers()
    recovered = pow(int.from_bytes(signature, "big"), numbers.e, numbers.n)
    block = recovered.to_bytes(RSA_BYTES, "big")
    expected = b"\x00\x01" + b"\xff" * (RSA_BYTES - 3 - len(payload)) + b"\x00" + payload
    if block != expected:
        what = ("the input as sent", "SHA-256 of the input", "a DigestInfo of the input")
        return (
            f"P1 {scheme:02X}: the signature is not PKCS#1 v1.5 (block type 01, FF padding) "
            f"of {what[min(scheme, 2)]}: recovered {block.hex().upper()[:48]}…"
        )
    return None
