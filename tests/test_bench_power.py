"""Planted bugs of the classes the bench used to miss (issue 9, items 2-6), and what catches
them: PIN values close to the right one, values just outside a PIN's format, counters and
writes that do not survive a restart, access rules of single EFs and keys under single
credentials, filler bytes, the exact signature scheme of each P1, the free area's access rules
per operation, counter bounds and challenge reuse, quirk-dependent session behaviour, EF
boundaries.

Every mutant is built through the card's public interface only: a wrapper with transmit /
power_on / reset / power_off / close around `mynacard.open_card` that changes answers (or the
card's state, with ordinary APDUs), or an opener that reopens a state directory from a stale
copy.  Each must be caught within the default budget, its minimal transcript failing on the
mutant and replaying green on the real emulator (the pattern of test_conformance_mutants.py).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC
from test_conformance import quirk_profile
from test_conformance_mutants import Rewritten

from mynacard import Profile, load_profile, open_card
from mynacard.conformance.adversarial import (
    NEAR_MISS_KINDS,
    OUTSIDE_KINDS,
    edges,
    near_misses,
    outside_format,
)
from mynacard.conformance.apdu import Apdu, MalformedApdu
from mynacard.conformance.bench import Bench, Deviation
from mynacard.conformance.profile import read_profile
from mynacard.conformance.replay import replay
from mynacard.conformance.runner import RunConfig, make_link, run_bench
from mynacard.conformance.targets import CardLike, EmulatorTarget
from mynacard.conformance.transcript import Action, Exchange
from mynacard.conformance.transcript import parse as parse_transcript
from mynacard.layers import Layer

JPKI = bytes.fromhex("D392F000260100000001")
TEXT = bytes.fromhex("D3921000310001010408")
VISUAL = bytes.fromhex("D3921000310001010402")
JUKI = bytes.fromhex("D3921000310001010401")
COMMON = bytes.fromhex("D3921000310001010100")
ISD = bytes.fromhex("A0000001510000")
# The PINs of the national applications by the profile's names (docs/card.md).
NATIONAL_PINS = {
    JPKI: {0x18: "auth", 0x1B: "sign"},
    TEXT: {0x11: "text", 0x14: "code_a", 0x15: "code_b"},
    VISUAL: {0x11: "birth", 0x12: "code_b", 0x13: "code_a"},
    JUKI: {0x1C: "juki"},
    COMMON: {0x1C: "common"},
}
# Which PINs open which EF or key (docs/card.md): what the access mutants bend.
TEXT_ANY = frozenset({0x11, 0x14, 0x15})
NEEDS: dict[tuple[bytes, int], frozenset[int]] = {
    (JPKI, 0x01): frozenset({0x1B}),
    (JPKI, 0x17): frozenset({0x18}),
    (JPKI, 0x1A): frozenset({0x1B}),
    (TEXT, 0x01): frozenset({0x11, 0x14}),
    (TEXT, 0x02): frozenset({0x11, 0x15}),
    (TEXT, 0x03): TEXT_ANY,
    (TEXT, 0x06): TEXT_ANY,
    (TEXT, 0x07): TEXT_ANY,
    (VISUAL, 0x01): frozenset({0x11}),
    (VISUAL, 0x02): frozenset({0x12, 0x13}),
    (VISUAL, 0x05): frozenset({0x13}),
    (VISUAL, 0x06): frozenset({0x12, 0x13}),
}
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
SHA256_WITHOUT_NULL = bytes.fromhex("302f300b06096086480165030402010420")

PROFILES: dict[str, Profile] = {}
# The default profile with `reselect_clears_state = true` (what OpenSC's logout expects).
CLEARS_ON_RESELECT = str(
    quirk_profile(Path(tempfile.mkdtemp(prefix="mynacard-quirk-")), "reselect_clears_state = true")
)


def profile_of(name: str) -> Profile:
    if name not in PROFILES:
        PROFILES[name] = load_profile(name)
    return PROFILES[name]


def parse(command: bytes) -> Apdu | None:
    try:
        return Apdu.parse(command)
    except MalformedApdu:
        return None


def cmac(key: bytes, challenge: bytes) -> bytes:
    mac = CMAC(algorithms.AES(key))
    mac.update(challenge)
    return mac.finalize()


@dataclass
class Session:
    """What the card's answers showed of its session."""

    app: bytes | None = None
    current: int | None = None
    verified: set[int] = field(default_factory=set)
    keys: set[int] = field(default_factory=set)  # free-area keys EXTERNAL AUTHENTICATE opened
    challenge: bytes | None = None  # pending, from GET CHALLENGE
    used: bytes | None = None  # the one the last EXTERNAL AUTHENTICATE used up


class Tracking:
    """A card whose traffic is followed (application, current EF, verified PINs, PIN values
    as changed); subclasses change `answer`, the answer the card gives to one command."""

    def __init__(self, profile: str | Path, state: Path) -> None:
        self.profile = profile_of(str(profile))
        self.state = state
        self.card = open_card(self.profile, state)
        self.aids = [JPKI, TEXT, VISUAL, JUKI, COMMON] + [
            a.aid for a in self.profile.free_area.apps
        ]
        self.values: dict[tuple[bytes, int], bytes] = {
            (aid, fid): self.profile.pins[name].encode()
            for aid, pins in NATIONAL_PINS.items()
            for fid, name in pins.items()
        }
        for app in self.profile.free_area.apps:
            for pin in app.pins:
                self.values[(app.aid, pin.fid)] = pin.value.encode()
        self.session = Session()

    # -- the card interface ---------------------------------------------------------------

    def transmit(self, command: bytes) -> bytes:
        apdu = parse(command)
        answer = self.answer(command, apdu) if apdu is not None else self.card.transmit(command)
        if apdu is not None:
            self.follow(apdu, answer)
        return answer

    def power_on(self) -> bytes:
        self.session = Session()
        return self.card.power_on()

    def power_off(self) -> None:
        self.session = Session()
        self.card.power_off()

    def reset(self) -> bytes:
        self.session = Session()
        return self.card.reset()

    def close(self) -> None:
        self.card.close()

    # -- what the mutants change -----------------------------------------------------------

    def answer(self, command: bytes, apdu: Apdu) -> bytes:
        return self.card.transmit(command)

    # -- following the session -------------------------------------------------------------

    def pin_of(self, apdu: Apdu) -> int | None:
        """The PIN a VERIFY / CHANGE names (P2 80: the current EF; 80|SFI)."""
        if apdu.p2 == 0x80:
            return self.session.current
        return apdu.p2 & 0x1F if apdu.p2 & 0xE0 == 0x80 else None

    def object_of(self, apdu: Apdu) -> int | None:
        """The EF or key a READ BINARY / READ RECORD / signing command acts on."""
        if apdu.ins == 0xB0:
            return apdu.p1 & 0x1F if apdu.p1 & 0x80 else self.session.current
        if apdu.ins == 0xB2:
            return apdu.p2 >> 3 or self.session.current
        if apdu.ins in (0x2A, 0x88) and apdu.p2 == 0x00 and self.session.app in (TEXT, VISUAL):
            return 0x13 if self.session.app == TEXT else 0x1A
        if apdu.p2 == 0x80:
            return self.session.current
        return apdu.p2 & 0x1F if apdu.p2 & 0xE0 == 0x80 else None

    def selected(self, name: bytes) -> bytes | None:
        if name and ISD.startswith(name):
            return None
        return next((aid for aid in self.aids if aid.startswith(name)), None)

    def follow(self, apdu: Apdu, answer: bytes) -> None:
        ok, session = answer[-2:] == b"\x90\x00", self.session
        if apdu.ins == 0xA4 and apdu.p1 == 0x04 and ok:
            self.select_application(self.selected(apdu.data))
        elif apdu.ins == 0xA4 and apdu.p1 == 0x02 and ok:
            session.current = int.from_bytes(apdu.data, "big")
        elif apdu.ins in (0xB0, 0xB2) and answer[-2:] not in (b"\x6a\x82", b"\x6a\x86"):
            session.current = self.object_of(apdu)
        elif apdu.ins == 0x20 and apdu.data and apdu.cla == 0:
            pin = self.pin_of(apdu)
            if ok and pin is not None:
                session.verified.add(pin)
            elif answer[-2] == 0x63 and pin is not None:
                session.verified.discard(pin)
        elif apdu.ins in (0x24, 0x32) and apdu.cla in (0x00, 0x80) and ok:
            pin = self.pin_of(apdu)
            if pin is not None and session.app is not None and (apdu.cla, apdu.ins) != (0, 0x32):
                self.values[(session.app, pin)] = apdu.data
        elif apdu.ins == 0x84 and ok:
            session.challenge = answer[:-2]
        elif apdu.ins == 0x82:
            session.used, session.challenge = session.challenge, None
            if ok:
                session.keys.add(apdu.p2 & 0x7F)

    def select_application(self, aid: bytes | None) -> None:
        session = self.session
        if aid != session.app:
            session.verified, session.keys = set(), set()
        session.app, session.current = aid, None

    # -- helpers for the mutants -----------------------------------------------------------

    def value(self, pin: int | None) -> bytes | None:
        app = self.session.app
        return self.values.get((app, pin)) if app is not None and pin is not None else None

    def authenticate(self, number: int) -> None:
        """EXTERNAL AUTHENTICATE with free-area key `number` of the application, on the card."""
        app = next(a for a in self.profile.free_area.apps if a.aid == self.session.app)
        key = next(k for k in app.keys if k.number == number)
        challenge = self.card.transmit(bytes.fromhex("0084000010"))[:-2]
        self.card.transmit(bytes((0, 0x82, 0, 0x80 | number, 16)) + cmac(key.value, challenge))
        self.session.keys.add(number)


# -- PIN values close to the right one (item 3) ------------------------------------------------


class NearMiss(Tracking):
    """VERIFY takes `close(sent, right)` values for the right one."""

    near: Callable[[bytes, bytes], bool] = staticmethod(lambda sent, right: False)

    def answer(self, command: bytes, apdu: Apdu) -> bytes:
        right = self.value(self.pin_of(apdu)) if apdu.ins == 0x20 and apdu.cla == 0 else None
        if right is not None and apdu.data and apdu.data != right and self.near(apdu.data, right):
            return self.card.transmit(Apdu(0, 0x20, apdu.p1, apdu.p2, right).encode())
        return self.card.transmit(command)


class PrefixAccepted(NearMiss):
    """Compares only as many bytes as were sent."""

    near = staticmethod(lambda sent, right: right.startswith(sent))


class ExtensionAccepted(NearMiss):
    """Compares only as many bytes as the PIN has."""

    near = staticmethod(lambda sent, right: sent.startswith(right) and len(sent) <= 16)


class PaddingIgnored(NearMiss):
    """Strips trailing 00, 20 and FF before comparing."""

    near = staticmethod(lambda sent, right: sent.rstrip(b"\x00\x20\xff") == right)


class CaseIgnored(NearMiss):
    """Compares the password without regard to case."""

    near = staticmethod(lambda sent, right: sent.upper() == right.upper())


class LongValueSpendsATry(Tracking):
    """VERIFY with more than 16 bytes is compared (a try spent) instead of 6700."""

    def answer(self, command: bytes, apdu: Apdu) -> bytes:
        right = self.value(self.pin_of(apdu))
        if apdu.ins == 0x20 and apdu.cla == 0 and len(apdu.data) > 16 and right is not None:
            wrong = right[:-1] + bytes((right[-1] ^ 1,))
            return self.card.transmit(Apdu(0, 0x20, 0, apdu.p2, wrong).encode())
        return self.card.transmit(command)


# -- values just outside a PIN's format in CHANGE REFERENCE DATA / CHANGE KEY -------------------


def change_with(apdu: Apdu, value: bytes) -> bytes:
    return Apdu(apdu.cla, apdu.ins, apdu.p1, apdu.p2, value).encode()


class OneDigitMoreAccepted(Tracking):
    """A 4-digit PIN changed to 5 digits: 9000, and the first 4 are kept."""

    def answer(self, command: bytes, apdu: Apdu) -> bytes:
        answer = self.card.transmit(command)
        fifth = len(apdu.data) == 5 and apdu.data.isdigit()
        if apdu.ins in (0x24, 0x32) and answer == b"\x6a\x80" and fifth:
            return self.card.transmit(change_with(apdu, apdu.data[:4]))
        return answer


class StoredBeforeChecked(Tracking):
    """A new value over the format's length is stored cut to it, then refused (6A80)."""

    def answer(self, command: bytes, apdu: Apdu) -> bytes:
        answer = self.card.transmit(command)
        right = self.value(self.pin_of(apdu))
        if apdu.ins in (0x24, 0x32) and answer[-2:] in (b"\x6a\x80", b"\x67\x00") and right:
            longest = 16 if len(right) > 4 else 4
            if len(apdu.data) > longest and apdu.data[:longest].isalnum():
                cut = apdu.data[:longest].upper()
                if self.card.transmit(change_with(apdu, cut)) == b"\x90\x00":
                    self.values[(self.session.app, self.pin_of(apdu))] = cut  # type: ignore[index]
        return answer


# -- counters and writes across a restart (item 2) ---------------------------------------------


def copy_state(source: Path, destination: Path) -> None:
    """The files of a state directory (the sqlite database and its WAL, no shared memory)."""
    shutil.rmtree(destination, ignore_errors=True)
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("*-shm"))


class StaleOnReopen:
    """Opener: a state directory opened again is first put back as it was when made."""

    def __init__(self, profile: str) -> None:
        self.profile = profile

    def __call__(self, state: Path) -> CardLike:
        snapshot = state.with_name(f"{state.name}.made")
        if snapshot.exists():
            copy_state(snapshot, state)
            return open_card(profile_of(self.profile), state)
        card = open_card(profile_of(self.profile), state)
        copy_state(state, snapshot)
        return card


class FlushedAtPowerOff(Tracking):
    """Keeps its writes in a cache written out only at power-off: a restart (a process that
    ends without powering off) loses what came since."""

    def power_off(self) -> None:
        super().power_off()
        copy_state(self.state, self.state.with_name(f"{self.state.name}.flushed"))


def flushed_at_power_off(profile: str) -> Callable[[Path], CardLike]:
    def opener(state: Path) -> CardLike:
        flushed = state.with_name(f"{state.name}.flushed")
        if flushed.exists():
            copy_state(flushed, state)
        card = FlushedAtPowerOff(profile, state)
        if not flushed.exists():
            copy_state(state, flushed)
        return card

    return opener


# -- access of single EFs and keys under single credentials, session quirks (item 5) ----------


class Shadowed(Tracking):
    """Answers some refused commands as if a PIN were verified, from a second card where it
    is (opened when first needed)."""

    def __init__(self, profile: str | Path, state: Path) -> None:
        super().__init__(profile, state)
        self.shadow: CardLike | None = None

    def as_if_verified(self, command: bytes, pin: int) -> bytes:
        app, current = self.session.app, self.session.current
        assert app is not None
        if self.shadow is None:
            self.shadow = open_card(self.profile, self.state.with_name(f"{self.state.name}.shadow"))
            self.shadow.power_on()
        shadow = self.shadow
        shadow.reset()
        shadow.transmit(Apdu(0, 0xA4, 4, 0x0C, app).encode())
        original = self.profile.pins[NATIONAL_PINS[app][pin]].encode()
        shadow.transmit(Apdu(0, 0x20, 0, 0x80 | pin, original).encode())
        if current is not None:
            shadow.transmit(Apdu(0, 0xA4, 2, 0x0C, current.to_bytes(2, "big")).encode())
        return shadow.transmit(command)

    def close(self) -> None:
        if self.shadow is not None:
            self.shadow.close()
        super().close()


class SessionMutant(Shadowed):
    """Grants reads and signatures by its own, bent, idea of the verified state: `extra`
    credentials open more objects; resets, the ISD or re-selects keep or clear it wrongly."""

    extra: dict[tuple[bytes, int], frozenset[int]] = {}  # noqa: RUF012
    keep_on_reset = False
    keep_through_isd = False
    clear_on_reselect = False

    def __init__(self, profile: str | Path, state: Path) -> None:
        super().__init__(profile, state)
        self.granted: set[int] = set()
        self.granted_app: bytes | None = None

    def reset(self) -> bytes:
        kept = (set(self.granted), self.session.app)
        answer = super().reset()
        if self.keep_on_reset:
            self.granted, self.granted_app = kept
        else:
            self.granted = set()
        return answer

    def power_on(self) -> bytes:
        self.granted = set()
        return super().power_on()

    def select_application(self, aid: bytes | None) -> None:
        before = self.session.app
        super().select_application(aid)
        if aid is None and self.keep_through_isd:
            return
        if aid != (self.granted_app if before is None else before) or (
            aid == before and self.clear_on_reselect
        ):
            self.granted = set()
        self.granted_app = aid

    def follow(self, apdu: Apdu, answer: bytes) -> None:
        super().follow(apdu, answer)
        pin = self.pin_of(apdu)
        if apdu.ins == 0x20 and apdu.cla == 0 and apdu.data and pin is not None:
            if answer == b"\x90\x00":
                self.granted.add(pin)
            elif answer[-2] == 0x63:
                self.granted.discard(pin)

    def answer(self, command: bytes, apdu: Apdu) -> bytes:
        answer = self.card.transmit(command)
        app, fid = self.session.app, self.object_of(apdu)
        needs = NEEDS.get((app, fid)) if app is not None and fid is not None else None
        if apdu.ins not in (0xB0, 0x2A) or needs is None or self.session.app is None:
            return answer
        bent = needs | self.extra.get((self.session.app, fid), frozenset())  # type: ignore[arg-type]
        grants = bool(bent & self.granted)
        if answer == b"\x69\x82" and grants:
            return self.as_if_verified(command, min(needs))
        if answer[-2:] == b"\x90\x00" and not grants:
            return b"\x69\x82"
        return answer


class CodeBOpensMyNumber(SessionMutant):
    extra = {(TEXT, 0x01): frozenset({0x15})}  # noqa: RUF012


class CodeBOpensMyNumberImage(SessionMutant):
    extra = {(VISUAL, 0x05): frozenset({0x12})}  # noqa: RUF012


class SignPasswordOpensAuthKey(SessionMutant):
    extra = {(JPKI, 0x17): frozenset({0x1B})}  # noqa: RUF012


class ResetKeepsVerifiedState(SessionMutant):
    keep_on_reset = True


class IsdKeepsVerifiedState(SessionMutant):
    keep_through_isd = True


class ReselectClearsVerifiedState(SessionMutant):
    clear_on_reselect = True


class ReselectKeepsVerifiedState(SessionMutant):
    """Under `reselect_clears_state = true` a re-select of the same AP keeps the state."""

    def select_application(self, aid: bytes | None) -> None:
        kept = set(self.granted) if aid == self.session.app else set()
        super().select_application(aid)
        self.granted |= kept


# -- filler bytes, EF boundaries (items 3, 4) ---------------------------------------------------


def read_rewriter(app: bytes, fid: int, bend: Callable[[int, bytes], bytes]) -> type[Tracking]:
    """READ BINARY of EF `fid` of `app` answers bend(offset, data) instead of data."""

    class Bent(Tracking):
        def answer(self, command: bytes, apdu: Apdu) -> bytes:
            answer = self.card.transmit(command)
            sfi = apdu.p1 & 0x1F if apdu.p1 & 0x80 else None
            ef = sfi if sfi is not None else self.session.current
            if (
                apdu.ins != 0xB0
                or self.session.app != app
                or ef != fid
                or answer[-2:] != b"\x90\x00"
            ):
                return answer
            offset = apdu.p2 if sfi is not None else apdu.p1 << 8 | apdu.p2
            return bend(offset, answer[:-2]) + answer[-2:]

    return Bent


def zeros_at(positions: range) -> Callable[[int, bytes], bytes]:
    def bend(offset: int, data: bytes) -> bytes:
        return bytes(0 if offset + i in positions else b for i, b in enumerate(data))

    return bend


def last_byte_unreadable(command: bytes, answer: bytes) -> bytes:
    """READ BINARY at the last byte of an EF: 6B00 (an off-by-one in the bounds check)."""
    apdu = parse(command)
    if apdu is not None and apdu.ins == 0xB0 and len(answer) == 3 and (apdu.le or 0) > 1:
        return b"\x6b\x00"
    return answer


def reserved_class_as_first(command: bytes, answer: bytes) -> bytes:
    """CLA 20-3F (reserved in ISO 7816-4) read as 00-1F: channel, SM or chaining errors
    (the card's class check missing its bit 6), where the card says 6E00."""
    if len(command) >= 4 and 0x20 <= command[0] <= 0x3F and answer == b"\x6e\x00":
        cla = command[0] & 0x1F
        if cla & 0x03:
            return b"\x68\x81"
        return b"\x68\x82" if cla & 0x0C else b"\x68\x84"
    return answer


def isd_without_fci(command: bytes, answer: bytes) -> bytes:
    """SELECT of the ISD with P2 00 answers 9000 without its FCI (P2 00 read as 0C)."""
    if command[:4] == b"\x00\xa4\x04\x00" and b"\xa0\x00\x00\x01\x51\x00\x00" in command:
        return b"\x90\x00"
    return answer


class UpdateRecordRefusesShort(Layer):
    """UPDATE RECORD of a record shorter than the EF's 16-byte records answers 6700
    (`len(data) > record_size` written `is not`, a survivor of the mutation run): where
    the card's own length check would be reached, which the same command with 17 bytes
    tells (it answers 6700 there, and changes nothing)."""

    def transmit(self, capdu: bytes) -> bytes:
        if capdu[:2] == b"\x00\xdc" and len(capdu) > 5 and 0 < capdu[4] < 16:
            probe = capdu[:4] + b"\x11" + bytes(17)
            if self.inner.transmit(probe) == b"\x67\x00":
                return b"\x67\x00"
        return self.inner.transmit(capdu)


class SelectEfLowP2(Layer):
    """SELECT by FID with a P2 below 0C taken as 0C (`P2 != 0C` written `P2 > 0C`)."""

    def transmit(self, capdu: bytes) -> bytes:
        if capdu[:3] == b"\x00\xa4\x02" and len(capdu) > 3 and capdu[3] < 0x0C:
            capdu = capdu[:3] + b"\x0c" + capdu[4:]
        return self.inner.transmit(capdu)


class SelectByPathAsByName(Layer):
    """SELECT with a P1 above 04 (by path and the like) read as by DF name (`P1 == 04`
    written `P1 >= 04`, a survivor of the mutation run)."""

    def transmit(self, capdu: bytes) -> bytes:
        if capdu[:2] == b"\x00\xa4" and len(capdu) > 3 and capdu[2] > 0x04:
            capdu = capdu[:2] + b"\x04" + capdu[3:]
        return self.inner.transmit(capdu)


class CardDataNeedsExtendedLe(Layer):
    """GET DATA at MF level refuses a short Le even for a small object (6700; `and` written
    `or` in the card's length check, a survivor of the mutation run)."""

    def transmit(self, capdu: bytes) -> bytes:
        answer = self.inner.transmit(capdu)
        short = capdu[:2] == b"\x00\xca" and len(capdu) == 5
        return b"\x67\x00" if short and answer[-2:] == b"\x90\x00" else answer


class CardIdentificationOffByOne(Layer):
    """GET DATA 0045 (card identification) answers the serial with its last digit one off:
    the bytes the profile fixes, checked whole."""

    def transmit(self, capdu: bytes) -> bytes:
        answer = self.inner.transmit(capdu)
        if capdu[:4] == b"\x00\xca\x00\x45" and len(answer) > 3:
            return answer[:-3] + bytes((answer[-3] ^ 0x01,)) + answer[-2:]
        return answer


class ChangeAtOneTryLeftBlocked(Layer):
    """CHANGE REFERENCE DATA / CHANGE KEY of an unverified PIN with one try left answers
    blocked, not 6982 (the blocked check `remaining == 0` written `== 1`, a survivor of an
    earlier mutation run); the retry query (which costs nothing) tells the count."""

    def transmit(self, capdu: bytes) -> bytes:
        answer = self.inner.transmit(capdu)
        change = capdu[:2] in (b"\x00\x24", b"\x80\x32") and answer == b"\x69\x82"
        if change and self.inner.transmit(b"\x00\x20\x00" + capdu[3:4]) == b"\x63\xc1":
            return b"\x69\x84"
        return answer


# -- the exact signature scheme of each P1 (item 4) --------------------------------------------


class SchemeBent(Tracking):
    """Signatures from `sign(apdu, key)` where it returns bytes (the card's answer else)."""

    def private_key(self, apdu: Apdu) -> rsa.RSAPrivateKey | None:
        keys = {
            (JPKI, 0x17): self.profile.jpki.auth_key if self.profile.jpki else None,
            (JPKI, 0x1A): self.profile.jpki.sign_key if self.profile.jpki else None,
            (TEXT, 0x13): self.profile.text_ap.keys.card_key if self.profile.text_ap else None,
            (VISUAL, 0x1A): self.profile.visual_ap.keys.card_key
            if self.profile.visual_ap
            else None,
        }
        return keys.get((self.session.app, self.object_of(apdu)))  # type: ignore[arg-type]

    def answer(self, command: bytes, apdu: Apdu) -> bytes:
        answer = self.card.transmit(command)
        key = self.private_key(apdu) if apdu.cla == 0x80 and apdu.ins == 0x2A else None
        if key is None or answer[-2:] != b"\x90\x00":
            return answer
        bent = self.sign(apdu, key)
        return answer if bent is None else bent + b"\x90\x00"

    def sign(self, apdu: Apdu, key: rsa.RSAPrivateKey) -> bytes | None:
        return None


class PssSaltTwenty(SchemeBent):
    """P1 04 / 05: RSASSA-PSS with a 20-byte salt (the spec's assumption is 32)."""

    def sign(self, apdu: Apdu, key: rsa.RSAPrivateKey) -> bytes | None:
        if apdu.p1 not in (4, 5):
            return None
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=20)
        algorithm = Prehashed(hashes.SHA256()) if apdu.p1 == 4 else hashes.SHA256()
        return key.sign(apdu.data, pss, algorithm)


class PssSignatureKept(Tracking):
    """P1 04 / 05: the PSS signature of an input made once and given again (the card's
    PKCS#1 v1.5 cache applied to PSS, a survivor of the mutation run)."""

    def __init__(self, profile: str | Path, state: Path) -> None:
        super().__init__(profile, state)
        self.kept: dict[tuple[bytes | None, int | None, bytes], bytes] = {}

    def answer(self, command: bytes, apdu: Apdu) -> bytes:
        if (apdu.cla, apdu.ins) != (0x80, 0x2A) or apdu.p1 not in (4, 5):
            return self.card.transmit(command)
        key = (self.session.app, self.object_of(apdu), command)
        answer = self.kept.get(key) or self.card.transmit(command)
        if answer[-2:] == b"\x90\x00":
            self.kept[key] = answer
        return answer


class CardKeyP1TwoAsZero(Tracking):
    """The visual AP's card key signs P1 02 (a hash to wrap) as P1 00 (pad as sent)."""

    def answer(self, command: bytes, apdu: Apdu) -> bytes:
        if (apdu.cla, apdu.ins, apdu.p1) == (0x80, 0x2A, 2) and self.session.app == VISUAL:
            return self.card.transmit(bytes((0x80, 0x2A, 0)) + command[3:])
        return self.card.transmit(command)


class DigestInfoCompleted(Tracking):
    """P1 00: a SHA-256 DigestInfo without the NULL parameters gets them before padding
    (docs/decisions.md #21a: the input is never parsed)."""

    def answer(self, command: bytes, apdu: Apdu) -> bytes:
        data = apdu.data
        without_null = len(data) == 49 and data.startswith(SHA256_WITHOUT_NULL)
        if (apdu.cla, apdu.ins, apdu.p1) == (0x80, 0x2A, 0) and without_null:
            fixed = Apdu(0x80, 0x2A, 0, apdu.p2, SHA256_DIGEST_INFO + data[17:], le=apdu.le)
            return self.card.transmit(fixed.encode())
        return self.card.transmit(command)


# -- the free area: access per operation, counter bounds, challenges (item 6) -----------------


class FreeAreaMutant(Tracking):
    def counter(self, apdu: Apdu) -> tuple[int, int]:
        """The value and maximum of the counter record an INCREASE/DECREASE names."""
        value = self.card.transmit(bytes((0, 0xB2, apdu.p1, apdu.p2, 0)))[:-2]
        app = next(a for a in self.profile.free_area.apps if a.aid == self.session.app)
        fid = apdu.p2 >> 3 or self.session.current
        counters = [f for f in app.files if hasattr(f, "maximum")]
        spec = next((f for f in counters if f.fid == fid), counters[0])
        return int.from_bytes(value, "big"), spec.maximum


class DecreaseStopsAtZero(FreeAreaMutant):
    """DECREASE by more than is left: 0 and 9000 (not 6985, nothing changed)."""

    def answer(self, command: bytes, apdu: Apdu) -> bytes:
        answer = self.card.transmit(command)
        if (apdu.cla, apdu.ins) == (0, 0x30) and answer == b"\x69\x85":
            value, _ = self.counter(apdu)
            if value:
                amount = value.to_bytes(len(apdu.data), "big")
                return self.card.transmit(Apdu(0, 0x30, apdu.p1, apdu.p2, amount, apdu.le).encode())
            return b"\x00" * len(apdu.data) + b"\x90\x00" if apdu.le else b"\x90\x00"
        return answer


class IncreaseStopsAtMaximum(FreeAreaMutant):
    """INCREASE past the maximum: the maximum and 9000."""

    def answer(self, command: bytes, apdu: Apdu) -> bytes:
        answer = self.card.transmit(command)
        if (apdu.cla, apdu.ins) == (0, 0x32) and answer == b"\x69\x85":
            value, maximum = self.counter(apdu)
            if value < maximum:
                amount = (maximum - value).to_bytes(len(apdu.data), "big")
                return self.card.transmit(Apdu(0, 0x32, apdu.p1, apdu.p2, amount, apdu.le).encode())
            return maximum.to_bytes(4, "big") + b"\x90\x00" if apdu.le else b"\x90\x00"
        return answer


class ChallengeGoodTwice(Tracking):
    """The challenge stays good after EXTERNAL AUTHENTICATE used it."""

    def answer(self, command: bytes, apdu: Apdu) -> bytes:
        answer = self.card.transmit(command)
        used, app = self.session.challenge or self.session.used, self.session.app
        if (apdu.cla, apdu.ins) != (0, 0x82) or answer != b"\x69\x85" or used is None:
            return answer
        spec = next((a for a in self.profile.free_area.apps if a.aid == app), None)
        key = next((k for k in spec.keys if k.number == apdu.p2 & 0x7F), None) if spec else None
        if key is None or apdu.data != cmac(key.value, used):
            return answer
        fresh = self.card.transmit(bytes((0, 0x84, 0, 0, len(used))))[:-2]
        self.session.challenge = used
        return self.card.transmit(command[:5] + cmac(key.value, fresh))


def opened_by(ins: int, number: int, needs: int | None = None) -> type[Tracking]:
    """Free-area `ins` refused for want of a key is done anyway (after EXTERNAL AUTHENTICATE
    with key `number`), where key `needs` is authenticated (None: always)."""

    class Opened(Tracking):
        def answer(self, command: bytes, apdu: Apdu) -> bytes:
            answer = self.card.transmit(command)
            if (apdu.cla, apdu.ins) != (0, ins) or answer != b"\x69\x82":
                return answer
            if needs is not None and needs not in self.session.keys:
                return answer
            self.authenticate(number)
            return self.card.transmit(command)

    return Opened


class PinLogReadableWithoutPin(Tracking):
    """The taxi ride log (pin:0011) reads without the PIN."""

    def answer(self, command: bytes, apdu: Apdu) -> bytes:
        answer = self.card.transmit(command)
        value = self.value(0x11)
        if (apdu.cla, apdu.ins) == (0, 0xB2) and answer == b"\x69\x82" and value is not None:
            self.card.transmit(Apdu(0, 0x20, 0, 0x91, value).encode())
            return self.card.transmit(command)
        return answer


# -- the mutants ----------------------------------------------------------------------------


Opener = Callable[[Path], CardLike]


def wrapped(cls: type[Tracking], profile: str) -> Opener:
    return lambda state: cls(profile, state)


class SmObjectReadPastItsLength(Layer):
    """Under secure messaging, a DO read to the end of the body instead of to its own
    length (`==` written `>=` in the card's one-DO check, a survivor of the mutation run):
    READ BINARY with DO 96 02 0000 and one byte more is read as DO 96 03 000000."""

    def transmit(self, capdu: bytes) -> bytes:
        value_size = len(capdu) - 11  # 08 B0 P1 P2, 00 LcH LcL, 96 L, ..., Le Le
        short_form = len(capdu) > 8 and capdu[8] < 0x80
        if capdu[:2] == b"\x08\xb0" and capdu[7:8] == b"\x96" and short_form and value_size > 0:
            capdu = capdu[:8] + bytes((value_size,)) + capdu[9:]
        return self.inner.transmit(capdu)


class SmLowerTagTaken(Layer):
    """Under secure messaging, a DO whose tag is below the one the command takes read as
    that one (`!=` written `>` in the card's one-DO check, a survivor of the mutation run):
    READ BINARY with DO 86 is read as DO 96."""

    def transmit(self, capdu: bytes) -> bytes:
        if capdu[:2] == b"\x08\xb0" and len(capdu) > 8 and capdu[7] < 0x96:
            capdu = capdu[:7] + b"\x96" + capdu[8:]
        return self.inner.transmit(capdu)


class SmLeOfFourBytesTaken(Layer):
    """Under secure messaging, READ BINARY's DO 96 with a 4-byte Le read as its last three
    bytes (`<= 3` written `<= 4` in the card's Le check, a survivor of the mutation run)."""

    def transmit(self, capdu: bytes) -> bytes:
        if capdu[:2] == b"\x08\xb0" and capdu[4:9] == b"\x00\x00\x06\x96\x04":
            capdu = capdu[:5] + b"\x00\x05\x96\x03" + capdu[10:]
        return self.inner.transmit(capdu)


class SelectEfLongFidTaken(Layer):
    """SELECT by FID with three bytes of data selects by the first two (`!= 2` written `< 2`
    in the card's length check, a survivor of the mutation run)."""

    def transmit(self, capdu: bytes) -> bytes:
        if capdu[:5] == b"\x00\xa4\x02\x0c\x03":
            capdu = b"\x00\xa4\x02\x0c\x02" + capdu[5:7]
        return self.inner.transmit(capdu)


class RawInputOneTooLongFails(Layer):
    """P1 00 with 246 bytes (one more than RSA-2048 pads) fails inside the card: 6F00 where
    its length check answers 6700 (`// 8` written `** 8` in that check, a survivor of the
    mutation run)."""

    def transmit(self, capdu: bytes) -> bytes:
        answer = self.inner.transmit(capdu)
        too_long = capdu[:3] == b"\x80\x2a\x00" and capdu[4:5] == b"\xf6"
        return b"\x6f\x00" if too_long and answer == b"\x67\x00" else answer


def rewritten(rewrite: Callable[[bytes, bytes], bytes], profile: str = "default") -> Opener:
    return lambda state: Rewritten(open_card(profile_of(profile), state), rewrite)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Mutant:
    profile: str
    opener: Callable[[], Opener]  # a new opener per run (some keep state of their own)
    issue_class: str


def wrapping(cls: type[Tracking], issue_class: str, profile: str = "default") -> Mutant:
    return Mutant(profile, lambda: wrapped(cls, profile), issue_class)


def layered(layer: type[Layer], issue_class: str, profile: str = "default") -> Mutant:
    """A mutant that is `layer` over the card of `profile`."""
    return Mutant(
        profile, lambda: lambda state: layer(open_card(profile_of(profile), state)), issue_class
    )


MUTANTS: dict[str, Mutant] = {
    # PIN values close to the right one
    "verify-accepts-a-prefix": wrapping(PrefixAccepted, "near miss"),
    "verify-accepts-an-extension": wrapping(ExtensionAccepted, "near miss"),
    "verify-ignores-trailing-padding": wrapping(PaddingIgnored, "near miss"),
    "verify-ignores-case": wrapping(CaseIgnored, "near miss"),
    "verify-long-value-spends-a-try": wrapping(LongValueSpendsATry, "near miss"),
    # values just outside a PIN's format
    "change-accepts-a-fifth-digit": wrapping(OneDigitMoreAccepted, "format"),
    "change-stores-before-checking": wrapping(StoredBeforeChecked, "format"),
    "change-at-one-try-left-answers-blocked": layered(ChangeAtOneTryLeftBlocked, "format"),
    # durability
    "state-lost-on-restart": Mutant("default", lambda: StaleOnReopen("default"), "restart"),
    "free-area-flushed-at-power-off": Mutant(
        "taxi-tickets", lambda: flushed_at_power_off("taxi-tickets"), "restart"
    ),
    # access of single EFs and keys under single credentials
    "code-b-opens-my-number": wrapping(CodeBOpensMyNumber, "access"),
    "code-b-opens-my-number-image": wrapping(CodeBOpensMyNumberImage, "access"),
    "sign-password-opens-auth-key": wrapping(SignPasswordOpensAuthKey, "access"),
    # filler and boundaries
    "my-number-ef-ends-in-00": wrapping(
        read_rewriter(TEXT, 0x01, zeros_at(range(15, 17))), "filler"
    ),
    "text-ef-0008-zero-filled": wrapping(read_rewriter(TEXT, 0x08, zeros_at(range(16))), "filler"),
    "last-byte-unreadable": Mutant("default", lambda: rewritten(last_byte_unreadable), "boundary"),
    "isd-select-without-fci": Mutant("default", lambda: rewritten(isd_without_fci), "select"),
    "select-ef-low-p2-accepted": layered(SelectEfLowP2, "select"),
    "reserved-class-read-as-first": Mutant(
        "default", lambda: rewritten(reserved_class_as_first), "class"
    ),
    "card-data-needs-extended-le": layered(CardDataNeedsExtendedLe, "select"),
    "card-identification-off-by-one": layered(CardIdentificationOffByOne, "filler"),
    "select-by-path-read-as-by-name": layered(SelectByPathAsByName, "select"),
    "select-ef-long-fid-taken": layered(SelectEfLongFidTaken, "select"),
    # signature schemes
    "pss-salt-length-20": wrapping(PssSaltTwenty, "scheme"),
    "card-key-signs-p1-02-as-p1-00": wrapping(CardKeyP1TwoAsZero, "scheme"),
    "raw-digest-info-completed": wrapping(DigestInfoCompleted, "scheme"),
    "pss-signature-kept": wrapping(PssSignatureKept, "scheme"),
    "raw-input-one-too-long-fails": layered(RawInputOneTooLongFails, "scheme"),
    # secure messaging
    "sm-object-read-past-its-length": layered(SmObjectReadPastItsLength, "secure messaging"),
    "sm-lower-tag-taken": layered(SmLowerTagTaken, "secure messaging"),
    "sm-le-of-four-bytes-taken": layered(SmLeOfFourBytesTaken, "secure messaging"),
    # the free area
    "append-without-key": wrapping(opened_by(0xE2, 1), "free area", "library-card"),
    "update-record-refuses-short-records": layered(
        UpdateRecordRefusesShort, "free area", "library-card"
    ),
    "increase-with-the-meter-key": wrapping(
        opened_by(0x32, 2, needs=1), "free area", "taxi-tickets"
    ),
    "log-readable-without-pin": wrapping(PinLogReadableWithoutPin, "free area", "taxi-tickets"),
    "decrease-stops-at-zero": wrapping(DecreaseStopsAtZero, "counter bound", "taxi-tickets"),
    "increase-stops-at-maximum": wrapping(IncreaseStopsAtMaximum, "counter bound", "taxi-tickets"),
    "challenge-good-twice": wrapping(ChallengeGoodTwice, "challenge", "taxi-tickets"),
    # session behaviour under the profile's quirks
    "reset-keeps-verified-state": wrapping(ResetKeepsVerifiedState, "session"),
    "isd-select-keeps-verified-state": wrapping(IsdKeepsVerifiedState, "session"),
    "reselect-clears-verified-state": wrapping(ReselectClearsVerifiedState, "session"),
    "reselect-keeps-state-the-profile-clears": wrapping(
        ReselectKeepsVerifiedState, "session", CLEARS_ON_RESELECT
    ),
}


def catch(name: str, seed: int) -> tuple[Deviation | None, Callable[[], EmulatorTarget]]:
    """Run the bench with the default budget on mutant `name`; its first deviation (minimal)."""
    mutant = MUTANTS[name]
    target = EmulatorTarget(mutant.profile, opener=mutant.opener())
    try:
        bench = Bench(make_link(target, read_profile(mutant.profile), {}, 0))
        result = run_bench(bench, RunConfig(seed=seed))
    finally:
        target.close()
    return (result.deviations[0] if result.deviations else None), lambda: EmulatorTarget(
        mutant.profile, opener=mutant.opener()
    )


def checked_replay(transcript: list[Exchange], target: EmulatorTarget, profile: str) -> bool:
    """Whether the transcript's commands pass on `target` with the bench's checks (its model
    and invariants, which also see what a pattern cannot: signatures, for one)."""
    target.fresh()
    bench = Bench(make_link(target, read_profile(profile), {}, 0))
    bench.begin_example()
    try:
        for step in transcript:
            if step.action is Action.RESET:
                bench.reset()
            elif step.action is Action.POWER:
                bench.power_cycle()
            elif step.action is Action.RESTART:
                bench.restart()
            else:
                bench.exchange(step.command, step.cmac_key)
            if bench.observer.messages:
                return False
    except Deviation:
        return False
    return True


def passes(transcript: list[Exchange], target: EmulatorTarget, profile: str) -> bool:
    """The transcript replays green on `target`: its patterns and the bench's checks."""
    try:
        return replay(transcript, target).ok and checked_replay(transcript, target, profile)
    finally:
        target.close()


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mutant_is_caught_within_the_default_budget(name: str) -> None:
    deviation, again = catch(name, seed=2024)
    assert deviation is not None, f"{name} was not caught"
    transcript = deviation.transcript
    print(f"\n{name}: {deviation} ({len(transcript)} exchanges)")
    assert not passes(transcript, again(), MUTANTS[name].profile), "fails on the mutant"
    real = EmulatorTarget(MUTANTS[name].profile)
    assert passes(transcript, real, MUTANTS[name].profile), "replays green on the emulator"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mutant_catch_rate_over_seeds(name: str) -> None:
    """Soak: every seed of ten catches it (opt in with -m slow)."""
    missed = [seed for seed in range(10) if catch(name, seed)[0] is None]
    assert not missed, f"{name} missed with seeds {missed}"


# -- the pieces the new rules are made of ------------------------------------------------------


@pytest.mark.parametrize("value", [b"1234", b"ABC123", b"ABCDEFGHIJKLMNOP", b"655882685310"])
def test_near_misses_are_wrong_and_near(value: bytes) -> None:
    misses = near_misses(value)
    assert set(misses) == set(NEAR_MISS_KINDS)
    assert all(value not in kind for kind in misses.values())
    assert misses["prefix"] == tuple(value[:n] for n in range(1, len(value)))
    assert all(len(m) == len(value) + 1 and m.startswith(value) for m in misses["extension"])
    assert all(len(m) == len(value) for m in misses["change"])
    assert all(len(m) > 16 and m.startswith(value) for m in misses["long"])
    assert max(len(m) for m in misses["long"]) == 255
    assert all(m.rstrip(b"\x00\x20\xff") == value for m in misses["padding"])
    assert all(m.decode().isdigit() or m.decode().isalnum() for m in misses["full-width"])
    assert bool(misses["case"]) == any(chr(b).isalpha() for b in value)


@pytest.mark.parametrize(
    ("value_format", "value"),
    [("[0-9]{4}", b"1234"), ("[A-Z0-9]{6,16}", b"ABC123"), ("[0-9]{12}", b"655882685310")],
)
def test_values_outside_the_format_never_fit_it(value_format: str, value: bytes) -> None:
    outside = outside_format(value_format, value)
    assert set(outside) == set(OUTSIDE_KINDS)
    every = [v for kind in outside.values() for v in kind]
    assert not any(re.fullmatch(value_format, v.decode("latin-1")) for v in every)
    low, _, high = value_format.partition("{")[2].rstrip("}").partition(",")
    assert {len(v) for v in outside["length"]} == {int(high or low) + 1, int(low) - 1}
    assert all(len(v) == int(low) for v in outside["alphabet"] if v.isascii())
    assert b"" in outside["limits"] and any(len(v) > 16 for v in outside["limits"])


def test_edges_of_an_ef() -> None:
    pairs = set(edges(17, sfi=False))
    assert {(16, 1), (16, 2), (17, 1), (18, 1), (0, 17), (0, 18), (0, 65536)} <= pairs
    assert all(offset <= 0xFF for offset, _le in edges(3808, sfi=True))


# -- restarts and EXTERNAL AUTHENTICATE in transcripts -----------------------------------------


def test_restart_reopens_the_state_and_keeps_what_was_written() -> None:
    target = EmulatorTarget("taxi-tickets")
    try:
        target.transmit(bytes.fromhex("00A4040C07F0544158490001"))
        assert target.transmit(bytes.fromhex("002000910431313131")) == b"\x63\xc2"
        assert target.restart() == profile_of("taxi-tickets").atr
        target.transmit(bytes.fromhex("00A4040C07F0544158490001"))
        assert target.transmit(bytes.fromhex("00200091")) == b"\x63\xc2"
    finally:
        target.close()


def test_cmac_and_restart_lines_round_trip_and_replay() -> None:
    """`cmac:KEY` answers whatever challenge the card gave last, on every replay."""
    key = profile_of("taxi-tickets").free_area.apps[0].keys[0].value
    text = f"""
        00A4040C07F0544158490001 -> 9000
        0084000010 -> [16] 9000
        0082008110 cmac:{key.hex().upper()} -> 9000
        0082008110 cmac:{key.hex().upper()} -> 6985  # used up
        00300114010100 -> 00000017 9000
        RESTART -> [*]
        00A4040C07F0544158490001 -> 9000
        00B2011400 -> 00000017 9000
    """
    transcript = parse_transcript(text)
    assert parse_transcript("\n".join(e.format() for e in transcript)) == transcript
    assert transcript[2].cmac_key == key and transcript[5].action is Action.RESTART
    for _ in range(2):
        target = EmulatorTarget("taxi-tickets")
        try:
            assert replay(transcript, target).ok
        finally:
            target.close()
