"""The hypothesis state machine: actions that mirror the card's commands, checked by the model.

Its one rule, `step`, picks an action that may run; every action builds APDUs the way some
client of docs/card-spec.md §12 does (or deliberately does not), sends them through
`Bench.exchange` (which checks each answer against the model), and the invariant checks what
the observer saw.  `build_machine` binds the class to one bench.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from . import secure_messaging
from .adversarial import (
    DIGEST_INFO_WITHOUT_NULL,
    NEAR_MISS_KINDS,
    OUTSIDE_KINDS,
    REPEATED_SCHEME_CASES,
    counter_steps,
    edges,
    near_misses,
    outside_format,
    record_writes,
    transparent_writes,
)
from .apdu import INS, SW, Apdu, change_command, select_aid, select_ef, sw_of, verify
from .bench import ODD_CLASSES, SWEEP_EVENTS, Bench, read_back_commands
from .model import SHA256_DIGEST_INFO, ObjectKey, cmac
from .secure_messaging import STEPS as SM_STEPS
from .spec import (
    CATALOGUE,
    ISD_AID,
    AesKeySpec,
    AppSpec,
    EfSpec,
    KeySpec,
    KeyUse,
    PinSpec,
    Structure,
    distinguishing_length,
    key_credential,
)

DIGEST_INFO_PREFIXES = {
    "sha1": bytes.fromhex("3021300906052b0e03021a05000414"),
    "sha224": bytes.fromhex("302d300d06096086480165030402040500041c"),
    "sha256": SHA256_DIGEST_INFO,
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}

ODD_INSTRUCTIONS = (0x00, 0x0E, 0x2C, 0x44, 0x70, 0xD6, 0xE2, 0xF0, 0xA4, 0xB0, 0x20, 0x2A)
SELECT_KINDS = (
    *("full", "prefix", "prefix", "away-and-back", "away-and-back"),
    *("national", "unknown", "longer", "isd", "bad-p2"),
)
INVARIANT_SECTIONS = {
    "counter": "§7 PINs",
    "query": "§7 PINs",
    "blocked": "§7 PINs",
    "protected": "§3 JPKI-AP",
}

# Every choice of a step from one draw (`Dice`): each draw costs the engine more than most
# actions' own work.  The low 16 bits name the action (`ConformanceMachine.choose`), the next
# 112 are its choices, the top 64 start the example at its first step.
rolls = st.integers(0, 2**192 - 1)
ROLL_BITS = 112


T = TypeVar("T")


class Dice:
    """Choices taken one after the other from one wide random integer."""

    def __init__(self, roll: int) -> None:
        self.rest = roll

    def of(self, options: Sequence[T]) -> T:
        self.rest, index = divmod(self.rest, len(options))
        return options[index]

    def below(self, bound: int) -> int:
        self.rest, value = divmod(self.rest, bound)
        return value

    def coin(self) -> bool:
        return bool(self.below(2))

    def blob(self, size: int, variety: int = 2**16) -> bytes:
        """`size` bytes, one of `variety` contents for each size (a card's caches see inputs
        come back, as from a real client)."""
        return hashlib.shake_128(self.below(variety).to_bytes(4, "big")).digest(size)

    def text(self, alphabet: str, shortest: int, longest: int) -> str:
        size = shortest + self.below(longest - shortest + 1)
        return "".join(self.of(alphabet) for _ in range(size))


ODD_FIDS = (0x3F00, 0x2F10, 0x0000, 0xFFFF, 0x001F)
SHORT_LES = (256, 255, 224, 32, 8, 7, 4, 3, 1)
WRONG_VALUE_FORMATS = (
    ("0123456789", 4, 4),
    ("0123456789", 1, 16),
    ("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 6, 16),
    ("abcdefxyz0123456789", 6, 16),
)
DIGESTS = tuple(sorted(DIGEST_INFO_PREFIXES))
DIGESTS_WITHOUT_NULL = tuple(sorted(DIGEST_INFO_WITHOUT_NULL))


def any_fid(dice: Dice) -> int:
    """A short-EF FID, a special one (MF, EF.DIR, 0000, FFFF, 001F) or any at all."""
    kind = dice.below(3)
    if kind == 0:
        return 1 + dice.below(0x1E)
    return dice.of(ODD_FIDS) if kind == 1 else dice.below(0x10000)


def short_le(dice: Dice) -> int:
    return dice.of(SHORT_LES) if dice.coin() else 1 + dice.below(256)


def extended_le(dice: Dice) -> int:
    return 65536 if dice.coin() else 1 + dice.below(65536)


def wrong_value(dice: Dice) -> bytes:
    """A value that is not the PIN: digits (four, or 1-16), capitals and digits or small
    letters and digits (6-16), or any bytes (1-16)."""
    if dice.coin():
        return dice.blob(1 + dice.below(16))
    return dice.text(*dice.of(WRONG_VALUE_FORMATS)).encode()


def scheme(dice: Dice) -> int:
    """A P1 of COMPUTE DIGITAL SIGNATURE: mostly one of the six, else any."""
    return dice.below(6) if dice.below(3) else 6 + dice.below(250)


def payload(dice: Dice) -> bytes:
    """An input to sign: a DigestInfo (with or without NULL parameters), 32 bytes, 1-255
    bytes, P1 00's limits (1, 244-246 bytes) or nothing."""
    kind = dice.below(6)
    if kind == 0:
        name = dice.of(DIGESTS)
        digest = hashlib.new(name, dice.blob(dice.below(65), 16)).digest()
        return DIGEST_INFO_PREFIXES[name] + digest
    if kind == 1:
        name = dice.of(DIGESTS_WITHOUT_NULL)
        digest = hashlib.new(name, dice.blob(dice.below(9), 16)).digest()
        return DIGEST_INFO_WITHOUT_NULL[name] + digest
    if kind == 2:
        return dice.blob(32, 16)
    if kind == 3:
        return dice.blob(1 + dice.below(255), 16)
    return b"\x5a" * dice.of((1, 244, 245, 246)) if kind == 4 else b""


SESSION_EVENTS = ("none", "none", *SWEEP_EVENTS, "select-ef")
# How EXTERNAL AUTHENTICATE is tried (docs/free-area.md: a challenge is good once).
FRESHNESS = (
    "fresh",
    "replay",
    "stale",
    "none",
    "wrong",
    "other-key",
    "unknown-key",
    "short",
    "long-challenge",
    "after-reset",
    "after-switch",
    "block",
)

# -- steps: the machine's one rule chooses among its actions -------------------------------


@dataclass(frozen=True)
class Action:
    """One kind of step: a method of the machine that takes its roll (every choice it
    makes), and when it may run (None: always)."""

    name: str
    body: Callable[[Any, int], None]
    when: Callable[[Any], bool] | None


ACTIONS: list[Action] = []  # every action of ConformanceMachine, in the order defined

Body = TypeVar("Body", bound=Callable[[Any, int], None])


def action(when: Callable[[Any], bool] | None = None) -> Callable[[Body], Body]:
    """Make a method an action of the machine (as `@rule` and `@precondition` would)."""

    def register(body: Body) -> Body:
        ACTIONS.append(Action(body.__name__, body, when))
        return body

    return register


def in_session(holds: Callable[[ConformanceMachine], bool]) -> Callable[[Any], bool]:
    """A precondition that reads the session (the selected application), always true on a
    target that is not disposable. There the PIN guard's run-long state (the budget spent,
    the PINs confirmed) decides whether an action sends its APDUs, `dice` stirs with the
    transcript's length, so the session after the same draws differs between an example
    and its replay: an action that read it would appear or vanish (FlakyStrategyDefinition)."""
    return lambda machine: machine.careful or holds(machine)


class ConformanceMachine(RuleBasedStateMachine):
    """Random APDU sequences, each answer checked against the model (see the module doc)."""

    bench: ClassVar[Bench]
    actions: ClassVar[tuple[Action, ...]]  # those that can run on the bench's target

    def __init__(self) -> None:
        super().__init__()
        self.bench.begin_example()
        self.challenges: list[bytes] = []  # what GET CHALLENGE gave, for INTERNAL AUTHENTICATE
        self.chosen = self.actions  # this example's actions (swarm testing)
        self.started = False  # the first step starts the example

    # -- steps ----------------------------------------------------------------------------

    @rule(roll=rolls)
    def step(self, roll: int) -> None:
        """One action (the "stateful step" the statistics count): the low 16 bits of `roll`
        name it among those that may run now, the rest are its own choices.  The machine's
        only rule, with one draw: hypothesis pays for every rule it considers and for every
        draw, at every step (docs/benchmarks.md).  An example's first step also starts it
        (`start`, from the roll's top bits): an `@initialize` rule would make new strategies
        for every example, which hypothesis keeps."""
        if not self.started:
            self.start(roll >> (16 + ROLL_BITS))
        self.bench.stats.rule_steps += 1
        self.choose(roll & 0xFFFF).body(self, (roll >> 16) & (2**ROLL_BITS - 1))
        self.answers_keep_the_invariants()

    def choose(self, pick: int) -> Action:
        """The action `pick` names among this example's that may run now: the first that may,
        counting from `pick`, else among all the machine's actions."""
        for actions in (self.chosen, self.actions):
            for offset in range(len(actions)):
                candidate = actions[(pick + offset) % len(actions)]
                if candidate.when is None or candidate.when(self):
                    return candidate
        raise AssertionError("no action may run")  # select_application always may

    def swarm(self, dice: Dice) -> None:
        """Swarm testing (as hypothesis does with rules): a quarter of the examples use every
        action, the others about half of them, so some examples dwell on a few."""
        if dice.below(4):
            chosen = tuple(a for a in self.actions if dice.coin())
            self.chosen = chosen or self.actions

    # -- helpers ------------------------------------------------------------------------

    def send(self, command: bytes) -> bytes | None:
        """Exchange one APDU; None if the PIN guard refused it (nothing was sent)."""
        return self.bench.send(command)

    @property
    def careful(self) -> bool:
        """A real card may be behind the target: wrong PINs only within the guard's budget."""
        return not self.bench.disposable

    def pick_pin(self, index: int) -> tuple[AppSpec, PinSpec] | None:
        pins = self.bench.model.pins()
        return pins[index % len(pins)] if pins else None

    def pick_key(self, index: int) -> tuple[AppSpec, KeySpec] | None:
        keys = self.bench.model.keys()
        return keys[index % len(keys)] if keys else None

    def pick_ef(self, index: int) -> EfSpec | None:
        efs = self.bench.model.efs()
        return efs[index % len(efs)][1] if efs else None

    def query_then(self, pin: PinSpec, p2: int, value: bytes) -> bytes | None:
        """VERIFY `value`, right after the retry query of the same PIN (as the guard wants)."""
        if p2 == 0x80:
            self.send(select_ef(pin.fid))
        self.send(verify(b"", p2))
        return self.send(verify(value, p2))

    def dice(self, roll: int) -> Dice:
        """`roll` stirred with how far the example has come, to take an action's choices
        from: hypothesis copies the draws of earlier examples into new ones, and the same
        case should not come back each time."""
        return Dice((roll + len(self.bench.transcript) * 0x9E3779B97F4A7C15) % 2**ROLL_BITS)

    def enter(self, app: AppSpec) -> None:
        """SELECT `app` unless it is the selected application."""
        if self.bench.model.app is not app:
            self.send(select_aid(app.aid))

    def log_in(self, app: AppSpec, pins: frozenset[int]) -> None:
        """VERIFY (by SFI) the first of `pins` whose value is known, nothing if none is; the
        retry query first where the guard wants it (a disposable card is logged in to as a
        client does, its counters are read elsewhere)."""
        model = self.bench.model
        for fid in sorted(pins):
            pin = app.pin(fid)
            value = model.value(app, pin) if pin is not None else None
            if pin is not None and value is not None:
                if self.careful:
                    self.query_then(pin, 0x80 | pin.fid, value)
                else:
                    self.send(verify(value, 0x80 | pin.fid))
                return

    # -- SELECT -------------------------------------------------------------------------

    def start(self, roll: int) -> None:
        """Most examples begin inside an application, as every client does; the roll also
        picks the example's actions (`swarm`)."""
        self.started = True
        dice = Dice(roll)
        index, anywhere = dice.below(8), dice.below(6)
        self.swarm(dice)
        apps = self.bench.model.present_apps()
        if apps and anywhere:
            self.send(select_aid(apps[index % len(apps)].aid))

    @action()
    def select_application(self, roll: int) -> None:
        """SELECT by DF name: an application on the card (full AID or a prefix), any national
        AP (present or not), an unknown or too long name, the ISD, or away and back."""
        dice = self.dice(roll)
        kind = dice.of(SELECT_KINDS)
        index, cut, fci = dice.below(len(CATALOGUE)), dice.below(16), dice.coin()
        noise = dice.blob(1 + dice.below(16))
        model = self.bench.model
        present = model.present_apps()
        app = present[index % len(present)] if present and kind != "national" else CATALOGUE[index]
        if kind == "away-and-back":
            here = model.app
            others = [a for a in model.present_apps() if a is not here]
            self.send(select_aid(others[index % len(others)].aid if others else ISD_AID))
            if here is not None:
                self.send(select_aid(here.aid))
            return
        if kind == "prefix":  # a proper prefix that names one application (docs/card-spec.md §2.1)
            catalogue = model.facts.catalogue
            cuttable = [a for a in present if distinguishing_length(a, catalogue) < len(a.aid)]
            app = cuttable[index % len(cuttable)] if cuttable else app
            shortest = distinguishing_length(app, catalogue)
            name = app.aid[: shortest + cut % max(len(app.aid) - shortest, 1)]
        elif kind == "unknown":
            name = bytes((noise[0] & 0x7F,)) + noise[1:]
        elif kind == "longer":
            name = app.aid + noise[:1]
        elif kind == "isd":
            name = ISD_AID
        else:
            name = app.aid
        p2 = 0x04 if kind == "bad-p2" else 0x00 if fci else 0x0C
        self.send(select_aid(name, p2))

    @action()
    def select_file(self, roll: int) -> None:
        """SELECT EF: mostly an object of the selected application, sometimes any FID; on a
        disposable card now and then the FID one byte short or long (6700: what a real card
        answers is not measured)."""
        dice = self.dice(roll)
        app, index, fid = self.bench.model.app, dice.below(3), any_fid(dice)
        size = dice.of((2, 2, 2, 2, 2, 2, 1, 3))
        if index and app is not None:
            fid = app.fids[dice.below(16) % len(app.fids)]
        if size == 2 or self.careful:
            self.send(select_ef(fid))
        else:
            name = (fid.to_bytes(2, "big") + b"\x00")[:size]
            self.send(Apdu(0x00, INS.SELECT, 0x02, 0x0C, name).encode())

    # -- READ BINARY / READ RECORD ------------------------------------------------------

    @action()
    def read_binary(self, roll: int) -> None:
        """READ BINARY of an EF (selected first, by SFI, or the current one), at offsets
        around its end; a third of the time after VERIFY of its PIN."""
        dice = self.dice(roll)
        index, how = dice.below(16), dice.of(("select", "select", "sfi", "current", "bad-sfi"))
        where = dice.of(("start", "inside", "end", "end", "past", "anywhere"))
        shape = dice.of(("normal", "normal", "normal", "normal", "no-le", "with-data"))
        extended, login = dice.coin(), dice.below(3)
        delta, le, long_le = dice.below(301), short_le(dice), extended_le(dice)
        model = self.bench.model
        ef = self.pick_ef(index)
        if how == "current" or ef is None:
            fid = model.session.current
            ef = model.app.ef(fid) if model.app is not None and fid is not None else None
        if ef is not None and model.app is not None and login == 0:
            self.log_in(model.app, ef.read)
        if how == "select" and ef is not None:
            self.send(select_ef(ef.fid))
        extended = extended and self.bench.extended_ok
        length = long_le if extended else le
        offset = self.offset_in(ef, where, delta, length)
        if how in ("sfi", "bad-sfi") and ef is not None:
            p1, p2 = 0x80 | ef.fid | (0x20 if how == "bad-sfi" else 0), offset & 0xFF
        else:
            p1, p2 = offset >> 8 & 0x7F, offset & 0xFF
        if shape == "no-le":
            command = Apdu(0x00, INS.READ_BINARY, p1, p2).encode()
        elif shape == "with-data":
            command = Apdu(0x00, INS.READ_BINARY, p1, p2, b"\x00", le=length).encode()
        else:
            command = Apdu(0x00, INS.READ_BINARY, p1, p2, le=length, extended=extended).encode()
        self.send(command)

    def offset_in(self, ef: EfSpec | None, where: str, delta: int, length: int) -> int:
        """An offset `delta` bytes from the start or end of `ef` (its size as known)."""
        model = self.bench.model
        size = model.facts.content(model.app, ef).size_min if model.app and ef else 0
        if where == "anywhere" or not size:
            return delta * 97 % 0x8000 if where == "anywhere" else delta % 256
        if where == "inside":
            return delta * 13 % size
        if where == "end":
            return max(0, size - length + delta % 8 - 4)
        if where == "past":
            return size + delta % 16
        return delta % 256

    @action()
    def read_at_the_edges(self, roll: int) -> None:
        """READ BINARY of any transparent EF of known size (after its PIN), at one of its
        edges: offsets 0, 1, the last byte, the end and past it, with Le of 1, what is left
        and one more or less, 256 and 65536 (by FID, or by SFI with 8-bit offsets)."""
        model = self.bench.model
        facts = model.facts
        efs = [
            (app, ef, size)
            for app in model.present_apps()
            for ef in app.efs
            if ef.structure is Structure.TRANSPARENT
            and facts.present(app, ef.fid) is True
            and (size := facts.content(app, ef).size_max) is not None
        ]
        if not efs:
            return
        dice = self.dice(roll)
        app, ef, size = dice.of(efs)
        by_sfi = dice.coin()
        choices = [(o, le) for o, le in edges(size, by_sfi) if le <= 256 or self.bench.extended_ok]
        offset, le = dice.of(choices)
        self.enter(app)
        self.log_in(app, ef.read)
        if by_sfi:
            p1, p2 = 0x80 | ef.fid, offset
        else:
            self.send(select_ef(ef.fid))
            p1, p2 = offset >> 8, offset & 0xFF
        self.send(Apdu(0x00, INS.READ_BINARY, p1, p2, le=le, extended=le > 256).encode())

    @action()
    def access_matrix(self, roll: int) -> None:
        """One application under one credential state (nothing, each PIN or code alone, each
        pair), then a session event (none, a re-SELECT of the AP, the ISD, a warm reset, a
        power cycle, another AP and back, another EF); then every EF is read and every key
        used, by FID or by SFI: each must open exactly as its access rule and the profile's
        quirks say (docs/card.md)."""
        bench = self.bench
        states = [(a, c) for a in bench.model.present_apps() for c in bench.credential_states(a)]
        if not states:
            return
        dice = self.dice(roll)
        app, credentials = dice.of(states)
        event, by_sfi = dice.of(SESSION_EVENTS), dice.coin()
        bench.check_access(app, credentials, event, by_sfi, dice.below(2**32))

    @action()
    def probe_access_control(self, roll: int) -> None:
        """Read a PIN-protected EF, or sign with a PIN-protected key, of any application
        without VERIFY: as the session is, after a reset, or after selecting another
        application and coming back (security state, docs/card-spec.md §2.2)."""
        dice = self.dice(roll)
        index, probe = dice.below(16), dice.of(("as-is", "after-reset", "after-switch"))
        by_sfi = dice.coin()
        model = self.bench.model
        if probe == "after-reset":
            self.bench.reset()
        elif probe == "after-switch" and model.app is not None:
            here = model.app
            others = [a for a in model.present_apps() if a is not here]
            self.send(select_aid(others[index % len(others)].aid if others else ISD_AID))
            self.send(select_aid(here.aid))
        guarded = [
            (app, fid)
            for app in model.present_apps()
            for fid, needs in [(ef.fid, ef.read) for ef in app.efs]
            + [(key.fid, key.use) for key in app.keys]
            if needs and model.facts.present(app, fid) is True
        ]
        if not guarded:
            return
        app, fid = guarded[index % len(guarded)]
        if app is not model.app:
            self.send(select_aid(app.aid))
        if not by_sfi:
            self.send(select_ef(fid))
        p1 = 0x80 | fid if by_sfi else 0x00
        if app.key(fid) is not None:
            data = SHA256_DIGEST_INFO + bytes(32)
            command = Apdu(0x80, INS.COMPUTE_SIGNATURE, 0x00, p1 or 0x80, data, le=256)
        else:
            command = Apdu(0x00, INS.READ_BINARY, p1, 0x00, le=256)
        self.send(command.encode())

    @action()
    def read_record(self, roll: int) -> None:
        """READ RECORD of an EF of the application, selected first or by SFI."""
        dice = self.dice(roll)
        index, record = dice.below(16), dice.below(4)
        how, le = dice.of(("select", "sfi", "current", "bad-p2")), dice.of((256, 256, 1, 16))
        ef = self.pick_ef(index)
        fid = ef.fid if ef is not None else 1
        if how == "select":
            self.send(select_ef(fid))
        p2 = {"sfi": fid << 3 | 0x04, "bad-p2": 0x05}.get(how, 0x04)
        self.send(Apdu(0x00, INS.READ_RECORD, record, p2, le=le).encode())

    # -- PINs ---------------------------------------------------------------------------

    @action()
    def retry_query(self, roll: int) -> None:
        """VERIFY with no data (the retry query), in the forms clients use and a few others."""
        dice = self.dice(roll)
        index = dice.below(8)
        form = dice.of(("select", "select", "sfi", "current", "with-le", "bad-p2", "bad-p1"))
        found = self.pick_pin(index)
        fid = found[1].fid if found else 0x18
        if form == "select":
            self.send(select_ef(fid))
        if self.careful and form in ("with-le", "bad-p2", "bad-p1"):
            form = "current"
        p1 = 0x01 if form == "bad-p1" else 0x00
        p2 = 0x80 | fid if form == "sfi" else 0x00 if form == "bad-p2" else 0x80
        le = 256 if form == "with-le" else None
        self.send(Apdu(0x00, INS.VERIFY, p1, p2, le=le).encode())

    @action(
        when=in_session(lambda m: any(m.bench.model.value(*p) for p in m.bench.model.pins())),
    )
    def verify_correct_pin(self, roll: int) -> None:
        """VERIFY with the right value: 9000, the counter back to its maximum."""
        dice = self.dice(roll)
        index, by_sfi, query_first = dice.below(8), dice.coin(), dice.coin()
        found = self.pick_pin(index)
        if found is None:
            return
        app, pin = found
        value = self.bench.model.value(app, pin)
        if value is None:
            return
        p2 = 0x80 | pin.fid if by_sfi else 0x80
        if self.careful or query_first:
            self.query_then(pin, p2, value)
            return
        if not by_sfi:
            self.send(select_ef(pin.fid))
        self.send(verify(value, p2))

    @action(when=in_session(lambda self: bool(self.bench.model.pins())))
    def verify_wrong_pin(self, roll: int) -> None:
        """VERIFY with a wrong value (right or wrong format).  On a disposable card, one time
        in eight until the key is blocked and once more, then CHANGE with that value (a
        blocked key answers blocked, an unverified one 6982, whatever its count); on any
        other card only within the guard's budget, between retry queries, and followed by the
        correct value."""
        dice = self.dice(roll)
        index, by_sfi, until_blocked = dice.below(8), dice.coin(), dice.below(8)
        wrong = wrong_value(dice)
        found = self.pick_pin(index)
        if found is None:
            return
        app, pin = found
        correct = self.bench.model.value(app, pin)
        if wrong == correct:
            wrong = wrong[:-1] + bytes((wrong[-1] ^ 0x01,))
        p2 = 0x80 | pin.fid if by_sfi else 0x80
        if not self.careful:
            if not by_sfi:
                self.send(select_ef(pin.fid))
            tries = 1 if until_blocked else (self.bench.model.remaining(app, pin) or 0) + 1
            for _ in range(tries):
                self.send(verify(wrong, p2))
            if pin.change_ins is not None:
                self.send(change_command(pin.change_ins, wrong, p2))
            return
        guard = self.bench.primary.guard
        if guard is None or correct is None or not guard.may_try_wrong((app.aid, pin.fid)):
            return
        if self.query_then(pin, p2, wrong) is not None:
            self.query_then(pin, p2, correct)

    @action(when=in_session(lambda self: bool(self.bench.model.pins())))
    def change_pin(self, roll: int) -> None:
        """CHANGE REFERENCE DATA / CHANGE KEY, mostly right after VERIFY of the old value.
        On a card that is not disposable only to the same value (nothing changes)."""
        dice = self.dice(roll)
        index = dice.below(8)
        kind = dice.of(("same", "new", "new", "bad-format", "other-ins", "empty"))
        login = dice.below(4)
        found = self.pick_pin(index)
        if found is None:
            return
        app, pin = found
        current = self.bench.model.value(app, pin)
        if self.careful:
            kind = "same"
        if kind == "same" and current is None:
            return
        if login and current is not None:
            self.query_then(pin, 0x80, current)
        else:
            self.send(select_ef(pin.fid))
        if kind == "same":
            value = current or b""
        elif kind == "bad-format":
            value = b"x" * 20
        elif kind == "empty":
            value = b""
        elif pin.value_format.startswith("[A-Z"):
            value = dice.text("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", 6, 16).encode()
        else:
            digits = pin.value_format.removeprefix("[0-9]{").removesuffix("}")
            size = int(digits) if digits.isdigit() else 4
            value = dice.text("0123456789", size, size).encode()
        change_ins = pin.change_ins or INS.CHANGE_REFERENCE_DATA
        if kind == "other-ins":
            swap = {
                INS.CHANGE_REFERENCE_DATA: INS.CHANGE_KEY,
                INS.CHANGE_KEY: INS.CHANGE_REFERENCE_DATA,
            }
            change_ins = swap[INS(change_ins)]
        self.send(change_command(change_ins, value))

    @action(when=lambda self: bool(self.bench.model.facts.pin_values))
    def verify_near_miss(self, roll: int) -> None:
        """VERIFY with a value close to a PIN the run knows (a prefix, one character more or
        changed, another case, padding, full-width digits, Lc up to 255), then the right
        value: the near miss is a wrong try (63Cx; 6700 and no try past 16 bytes).  On a
        card that is not disposable only within the guard's budget."""
        dice = self.dice(roll)
        kind, by_sfi = dice.of(NEAR_MISS_KINDS), dice.coin()
        targets = self.bench.known_pins(spare=2)
        targets = [t for t in targets if near_misses(t[2])[kind]] or targets
        if not targets:
            return
        app, pin, value = dice.of(targets)
        misses = near_misses(value)
        wrong = dice.of(misses[kind] or misses["change"])
        self.enter(app)
        p2 = 0x80 | pin.fid if by_sfi else 0x80
        if self.careful:
            guard = self.bench.primary.guard
            allowed = guard is not None and guard.may_try_wrong((app.aid, pin.fid))
            if allowed and self.query_then(pin, p2, wrong) is not None:
                self.query_then(pin, p2, value)
            return
        if not by_sfi:
            self.send(select_ef(pin.fid))
        self.send(verify(wrong, p2))
        self.send(verify(value, p2))

    @action(when=lambda self: not self.careful and bool(self.bench.model.facts.pin_values))
    def change_outside_format(self, roll: int) -> None:
        """CHANGE REFERENCE DATA / CHANGE KEY, right after VERIFY, to a value one step outside
        the PIN's format (a character too few or too many, one outside the alphabet, more
        than 16 bytes): refused, and the old value still opens (disposable cards only)."""
        targets = [t for t in self.bench.known_pins(spare=1) if t[1].change_ins is not None]
        if not targets:
            return
        dice = self.dice(roll)
        kind, by_sfi = dice.of(OUTSIDE_KINDS), dice.coin()
        app, pin, value = dice.of(targets)
        outside = outside_format(pin.value_format, value)
        new = dice.of(outside[kind] or outside["limits"])
        self.enter(app)
        p2 = 0x80 | pin.fid if by_sfi else 0x80
        if not by_sfi:
            self.send(select_ef(pin.fid))
        self.send(verify(value, p2))
        self.send(change_command(INS(pin.change_ins or INS.CHANGE_REFERENCE_DATA), new, p2))
        self.send(verify(value, p2))

    # -- keys ---------------------------------------------------------------------------

    @action()
    def sign_every_scheme(self, roll: int) -> None:
        """Each P1 of COMPUTE DIGITAL SIGNATURE with an input made for it, by every signing
        key of the card after its PIN: the signature must be exactly that scheme (P1 00 the
        whole padding block around the input as sent, PSS with its salt length)."""
        model = self.bench.model
        keys = [
            (app, key)
            for app in model.present_apps()
            for key in app.keys
            if key.how is KeyUse.SIGN and model.facts.present(app, key.fid) is True
        ]
        if not keys:
            return
        dice = self.dice(roll)
        app, key = dice.of(keys)
        scheme, payload = dice.of(REPEATED_SCHEME_CASES)
        form = dice.of(("select", "sfi", "default"))
        self.enter(app)
        self.log_in(app, key.use)
        if form == "select" or (form == "default" and not key.default):
            self.send(select_ef(key.fid))
        p2 = {"sfi": 0x80 | key.fid, "default": 0x00 if key.default else 0x80}.get(form, 0x80)
        self.send(Apdu(0x80, INS.COMPUTE_SIGNATURE, scheme, p2, payload, le=256).encode())

    @action()
    def sign(self, roll: int) -> None:
        """COMPUTE DIGITAL SIGNATURE with every P1 scheme and digest size, half the time
        after VERIFY of the key's PIN; the signature is checked with the card's certificate."""
        dice = self.dice(roll)
        index = dice.below(4)
        form = dice.of(("select", "select", "sfi", "current", "default", "other-p2"))
        login, extended = dice.coin(), dice.below(10)
        p1, data = scheme(dice), payload(dice)
        found = self.pick_key(index)
        if found is not None and login:
            self.log_in(*(found[0], found[1].use))
        fid = found[1].fid if found else 0x17
        if form == "select":
            self.send(select_ef(fid))
        p2 = {"sfi": 0x80 | fid, "default": 0x00, "other-p2": 0x01}.get(form, 0x80)
        long_form = extended == 0 and len(data) > 0 and self.bench.extended_ok
        command = Apdu(0x80, INS.COMPUTE_SIGNATURE, p1, p2, data, le=256, extended=long_form)
        self.send(command.encode())

    @action()
    def get_challenge(self, roll: int) -> None:
        """GET CHALLENGE: Le random bytes; extended Le is refused (6985)."""
        dice = self.dice(roll)
        le = dice.of((1 + dice.below(256), 8, 16))
        shape = dice.of(("normal", "normal", "normal", "extended", "p1", "no-le"))
        if shape == "extended" and not self.bench.extended_ok:
            shape = "normal"
        apdu = Apdu(
            0x00,
            INS.GET_CHALLENGE,
            0x01 if shape == "p1" else 0x00,
            0x00,
            le=None if shape == "no-le" else le,
            extended=shape == "extended",
        )
        # Always one challenge kept (none, b"", if the card gave none): what may run next
        # must not depend on the card's answer (hypothesis replays examples, and a card that
        # keeps its state may answer otherwise the second time).
        answer = self.send(apdu.encode())
        self.challenges.append(
            answer[:-2] if answer is not None and sw_of(answer) == SW.OK else b""
        )

    @action(when=lambda self: bool(self.challenges))
    def internal_authenticate(self, roll: int) -> None:
        """INTERNAL AUTHENTICATE of a challenge the card gave (one GET CHALLENGE kept)."""
        dice = self.dice(roll)
        index, form = dice.below(4), dice.of(("select", "sfi", "current", "no-le"))
        login, challenge = dice.coin(), dice.of(self.challenges)
        found = self.pick_key(index)
        if found is not None and login:
            self.log_in(*(found[0], found[1].use))
        fid = found[1].fid if found else 0x17
        if form == "select":
            self.send(select_ef(fid))
        p2 = 0x80 | fid if form == "sfi" else 0x80
        le = None if form == "no-le" else 256
        command = Apdu(0x00, INS.INTERNAL_AUTHENTICATE, 0x00, p2, challenge[:255], le=le)
        self.send(command.encode())

    # -- the free area ------------------------------------------------------------------

    def free_cases(self) -> list[tuple[AppSpec, EfSpec, str]]:
        """(application, EF, operation) for every write of the card's free-area EFs."""
        return [
            (app, ef, operation)
            for app in self.bench.model.present_apps()
            if app.free_area
            for ef in app.efs
            for operation, _rule in ef.writes
        ]

    @action(when=lambda self: not self.careful and bool(self.free_cases()))
    def free_area_write(self, roll: int) -> None:
        """A free-area write at its edges, in a fresh session under one credential state
        (half the time what the EF's rule asks for; else nothing, a PIN or a key alone, a
        pair): UPDATE BINARY across and at the end,
        UPDATE RECORD of the last record and the one after, a byte too long, APPEND until
        the EF is full, DECREASE to 0 and below, INCREASE to the maximum and past it, UPDATE
        of a counter above its maximum; then the EF is read back whole."""
        bench, model = self.bench, self.bench.model
        cases = self.free_cases()
        dice = self.dice(roll)
        pick, variant, by_sfi = dice.below(2**32), dice.below(2**32), dice.coin()
        app, ef, operation = cases[pick % len(cases)]
        rule = ef.rule(operation)
        fitting = [(c,) for c in bench.credentials(app) if c.opens in rule]
        states = fitting if fitting and variant % 2 else bench.credential_states(app)
        credentials = states[variant // 2 % len(states)]
        variant //= 2 * len(states)
        self.send(select_aid(ISD_AID))
        self.send(select_aid(app.aid))
        for credential in credentials:
            bench.open_with(app, credential)
        if not by_sfi:
            self.send(select_ef(ef.fid))
        holds = model.holds(app, ef)
        for command in self.edge_writes(ef, operation, holds, variant, by_sfi):
            self.send(command)
        self.read_back(app, ef)

    def edge_writes(
        self, ef: EfSpec, operation: str, holds: list[bytes] | bytes, pick: int, by_sfi: bool
    ) -> list[bytes]:
        """The commands of one `free_area_write` (adversarial.py gives the values)."""
        record_p2 = ef.fid << 3 | 0x04 if by_sfi else 0x04
        if ef.structure is Structure.TRANSPARENT:
            commands = []
            for offset, data in transparent_writes(ef.size or 0, pick):
                if by_sfi and offset <= 0xFF:
                    p1, p2 = 0x80 | ef.fid, offset
                else:
                    p1, p2 = offset >> 8 & 0x7F, offset & 0xFF
                commands.append(Apdu(0x00, INS.UPDATE_BINARY, p1, p2, data).encode())
            return commands
        records = holds if isinstance(holds, list) else []
        size = ef.record_size or 1
        if operation == "append":
            count = (ef.max_records or 0) - len(records) + 1 if pick % 4 == 0 else 1
            _number, data = record_writes(len(records), size, pick // 4)
            p2 = ef.fid << 3 if by_sfi else 0x00
            return [Apdu(0x00, INS.APPEND_RECORD, 0x00, p2, data).encode()] * max(count, 1)
        if operation == "update" and ef.structure is Structure.COUNTER:
            values = (0, ef.maximum or 0, (ef.maximum or 0) + 1)
            value = values[pick % len(values)]
            data = value.to_bytes(size + (pick // 3 % 5 == 0), "big")
            number = 1 if pick // 15 % 4 else len(records) + 1
            return [Apdu(0x00, INS.UPDATE_RECORD, number, record_p2, data).encode()]
        if operation == "update":
            number, data = record_writes(len(records), size, pick)
            return [Apdu(0x00, INS.UPDATE_RECORD, number, record_p2, data).encode()]
        value = int.from_bytes(records[0], "big") if records else 0
        step = 0 if operation == "decrease" else 1
        amount = counter_steps(value, ef.maximum or 0, size, pick // 2 * 2 + step)
        ins = INS.DECREASE if operation == "decrease" else INS.INCREASE
        le = 256 if pick % 2 else None
        return [Apdu(0x00, ins, 0x01, record_p2, amount, le=le).encode()]

    def read_back(self, app: AppSpec, ef: EfSpec) -> None:
        """Read a free-area EF whole (by SFI): every record and the one after, or its bytes."""
        for command in read_back_commands(ef, self.bench.model.holds(app, ef)):
            self.send(command)

    def aes_keys(self) -> list[tuple[AppSpec, AesKeySpec]]:
        return [
            (app, key)
            for app in self.bench.model.present_apps()
            for key in app.aes_keys
            if app.free_area
        ]

    @action(when=lambda self: not self.careful and bool(self.aes_keys()))
    def external_authenticate(self, roll: int) -> None:
        """GET CHALLENGE and EXTERNAL AUTHENTICATE: a fresh challenge answered right opens
        the key, once; the same answer again, an answer to an older challenge, to none, to
        one from before a reset or another application, to a 32-byte one, with another
        key, to an unknown key or of 8 bytes all fail; wrong answers until the key blocks."""
        bench, model = self.bench, self.bench.model
        dice = self.dice(roll)
        kind, size, pick = dice.of(FRESHNESS), dice.of((8, 16)), dice.below(2**16)
        app, key = dice.of(self.aes_keys())
        number, credential = key.number, (app.aid, key_credential(key.number))
        remaining = model.counters.get(credential)
        if kind in ("stale", "wrong", "other-key") and remaining is not None and remaining < 2:
            kind = "fresh"
        self.enter(app)
        challenge = bench.challenge(32 if kind == "long-challenge" else size)
        if kind in ("stale", "after-reset", "after-switch", "none"):
            if kind == "stale":
                bench.challenge(size)
            elif kind == "after-switch":
                others = [a for a in model.present_apps() if a is not app]
                self.send(select_aid(others[pick % len(others)].aid if others else ISD_AID))
            elif kind in ("after-reset", "none"):
                bench.reset()
            if kind != "none":
                self.send(select_aid(app.aid))
        if kind in ("wrong", "block", "other-key", "unknown-key", "short"):
            self.wrong_answer(app, key, kind, challenge, remaining)
        else:
            bench.authenticate(app, number, challenge[:16])
        if kind == "replay":
            bench.authenticate(app, number, challenge[:16])
        if kind in ("stale", "wrong", "other-key"):
            bench.authenticate(app, number, bench.challenge(size))  # restores the counter

    def wrong_answer(
        self, app: AppSpec, key: AesKeySpec, kind: str, challenge: bytes, remaining: int | None
    ) -> None:
        """EXTERNAL AUTHENTICATE that must fail: a wrong cryptogram (until blocked for
        `block`, then a right one), another key's, an unknown key's, 8 bytes long."""
        facts = self.bench.model.facts
        others = [k for k in app.aes_keys if k.number != key.number]
        if kind == "other-key" and others:
            cryptogram = cmac(facts.aes_keys[(app.aid, others[0].number)], challenge)
        else:
            cryptogram = cmac(bytes(16), challenge)
        p2 = 0x80 | key.number
        if kind == "unknown-key":
            p2 = 0x80 | (max(k.number for k in app.aes_keys) + 1)
        data = cryptogram[:8] if kind == "short" else cryptogram
        command = Apdu(0x00, INS.EXTERNAL_AUTHENTICATE, 0x00, p2, data).encode()
        self.send(command)
        if kind == "block":
            for _ in range(remaining or 0):
                self.send(Apdu(0x00, INS.GET_CHALLENGE, 0x00, 0x00, le=16).encode())
                self.send(command)
            self.bench.authenticate(app, key.number, self.bench.challenge(16))

    # -- power --------------------------------------------------------------------------

    @action()
    def reset_or_power_cycle(self, roll: int) -> None:
        """Warm reset or power cycle: the session ends, the counters stay (half the time
        read back at once in the application the card was in)."""
        dice = self.dice(roll)
        cold, look = dice.coin(), dice.coin()
        app = self.bench.model.app
        if cold:
            self.bench.power_cycle()
        else:
            self.bench.reset()
        if look and app is not None:
            self.send(select_aid(app.aid))
            for _app, pin in self.bench.model.pins():
                self.send(verify(b"", 0x80 | pin.fid))

    @action(when=lambda self: self.bench.restartable)
    def power_loss(self, roll: int) -> None:
        """A power loss or a process restart between two commands (disposable targets with
        `restart`): the card is closed and opened again from its state directory and the
        counters it could lose are read back at once (`look_back`). When nothing it must
        keep has changed since it was powered on, a wrong VERIFY first gives it something to
        lose (the right one puts the counter back after). A power cycle instead once the
        example or the run has had its restarts; the same commands around it either way, so
        what rules may run next does not depend on that (hypothesis replays examples); the
        roll picks the PIN."""
        bench = self.bench
        spent = None if bench.kept_changed else self.spend_a_try(roll)
        moved = bench.moved_counters()
        if bench.may_restart:
            bench.restart()
        else:
            bench.power_cycle()
        self.look_back(moved, roll)
        if spent is not None:
            app, pin, value = spent
            self.send(select_aid(app.aid))
            self.send(verify(value, 0x80 | pin.fid))
        bench.reset()

    def spend_a_try(self, roll: int) -> tuple[AppSpec, PinSpec, bytes] | None:
        """A wrong VERIFY (one character off) of a PIN the run knows that has tries to
        spare, chosen by `roll`; the PIN and its right value, or None if there is none."""
        spare = self.bench.known_pins(spare=2)
        if not spare:
            return None
        app, pin, value = self.dice(roll).of(spare)
        self.send(select_aid(app.aid))
        self.send(verify(near_misses(value)["change"][0], 0x80 | pin.fid))
        return app, pin, value

    def look_back(self, moved: set[ObjectKey], roll: int) -> None:
        """Read back (with the retry query, which costs nothing) each PIN counter a power
        loss could betray: those in `moved` (`Bench.moved_counters`), those not at their
        start, not starting full or not known, and one that `roll` picks (a loss that
        touches a counter nothing moved)."""
        model = self.bench.model
        start = model.facts.initial_counters

        def may_betray(app: AppSpec, pin: PinSpec) -> bool:
            key = (app.aid, pin.fid)
            now, first = model.counters.get(key), start.get(key)
            return key in moved or now is None or now != first or first != pin.max_tries

        every = [(app, pin) for app in model.present_apps() for pin in model.pins_in(app)]
        if not every:
            return
        extra = every[self.dice(roll).below(len(every))]
        for app in model.present_apps():
            wanted = [
                pin for a, pin in every if a is app and ((a, pin) == extra or may_betray(a, pin))
            ]
            if wanted:
                self.send(select_aid(app.aid))
            for pin in wanted:
                self.send(verify(b"", 0x80 | pin.fid))

    @action(when=lambda self: not self.careful and self.bench.extended_ok)
    def secure_messaging_session(self, roll: int) -> None:
        """docs/secure-messaging.md: open, use, break and reopen a session, byte for byte
        (a session key seed and up to 8 steps)."""
        dice = self.dice(roll)
        seed, steps = dice.blob(32, 16), [dice.of(SM_STEPS) for _ in range(dice.below(9))]
        secure_messaging.session_rule(self, seed, steps)

    # -- what no client sends (only where nothing real can be harmed) --------------------

    @action(when=lambda self: not self.careful)
    def odd_command(self, roll: int) -> None:
        """Classes other than 00 / 80 (channels, secure messaging, chaining, the reserved
        20-3F, proprietary ones), SELECT by FID with a P2 other than 0C, unknown
        instructions, broken length fields, SELECT of the MF, SET SESSION KEY with a random
        cryptogram (secure messaging is never opened)."""
        dice = self.dice(roll)
        kind = dice.of(("class", "instruction", "length", "master-file", "session-key", "ef-p2"))
        cla, ins, lc = dice.of(ODD_CLASSES), dice.of(ODD_INSTRUCTIONS), 1 + dice.below(255)
        body = dice.blob(1 + dice.below(12))
        if kind == "class":
            command = bytes((cla, ins, 0x00, 0x00))
        elif kind == "instruction":
            known = ins in (0xA4, 0xB0, 0x20, 0x2A)
            command = bytes((0x80 if known and ins != 0x2A else 0x00, ins, 0x00, 0x00))
        elif kind == "session-key":
            long_form = self.bench.extended_ok  # the cryptogram is 256 bytes (docs/card-spec.md §4)
            cryptogram = (body * 256)[:256] if long_form else body
            command = Apdu(0x80, INS.SET_SESSION_KEY, 0, 0, cryptogram, extended=long_form).encode()
        elif kind == "ef-p2":  # SELECT by FID answers only P2 0C (6A86 otherwise)
            p2 = dice.of((0x00, 0x04, 0x08, 0x0D))
            command = Apdu(0x00, INS.SELECT, 0x02, p2, b"\x00\x01").encode()
        elif kind == "length":
            if lc in (len(body), len(body) - 1):
                lc = (lc + 2) % 256 or 1
            command = b"\x00\xa4\x04\x0c" + bytes((lc,)) + body
        else:
            data = (b"", b"\x3f\x00", b"\x00\x01")[lc % 3]
            command = Apdu(0x00, INS.SELECT, 0x00, 0x00, data).encode()
        self.send(command)

    # -- invariants (on the answers alone, not on the model's predictions) --------------

    def _check(self, kind: str) -> None:
        observer = self.bench.observer
        if observer.violations[kind]:
            message = f"invariant: {observer.messages[kind]}"
            raise self.bench.fail(INVARIANT_SECTIONS[kind], message)

    def answers_keep_the_invariants(self) -> None:
        """A PIN counter only rises on a correct VERIFY, the retry query never costs a try,
        a blocked key stays blocked, no protected object answers without its key: checked
        at the end of every step (a hypothesis `@invariant` costs the engine as much as a
        small action, at every step)."""
        if self.bench.observer.violations:
            for kind in ("blocked", "counter", "protected", "query"):
                self._check(kind)


def build_machine(bench: Bench) -> type[ConformanceMachine]:
    """A machine class bound to `bench` (hypothesis instantiates it once per example),
    without the actions that can never run on its target."""
    never: set[str] = set()
    if not bench.restartable:
        never.add("power_loss")
    if not bench.disposable:
        never |= {"odd_command", "change_outside_format", "secure_messaging_session"}
    if not bench.disposable or not bench.primary.facts.extra_apps:
        never |= {"free_area_write", "external_authenticate"}
    actions = tuple(a for a in ACTIONS if a.name not in never)
    return type("CardConformance", (ConformanceMachine,), {"bench": bench, "actions": actions})
