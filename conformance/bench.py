"""One bench run: a target (or two, in differential mode), what is known of the card, the
PIN guard, the per-example transcript, the survey and the invariants' observer."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from .adversarial import PSS_CASES, SCHEME_CASES, near_misses, record_update_bounds
from .apdu import (
    INS,
    SW,
    Apdu,
    MalformedApdu,
    change_command,
    read_binary,
    select_aid,
    select_ef,
    sw_of,
    verify,
)
from .guard import GuardRefusal, PinGuard
from .model import MF_OBJECTS, CardFacts, CardModel, Expectation, ObjectKey, brief, cmac
from .spec import ISD_AID, JPKI, AppSpec, EfSpec, KeyUse, PinSpec, Structure, key_credential
from .targets import RecordingTarget, Target, TargetError, TargetLayer
from .transcript import Action, Exchange, Pattern

# A CLA of each kind: logical channels 1-3 and 4-19, secure messaging, chaining (and with
# SM), the reserved 20-3F, proprietary 81-9F, unused A0-FF (ISO 7816-4 §5.4.1).
ODD_CLASSES = (
    *(0x01, 0x03, 0x08, 0x0C, 0x10, 0x14),
    *(0x20, 0x21, 0x2C, 0x30, 0x3F),
    *(0x44, 0x70, 0x81, 0x84, 0x90, 0xA0, 0xB0, 0xFF),
)


# What may happen between VERIFY and the use of what it opened (docs/card.md, card-wide
# behaviour; the re-SELECT as the profile's `reselect_clears_state` says).
SWEEP_EVENTS = ("reselect", "isd", "reset", "power", "other-app")
# The instructions whose answers the invariants' observer looks at.
OBSERVED_INSTRUCTIONS = frozenset((INS.VERIFY, INS.READ_BINARY, INS.COMPUTE_SIGNATURE))
CHALLENGE = bytes(range(0x10, 0x20))  # what INTERNAL AUTHENTICATE signs in access checks


@dataclass(frozen=True)
class Credential:
    """What opens objects: a PIN with its value (VERIFY), or a free-area AES key
    (GET CHALLENGE, then EXTERNAL AUTHENTICATE with the AES-CMAC of the challenge)."""

    pin: PinSpec | None = None
    value: bytes = b""
    key: int = 0  # the AES key's number

    @property
    def opens(self) -> int:
        """What it opens, as access rules name it (a PIN's FID, or key:N)."""
        return self.pin.fid if self.pin is not None else key_credential(self.key)


def write_commands(ef: EfSpec, operation: str, current: list[bytes] | bytes) -> list[bytes]:
    """One ordinary use of a free-area `operation` on `ef` (by SFI), given what the EF
    holds now: the first byte or record written again, a record appended, a step of 1."""
    sfi = ef.fid
    if operation == "update" and ef.structure is Structure.TRANSPARENT:
        first = bytes(current[:1]) if isinstance(current, bytes) else b""
        command = Apdu(0x00, INS.UPDATE_BINARY, 0x80 | sfi, 0x00, first or b"\xff")
    elif operation == "update":
        record = current[0] if isinstance(current, list) and current else b"\x00"
        command = Apdu(0x00, INS.UPDATE_RECORD, 0x01, sfi << 3 | 0x04, record)
    elif operation == "append":
        data = bytes(range(1, (ef.record_size or 1) + 1))
        command = Apdu(0x00, INS.APPEND_RECORD, 0x00, sfi << 3, data)
    else:
        ins = INS.DECREASE if operation == "decrease" else INS.INCREASE
        command = Apdu(0x00, ins, 0x01, sfi << 3 | 0x04, b"\x01", le=256)
    return [command.encode()]


def bound_commands(ef: EfSpec, operation: str, current: list[bytes] | bytes) -> list[bytes]:
    """A free-area `operation` on `ef` (by SFI) at its limits, given what the EF holds."""
    p2, size = ef.fid << 3 | 0x04, ef.record_size or 1
    if ef.structure is Structure.TRANSPARENT:
        end = ef.size or 0
        return [
            Apdu(0x00, INS.UPDATE_BINARY, offset >> 8, offset & 0xFF, b"\x5a" * length).encode()
            for offset, length in ((end, 1), (end - 1, 2), (end - 1, 1))
        ]
    records = current if isinstance(current, list) else []
    if operation == "append":
        room = (ef.max_records or 0) - len(records)
        long = bytes(size + 1)
        append = [
            Apdu(0x00, INS.APPEND_RECORD, 0x00, ef.fid << 3, bytes((n,)))
            for n in range(1, room + 2)
        ]
        return [Apdu(0x00, INS.APPEND_RECORD, 0x00, ef.fid << 3, long).encode()] + [
            a.encode() for a in append
        ]
    if operation == "update" and ef.structure is Structure.COUNTER:
        maximum = ef.maximum or 0
        values = (
            (maximum + 1).to_bytes(size + 1, "big")[-size - 1 :],
            maximum.to_bytes(size, "big"),
        )
        return [Apdu(0x00, INS.UPDATE_RECORD, 0x01, p2, value[-size:]).encode() for value in values]
    if operation == "update":
        return record_update_bounds(ef, len(records))
    value = int.from_bytes(records[0], "big") if records else 0
    room = value if operation == "decrease" else (ef.maximum or 0) - value
    ins = INS.DECREASE if operation == "decrease" else INS.INCREASE
    amounts = [room + 1, room, 1] if room else [1]
    return [
        Apdu(0x00, ins, 0x01, p2, amount.to_bytes(size, "big"), le=256).encode()
        for amount in amounts
    ]


def read_back_commands(ef: EfSpec, current: list[bytes] | bytes) -> list[bytes]:
    """Read a free-area EF whole (by SFI): its bytes, or every record and the one after."""
    if ef.structure is Structure.TRANSPARENT:
        return [Apdu(0x00, INS.READ_BINARY, 0x80 | ef.fid, 0x00, le=256).encode()]
    count = len(current) if isinstance(current, list) else 0
    return [
        Apdu(0x00, INS.READ_RECORD, number, ef.fid << 3 | 0x04, le=256).encode()
        for number in range(1, count + 2)
    ]


def use_commands(app: AppSpec, fid: int, by_sfi: bool) -> list[bytes]:
    """What uses object `fid` of `app` once, by FID (SELECT first) or by SFI: a READ BINARY
    of 8 bytes, READ RECORD 1, a signature (P1 02) or INTERNAL AUTHENTICATE."""
    key, ef = app.key(fid), app.ef(fid)
    p2 = 0x80 | fid if by_sfi else 0x80
    if key is not None and key.how is KeyUse.SIGN:
        digest = hashlib.sha256(CHALLENGE).digest()
        command = Apdu(0x80, INS.COMPUTE_SIGNATURE, 0x02, p2, digest, le=256)
    elif key is not None:
        command = Apdu(0x00, INS.INTERNAL_AUTHENTICATE, 0x00, p2, CHALLENGE, le=256)
    elif ef is not None and ef.structure is not Structure.TRANSPARENT:
        command = Apdu(0x00, INS.READ_RECORD, 0x01, fid << 3 | 0x04 if by_sfi else 0x04, le=256)
    else:
        command = Apdu(0x00, INS.READ_BINARY, 0x80 | fid if by_sfi else 0x00, 0x00, le=8)
    return [command.encode()] if by_sfi else [select_ef(fid), command.encode()]


class Deviation(AssertionError):
    """The card answered what the model (or an invariant) says it must not."""

    def __init__(self, section: str, message: str, transcript: list[Exchange], target: str) -> None:
        super().__init__(f"{section}: {message}")
        self.section = section
        self.message = message
        self.transcript = transcript
        self.target = target


class Divergence(Deviation):
    """Differential mode: the two targets answered the same command differently."""


@dataclass
class SectionStats:
    steps: int = 0
    failures: list[Deviation] = field(default_factory=list)


@dataclass
class Stats:
    """Counts for the report: APDUs per spec section, rule steps, examples, time."""

    sections: dict[str, SectionStats] = field(default_factory=dict)
    examples: int = 0
    rule_steps: int = 0
    apdus: int = 0
    refusals: int = 0
    elapsed: float = 0.0

    def section(self, name: str) -> SectionStats:
        stats = self.sections.get(name)
        if stats is None:
            stats = self.sections[name] = SectionStats()
        return stats

    @property
    def steps_per_second(self) -> float:
        return self.rule_steps / self.elapsed if self.elapsed else 0.0


class Observer:
    """Watches answers only (not the model's predictions) for the bench's invariants."""

    def __init__(self) -> None:
        self.counts: dict[ObjectKey, int] = {}
        self.blocked: set[ObjectKey] = set()
        self.verified: set[ObjectKey] = set()
        self.violations: Counter[str] = Counter()
        self.messages: dict[str, str] = {}

    def _violate(self, kind: str, message: str) -> None:
        self.violations[kind] += 1
        self.messages.setdefault(kind, message)

    def power(self) -> None:
        self.verified.clear()

    def pin_answer(
        self, key: ObjectKey, pin: PinSpec, query: bool, sw: int, blocked_sw: int
    ) -> None:
        last = self.counts.get(key)
        if sw & 0xFFF0 == SW.VERIFY_FAILED:
            count = sw & 0x0F
            if query and last is not None and count != last:
                kind = "query" if count < last else "counter"
                self._violate(kind, f"retry query of {pin.fid:04X} went from {last} to {count}")
            if not query and last is not None and count >= last and last > 0:
                self._violate("counter", f"wrong try on {pin.fid:04X} left {count}, was {last}")
            if key in self.blocked and count:
                self._violate("blocked", f"blocked key {pin.fid:04X} shows {count} tries again")
            self.counts[key] = count
            if count == 0:
                self.blocked.add(key)
        elif sw == SW.OK and not query:
            if key in self.blocked:
                self._violate("blocked", f"blocked key {pin.fid:04X} accepted VERIFY")
            self.counts[key] = pin.max_tries
            self.verified.add(key)
        elif sw == blocked_sw:
            self.blocked.add(key)
            self.counts[key] = 0

    def protected_answer(self, app: AppSpec, needs: frozenset[int], what: str) -> None:
        if needs and not any((app.aid, fid) in self.verified for fid in needs):
            self._violate("protected", f"{what} answered 9000 without its PIN verified")


def restart_of(target: Target) -> Callable[[], bytes] | None:
    """The `restart` of the card under `target` (seen through the layers that only collect
    61xx pieces or remember answers; a recording would miss it), or None when it has none:
    a power loss between two commands."""
    inner: object = target
    while isinstance(inner, TargetLayer) and not isinstance(inner, RecordingTarget):
        inner = inner.inner
    restart = getattr(inner, "restart", None)
    return restart if callable(restart) else None


@dataclass
class Link:
    """One target as the bench drives it: through the PIN guard unless it is disposable."""

    target: Target
    facts: CardFacts
    guard: PinGuard | None = None
    extended_ok: bool = True  # the reader carries extended-length APDUs

    @property
    def port(self) -> Target | PinGuard:
        return self.guard if self.guard is not None else self.target

    @property
    def disposable(self) -> bool:
        return self.target.disposable

    @property
    def restart(self) -> Callable[[], bytes] | None:
        return restart_of(self.target) if self.disposable else None


# Instructions that change a PIN's value on some card: CHANGE REFERENCE DATA, CHANGE KEY
# (CLA 80; INCREASE under CLA 00), RESET RETRY COUNTER.
VALUE_CHANGING_INS = frozenset({INS.CHANGE_REFERENCE_DATA, INS.CHANGE_KEY, 0x2C})


def restore_initial_state(link: Link, model: CardModel, at_risk: set[bytes | None]) -> bool:
    """Put a disposable card back in its initial state with APDUs, where that is possible
    (reopening a card costs far more than a VERIFY): counters that are down but not
    blocked go back up with the correct PIN, changed PINs are changed back.  The counters
    are then read back, and the values of the PINs of the applications in `at_risk` (those
    a `VALUE_CHANGING_INS` was sent to; None: with none selected) are checked; any surprise
    returns False and the target is reopened instead.
    """
    if model.irreversible:  # free-area writes, key counters
        return False
    facts, port = link.facts, link.port
    initial = facts.initial_counters
    for app in model.present_apps():
        touched = [
            pin
            for pin in app.pins
            if model.counters.get((app.aid, pin.fid)) != initial.get((app.aid, pin.fid))
            or model.values.get((app.aid, pin.fid)) != facts.pin_values.get((app.aid, pin.fid))
        ]
        if not touched:
            continue
        port.reset()
        if sw_of(port.transmit(select_aid(app.aid))) != SW.OK:
            return False
        for pin in touched:
            key = (app.aid, pin.fid)
            value, original = model.values.get(key), facts.pin_values.get(key)
            if not model.counters.get(key) or initial.get(key) != pin.max_tries:
                return False
            if value is None or original is None:
                return False
            commands = [select_ef(pin.fid), verify(value)]
            if value != original:
                if pin.change_ins is None:
                    return False
                cla, p1 = (0x00, 0x01) if pin.change_ins == INS.CHANGE_REFERENCE_DATA else (0x80, 0)
                commands.append(Apdu(cla, pin.change_ins, p1, 0x80, original).encode())
            if any(sw_of(port.transmit(command)) != SW.OK for command in commands):
                return False
    port.power_cycle()
    for app in model.present_apps():
        if sw_of(port.transmit(select_aid(app.aid))) != SW.OK:
            return False
        risky = app.aid in at_risk or None in at_risk
        for pin in app.pins:
            start = initial.get((app.aid, pin.fid))
            if start is not None and facts.present(app, pin.fid) is True:
                by_sfi = 0x80 | pin.fid  # the PIN's own reference: no SELECT EF needed
                if sw_of(port.transmit(verify(b"", by_sfi))) != 0x63C0 | start:
                    return False
                # A full counter of a PIN that may have changed is checked with the PIN
                # itself: a card that changed it behind the model's back (a planted bug) is
                # reopened, not reused.
                value = facts.pin_values.get((app.aid, pin.fid))
                full = risky and value is not None and start == pin.max_tries
                if full and sw_of(port.transmit(verify(value or b"", by_sfi))) != SW.OK:
                    return False
    port.power_cycle()
    return True


def _answer(model: CardModel | None, command: bytes, key: bytes) -> bytes:
    """`command` (an EXTERNAL AUTHENTICATE) with the AES-CMAC under `key` of the challenge
    `model`'s card gave last; unchanged without a key or a challenge."""
    last = model.session.last_challenge if model is not None and key else None
    return command[:5] + cmac(key, last) if last is not None else command


class Bench:
    """Drives one run; the state machine calls `exchange` for every command."""

    def __init__(self, primary: Link, secondary: Link | None = None) -> None:
        self.primary = primary
        self.secondary = secondary
        self.stats = Stats()
        self.transcript: list[Exchange] = []
        self.model = CardModel(primary.facts, fresh=True)
        self.secondary_model: CardModel | None = None
        self.observer = Observer()
        self.capabilities: dict[str, str] = {}
        self.on_example: Callable[[int], None] | None = None
        self.last_deviation: Deviation | None = None
        self._dirty = False
        self.restarts = 0
        self._answering: dict[bytes, bytes] = {}  # EXTERNAL AUTHENTICATE sent -> its AES key
        self._restarted = False  # in this example
        self._kept_at_power_on = self.model.initially_kept  # when it was last powered on
        self._values_at_risk: set[bytes | None] = set()  # see restore_initial_state

    @property
    def links(self) -> Iterator[Link]:
        yield self.primary
        if self.secondary is not None:
            yield self.secondary

    @functools.cached_property
    def disposable(self) -> bool:
        """Every target is disposable (fixed for a bench: preconditions ask it every step)."""
        return all(link.disposable for link in self.links)

    @property
    def extended_ok(self) -> bool:
        return all(link.extended_ok for link in self.links)

    # -- examples -----------------------------------------------------------------------

    def begin_example(self) -> None:
        """A new hypothesis example: fresh (or reset) card, fresh session model."""
        self.stats.examples += 1
        if self.on_example is not None:
            self.on_example(self.stats.examples)
        self.transcript = []
        self.observer = Observer()
        models = [self.model, self.secondary_model]
        for link, model in zip(self.links, models, strict=False):
            restorable = link.disposable and model is not None and not self._dirty
            at_risk = self._values_at_risk
            if not (
                restorable and model is not None and restore_initial_state(link, model, at_risk)
            ):
                link.port.fresh()
        self._values_at_risk = set()
        self._dirty = False
        self._restarted = False
        self.model = CardModel(self.primary.facts, fresh=self.primary.disposable)
        self._kept_at_power_on = self.model.initially_kept
        if self.secondary is not None:
            self.secondary_model = CardModel(self.secondary.facts, fresh=self.secondary.disposable)
        if not self.disposable:
            self.transcript.append(Exchange(Action.RESET, b"", Pattern("[*]")))
            self.sync_counters()

    def sync_counters(self) -> None:
        """Read every PIN counter with the retry query (it costs nothing)."""
        for app in self.model.present_apps():
            self.exchange(select_aid(app.aid))
            for _app, pin in self.model.pins():
                self.exchange(select_ef(pin.fid))
                self.exchange(verify(b""))
        self.reset()

    # -- exchanges ----------------------------------------------------------------------

    def fail(self, section: str, message: str, cls: type[Deviation] = Deviation) -> Deviation:
        """A deviation to raise; the card may now be in a state the model does not know, so
        the next example starts on a fresh one."""
        deviation = cls(section, message, list(self.transcript), self.primary.target.name)
        self.last_deviation = deviation
        self._dirty = True
        return deviation

    def send(self, command: bytes) -> bytes | None:
        """`exchange`, or None if the PIN guard refused the command (nothing was sent)."""
        try:
            return self.exchange(command)
        except GuardRefusal:
            return None

    def exchange(self, command: bytes, answering: bytes = b"") -> bytes:
        """Send `command` to every target, check each answer, apply its effect.

        `answering` is the AES key of an EXTERNAL AUTHENTICATE that answers the challenge
        the card gave last (used up or not): its cryptogram is made for each target's own
        challenge, and made again when the command is sent again (minimizing, replaying).

        In differential mode the guarded target goes first: a command its PIN guard refuses
        reaches neither card, so both stay in the same state."""
        if not command and self.restartable:
            # A RESTART line of a transcript being cut down: runner._replay hands the actions
            # it has no branch for to `exchange` with their (empty) command.
            self.restart()
            return b""
        key = answering or self._answering.get(command, b"")
        sent = _answer(self.model, command, key) if key else command
        if key and (sent != command or answering):
            self._answering[sent] = key
        if len(sent) > 1 and sent[1] in VALUE_CHANGING_INS:
            self._values_at_risk.add(self.model.app.aid if self.model.app else None)
        expectation = self.model.expect(sent)
        secondary, primary = self.secondary, self.primary
        if secondary is None:
            response = self._send(primary, sent)
        else:  # the guarded target first (see above)
            other_command = _answer(self.secondary_model, command, key) if key else command
            if primary.guard is None:
                second = self._send(secondary, other_command)
            response = self._send(primary, sent)
            if primary.guard is not None:
                second = self._send(secondary, other_command)
        derived = key if key and self.model.session.last_challenge is not None else b""
        exchange = Exchange(
            Action.APDU, sent, expectation.pattern, expectation.note, cmac_key=derived
        )
        self._record(exchange, expectation, response)
        if secondary is not None and self.secondary_model is not None:
            other = self.secondary_model.expect(other_command)
            self._compare(expectation, response, second)
            if other.effect is not None:
                other.effect(second)
        if expectation.effect is not None:
            expectation.effect(response)
        self._observe(expectation.observed or sent, response)
        return response

    def _send(self, link: Link, command: bytes) -> bytes:
        try:
            return link.port.transmit(command)
        except GuardRefusal:
            self.stats.refusals += 1
            raise
        except TargetError as error:
            raise self.fail("transport", str(error)) from None

    def _record(self, exchange: Exchange, expectation: Expectation, response: bytes) -> None:
        self.stats.apdus += 1
        self.stats.section(expectation.section).steps += 1
        if self.model.app is not None:  # before the effect: the application it ran in
            self.stats.section(self.model.app.section).steps += 1
        problem = expectation.problem(response)
        if problem is None:
            self.transcript.append(exchange)
            return
        got = brief(response, 64)
        self.transcript.append(replace(exchange, note=f"card answered {got}"))
        raise self.fail(expectation.section, problem)

    def _compare(self, expectation: Expectation, first: bytes, second: bytes) -> None:
        same = first[-2:] == second[-2:] and len(first) == len(second)
        if same and expectation.portable:
            same = first == second
        if not same:
            self.transcript.append(
                Exchange(
                    Action.APDU,
                    self.transcript[-1].command,
                    Pattern.exact(first) if expectation.portable else expectation.pattern,
                    f"{self.secondary.target.name if self.secondary else ''} answered "
                    f"{brief(second, 64)}",
                )
            )
            raise self.fail(
                expectation.section,
                f"targets differ: {brief(first)} vs {brief(second)}",
                Divergence,
            )

    def _power(self, action: Action) -> None:
        expectation = self.model.expect_atr()
        answers = []
        for link in self.links:
            port, restart = link.port, link.restart
            if action is Action.RESTART and restart is not None:
                atr: bytes | None = restart()
            else:
                atr = port.power_cycle() if action is Action.POWER else port.reset()
            if atr is None:
                atr = port.reset()
            answers.append(atr)
        self._record(Exchange(action, b"", expectation.pattern), expectation, answers[0])
        if action is not Action.RESET:
            self._kept_at_power_on = self.model.kept()
            self.model.tried.clear()
        if expectation.effect is not None:
            expectation.effect(answers[0])
        if self.secondary_model is not None:
            other = self.secondary_model.expect_atr()
            if other.effect is not None:
                other.effect(answers[-1])
        self.observer.power()

    def reset(self) -> None:
        self._power(Action.RESET)

    def power_cycle(self) -> None:
        self._power(Action.POWER)

    # Reopening the emulator costs a few steps; a run restarts at most this often (once
    # per example), so that a target slower to reopen stays usable.
    max_restarts = 16

    @functools.cached_property
    def restartable(self) -> bool:
        """Every target is disposable and has `restart` (fixed for a bench)."""
        return all(link.restart is not None for link in self.links)

    @property
    def may_restart(self) -> bool:
        """A power loss may be a restart now: restartable targets, once per example, at most
        `max_restarts` times a run."""
        return self.restartable and not self._restarted and self.restarts < self.max_restarts

    @property
    def kept_changed(self) -> bool:
        """Whether what the card must keep (counters, PINs, free-area EFs) changed since it
        was last powered on: what a restart now must not lose."""
        return self.model.kept() != self._kept_at_power_on

    def moved_counters(self) -> set[ObjectKey]:
        """The counters the model saw move since the card was last powered on, and the PINs
        tried since then (the card wrote their counters: a wrong try put right by the
        right value moved nothing, but wrote twice)."""
        now, before = self.model.counters, dict(self._kept_at_power_on.counters)
        moved = {key for key in now.keys() | before.keys() if now.get(key) != before.get(key)}
        return moved | self.model.tried

    def restart(self) -> None:
        """Every target closed and opened again from its state (`restartable` ones)."""
        self.restarts += 1
        self._restarted = True
        self._power(Action.RESTART)

    def _observe(self, command: bytes, response: bytes) -> None:
        """Feed the invariants' observer (model-independent checks on the answers)."""
        if len(command) < 4 or command[1] not in OBSERVED_INSTRUCTIONS:
            return
        try:
            apdu = Apdu.parse(command)
        except MalformedApdu:
            return
        session = self.model.session
        app, sw = session.app, sw_of(response)
        if app is None or apdu.cla not in (0x00, 0x80):
            return
        if apdu.ins == INS.VERIFY and apdu.p1 == 0 and apdu.le is None:
            fid = session.current if apdu.p2 == 0x80 else apdu.p2 & 0x1F
            pin = app.pin(fid) if fid is not None else None
            if pin is not None:
                self.observer.pin_answer(
                    (app.aid, pin.fid),
                    pin,
                    not apdu.data,
                    sw,
                    self.primary.facts.quirks.blocked_sw,
                )
        elif apdu.ins == INS.READ_BINARY and sw == SW.OK and len(response) > 2:
            fid = apdu.p1 & 0x1F if apdu.p1 & 0x80 else session.current
            ef = app.ef(fid) if fid is not None else None
            if ef is not None:
                self.observer.protected_answer(app, ef.read, f"READ BINARY of EF {ef.fid:04X}")
        elif apdu.ins == INS.COMPUTE_SIGNATURE and sw == SW.OK:
            fid = apdu.p2 & 0x1F if apdu.p2 & 0xE0 == 0x80 and apdu.p2 != 0x80 else session.current
            key = app.key(fid) if fid is not None else None
            if key is not None:
                self.observer.protected_answer(app, key.use, f"signature with key {key.fid:04X}")

    # -- access -------------------------------------------------------------------------

    def known_pins(self, spare: int) -> list[tuple[AppSpec, PinSpec, bytes]]:
        """The card's PINs, in every application, whose value the run knows and that have
        `spare` tries left (or an unknown count)."""
        apps = self.model.present_apps()
        return [(app, pin, value) for app in apps for pin, value in self.known_in(app, spare)]

    def known_in(self, app: AppSpec, spare: int) -> list[tuple[PinSpec, bytes]]:
        """`known_pins` of one application."""
        model = self.model
        found = []
        for pin in app.pins:
            value, remaining = model.value(app, pin), model.remaining(app, pin)
            if value is None or model.facts.present(app, pin.fid) is not True:
                continue
            if remaining is None or remaining >= spare:
                found.append((pin, value))
        return found

    def credentials(self, app: AppSpec) -> list[Credential]:
        """What the run can open `app` with: the PINs it knows that are not blocked, and on
        a disposable card the free area's AES keys that are not blocked."""
        found = [Credential(pin, value) for pin, value in self.known_in(app, 1)]
        if self.disposable:
            for key in app.aes_keys:
                if self.model.counters.get((app.aid, key_credential(key.number))) != 0:
                    found.append(Credential(key=key.number))
        return found

    def credential_states(self, app: AppSpec) -> list[tuple[Credential, ...]]:
        """What to open `app` with: nothing, each credential alone, each pair."""
        found = self.credentials(app)
        return [(), *((one,) for one in found), *itertools.combinations(found, 2)]

    def open_with(self, app: AppSpec, credential: Credential) -> None:
        """VERIFY the PIN (after the retry query where the guard wants it), or EXTERNAL
        AUTHENTICATE with the key."""
        if credential.pin is not None:
            if not self.disposable:
                self.send(verify(b"", 0x80 | credential.pin.fid))
            self.send(verify(credential.value, 0x80 | credential.pin.fid))
            return
        self.authenticate(app, credential.key, self.challenge(16))

    def challenge(self, size: int) -> bytes:
        """GET CHALLENGE of `size` bytes: the challenge, or nothing."""
        answer = self.send(Apdu(0x00, INS.GET_CHALLENGE, 0x00, 0x00, le=size).encode())
        return answer[:-2] if answer is not None and sw_of(answer) == SW.OK else b""

    def authenticate(self, app: AppSpec, number: int, challenge: bytes) -> None:
        """EXTERNAL AUTHENTICATE with key `number`'s AES-CMAC of `challenge` (marked as the
        answer to the card's last challenge when it is that one)."""
        key = self.model.facts.aes_keys.get((app.aid, number), bytes(16))
        command = Apdu(0x00, INS.EXTERNAL_AUTHENTICATE, 0x00, 0x80 | number, cmac(key, challenge))
        last = challenge and self.model.session.last_challenge == challenge
        with contextlib.suppress(GuardRefusal):
            self.exchange(command.encode(), key if last else b"")

    def check_access(
        self,
        app: AppSpec,
        credentials: Sequence[Credential],
        event: str,
        by_sfi: bool,
        pick: int = 0,
        writes: bool = True,
    ) -> None:
        """A fresh session in `app`, its `credentials` presented, a session `event` (none,
        select-ef, or one of SWEEP_EVENTS followed by a SELECT of `app`), then one use of
        every EF and key of `app` (and, on a disposable card, every free-area write), each
        answer checked by the model."""
        model = self.model
        self.send(select_aid(ISD_AID))
        self.send(select_aid(app.aid))
        for credential in credentials:
            self.open_with(app, credential)
        if event == "reset":
            self.reset()
        elif event == "power":
            self.power_cycle()
        elif event in ("isd", "other-app"):
            others = [a for a in model.present_apps() if a is not app]
            away = others[pick % len(others)].aid if event == "other-app" and others else ISD_AID
            self.send(select_aid(away))
        elif event == "select-ef" and app.efs:
            self.send(select_ef(app.efs[pick % len(app.efs)].fid))
        if event not in ("none", "select-ef"):
            self.send(select_aid(app.aid))
        for fid in app.fids:
            if app.pin(fid) is None and model.facts.present(app, fid) is True:
                for command in use_commands(app, fid, by_sfi):
                    self.send(command)
        if writes and app.free_area and self.disposable:
            for ef in app.efs:
                for operation, _rule in ef.writes:
                    for command in write_commands(ef, operation, model.holds(app, ef)):
                        self.send(command)

    def access_sweep(self) -> None:
        """The access matrix, whole: in every application, every EF and key by FID and by
        SFI under every credential state; then under each PIN alone (and none) after each
        session event, so the quirks the profile declares are tried too."""
        for app in self.model.present_apps():
            states = self.credential_states(app)
            for credentials in states:
                for by_sfi in (False, True):
                    self._fresh_transcript()
                    self.check_access(app, credentials, "none", by_sfi, writes=by_sfi)
            for credentials in (state for state in states if len(state) < 2):
                for event in SWEEP_EVENTS:
                    self._fresh_transcript()
                    self.check_access(app, credentials, event, True, writes=False)
            if app.free_area and self.disposable:
                self.bounds_sweep(app)
        self.reset()

    def scheme_sweep(self) -> None:
        """Every signing key whose PIN the run knows (or that needs none) signs every input
        of `SCHEME_CASES` once: each signature checked as exactly its P1's scheme; the PSS
        ones twice (the model wants a new signature each time: a random salt)."""
        model = self.model
        for app in model.present_apps():
            for key in app.keys:
                if key.how is not KeyUse.SIGN or model.facts.present(app, key.fid) is not True:
                    continue
                known = [
                    (pin, value)
                    for pin in app.pins
                    if pin.fid in key.use and (value := model.value(app, pin)) is not None
                ]
                if key.use and not known:
                    continue
                self._fresh_transcript()
                self.send(select_aid(app.aid))
                for pin, value in known[:1]:
                    self.send(verify(b"", 0x80 | pin.fid))
                    self.send(verify(value, 0x80 | pin.fid))
                self.send(select_ef(key.fid))
                for scheme, payload in (*SCHEME_CASES, *PSS_CASES):
                    command = Apdu(0x80, INS.COMPUTE_SIGNATURE, scheme, 0x80, payload, le=256)
                    self.send(command.encode())
        self.reset()

    def bounds_sweep(self, app: AppSpec) -> None:
        """Every free-area write at its limits, with a credential its rule accepts: UPDATE
        BINARY at and across the end, UPDATE RECORD shorter than, as long as and a byte
        longer than a record and of the record after the last, APPEND until the EF is full
        and once more, UPDATE of a counter above its maximum, DECREASE below 0 and INCREASE
        past the maximum (then to the bound exactly, and one more); each EF read back whole."""
        for ef in app.efs:
            for operation, rule in ef.writes:
                fitting = [c for c in self.credentials(app) if c.opens in rule]
                if rule and not fitting:
                    continue
                self._fresh_transcript()
                self.send(select_aid(ISD_AID))
                self.send(select_aid(app.aid))
                for credential in fitting[:1]:
                    self.open_with(app, credential)
                for command in bound_commands(ef, operation, self.model.holds(app, ef)):
                    self.send(command)
                for command in read_back_commands(ef, self.model.holds(app, ef)):
                    self.send(command)

    def _fresh_transcript(self) -> None:
        """Let the next check's transcript stand alone (short to cut down and replay): from
        power-on, and from the initial state if anything durable changed."""
        if self.model.durable_changes:
            self.begin_example()
        else:
            self.power_cycle()
            self.transcript = []

    # -- survey -------------------------------------------------------------------------

    def survey(self) -> None:
        """Learn what the card holds (applications, files, counters, reader capabilities),
        checking every answer against the model on the way."""
        self.begin_example()
        self.reset()
        for app in self.primary.facts.catalogue:
            if sw_of(self.exchange(select_aid(app.aid))) != SW.OK:
                continue
            for pin in app.pins:
                if self.exchange(select_ef(pin.fid))[-2:] == b"\x90\x00":
                    self.exchange(verify(b""))
            if self.primary.disposable:  # what a fresh card starts with
                for pin in app.pins:
                    start = self.model.counters.get((app.aid, pin.fid))
                    if start is not None:
                        self.primary.facts.initial_counters.setdefault((app.aid, pin.fid), start)
            for ef in app.efs:
                self._survey_ef(app, ef)
            for key in app.keys:
                self.exchange(select_ef(key.fid))
            self.reset()
        self.access_sweep()
        self.scheme_sweep()
        self._probe_card_data()
        if self.disposable:
            self._probe_classes()
        self._probe_extended()
        if self.disposable:
            self._probe_blocking()
        self.reset()
        self.stats.examples = 0
        catalogue = self.primary.facts.catalogue
        missing = [a.name for a in catalogue if not self.primary.facts.apps.get(a.aid)]
        self.capabilities["applications"] = ", ".join(
            a.name for a in catalogue if self.primary.facts.apps.get(a.aid)
        )
        if missing:
            self.capabilities["applications not on the card"] = ", ".join(missing)

    def _survey_ef(self, app: AppSpec, ef: EfSpec) -> None:
        if sw_of(self.exchange(select_ef(ef.fid))) != SW.OK:
            return
        if ef.structure is Structure.RECORD:
            for record in range(1, 16):
                answer = self.exchange(Apdu(0x00, INS.READ_RECORD, record, 0x04, le=256).encode())
                if sw_of(answer) != SW.OK:
                    break
            return
        if not ef.free and not self._log_in(app, ef.read):
            return
        self.exchange(select_ef(ef.fid))
        offset = 0
        while offset < 0x8000:
            answer = self.exchange(read_binary(offset, 256))
            if sw_of(answer) != SW.OK:
                break
            offset += len(answer) - 2
            if len(answer) - 2 < 256:
                break

    def _log_in(self, app: AppSpec, pins: frozenset[int]) -> bool:
        """VERIFY one of `pins` with its known value (after the retry query)."""
        for fid in sorted(pins):
            pin = app.pin(fid)
            if pin is None or self.model.value(app, pin) is None:
                continue
            if sw_of(self.exchange(select_ef(fid))) != SW.OK:
                continue
            remaining = self.exchange(verify(b""))
            if sw_of(remaining) & 0xFFF0 != SW.VERIFY_FAILED or not sw_of(remaining) & 0x0F:
                continue
            value = self.model.value(app, pin)
            assert value is not None
            try:
                if sw_of(self.exchange(verify(value))) == SW.OK:
                    return True
            except GuardRefusal:
                continue
        return False

    def _probe_card_data(self) -> None:
        """GET DATA of each MF-level object (docs/card-spec.md §2.3) with Le 00, after a
        reset; then one inside an application (6A88)."""
        self.reset()
        for tag in MF_OBJECTS:
            self.exchange(Apdu(0x00, INS.GET_DATA, tag >> 8, tag & 0xFF, le=256).encode())
        self.exchange(select_aid(JPKI.aid))
        self.exchange(Apdu(0x00, INS.GET_DATA, 0x5F, 0x51, le=256).encode())
        self.reset()

    def _probe_classes(self) -> None:
        """SELECT and READ BINARY with a CLA of each kind (`ODD_CLASSES`), SELECT by FID
        with each P2 but 0C and with a P1 other than 00, 02, 04 (6A86), and the ISD with its
        FCI, once each."""
        self.reset()
        for cla in ODD_CLASSES:
            self.exchange(bytes((cla, INS.SELECT, 0x04, 0x0C, 0x01, 0xD3)))
            self.exchange(bytes((cla, INS.READ_BINARY, 0x00, 0x00, 0x01)))
        self.exchange(select_aid(JPKI.aid))
        for p2 in (0x00, 0x04, 0x08, 0x0D):
            self.exchange(Apdu(0x00, INS.SELECT, 0x02, p2, b"\x00\x01").encode())
        for p1 in (0x01, 0x03, 0x08, 0x09):  # by path and the like, with an AID: 6A86
            self.exchange(Apdu(0x00, INS.SELECT, p1, 0x0C, JPKI.aid).encode())
        self.exchange(select_aid(ISD_AID, 0x00))

    def _probe_blocking(self) -> None:
        """Each PIN with a CHANGE command and a known value is blocked with wrong tries: at
        one try left CHANGE is refused as unverified, once blocked CHANGE and the right value
        answer blocked (disposable cards: the first example starts on a fresh one)."""
        model = self.model
        for app in model.present_apps():
            self.reset()
            self.exchange(select_aid(app.aid))
            for pin in app.pins:
                value, remaining = model.value(app, pin), model.remaining(app, pin)
                if pin.change_ins is None or not value or not remaining:
                    continue
                wrong, p2 = near_misses(value)["change"][0], 0x80 | pin.fid
                for _ in range(remaining - 1):
                    self.exchange(verify(wrong, p2))
                self.exchange(change_command(pin.change_ins, wrong, p2))
                self.exchange(verify(wrong, p2))
                self.exchange(change_command(pin.change_ins, value, p2))
                self.exchange(verify(value, p2))

    def _probe_extended(self) -> None:
        """Does the reader carry an extended READ BINARY (Le 65536), and the card take it?

        With a profile the answer is checked against its `extended_length` quirk; without
        one the card's answer is learned (9000: supported, an error: not)."""
        facts = self.primary.facts
        command = read_binary(0, 65536, extended=True)
        answers = []
        for link in self.links:
            link.port.transmit(select_aid(JPKI.aid))
            link.port.transmit(select_ef(0x000A))
            try:
                answers.append(link.port.transmit(command))
            except (TargetError, GuardRefusal) as error:
                link.extended_ok = False
                self.capabilities[f"extended length ({link.target.name})"] = f"no: {error}"
                continue
            self.capabilities[f"extended length ({link.target.name})"] = "yes"
            link.port.reset()
        if not facts.exact and answers:
            card_takes_it = sw_of(answers[0]) == SW.OK
            facts.quirks = replace(facts.quirks, extended_length=card_takes_it)
        if self.extended_ok:
            self.exchange(select_aid(JPKI.aid))
            self.exchange(select_ef(0x000A))
            self.exchange(command)
