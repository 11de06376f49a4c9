"""Faulty-card modes for testing middleware: layers that break how answers travel, chosen by
a fault plan (a small TOML file), each off unless the plan names it.

    seed = 7                      # for faults with a probability
    [[fault]]
    kind = "delay"                # see KINDS
    ins = ["B0", "2A"]            # the commands it hits (INS, hex); absent: every command
    every = 3                     # every Nth command it hits (default 1)
    after = 10                    # not before the 10th command (default 0)
    probability = 0.5             # of hitting a chosen command (default 1)
    ms = 200                      # delay: how long; remove, power-loss: how long the card
                                  # stays out before it is inserted again (default 1000)
    atr = "3B8880..."             # atr: the ATR the card presents

Kinds: `delay` (answer late), `wrong-le` (6Cxx for an Le that is not the data's length, the
right answer on the retry, as a T=0 card does), `chain` (answers over 256 bytes as 61xx +
GET RESPONSE), `truncate` (the answer loses its last byte), `corrupt` (one byte of the answer
flipped), `reset` (the card resets after answering), `power-loss` (the card loses power and
goes mute instead of answering), `remove` (the card is pulled out in the middle of the
command: no answer, the reader is empty), `atr` (another ATR).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .layers import CardInterface, Layer, T0Chaining
from .personalize.fields import ProfileError, Table, document

KINDS = (
    "delay",
    "wrong-le",
    "chain",
    "truncate",
    "corrupt",
    "reset",
    "power-loss",
    "remove",
    "atr",
)


class CardRemoved(Exception):
    """The card left the reader in the middle of a command: the transport must drop the
    connection without answering (vpcd then reports the reader empty) and insert the card
    again after `away` seconds."""

    def __init__(self, away: float = 1.0) -> None:
        super().__init__(f"card removed for {away} s")
        self.away = away


@dataclass(frozen=True)
class Fault:
    """One entry of a plan: which commands it hits, and how."""

    kind: str
    ins: frozenset[int] = frozenset()  # empty: every command
    every: int = 1
    after: int = 0
    probability: float = 1.0
    ms: int = 0
    atr: bytes = b""


class _Count:
    """The commands the card was sent so far, shared by the layers of one plan."""

    value = 0


@dataclass
class _Selector:
    """Decides, command by command, whether a fault hits."""

    fault: Fault
    rng: random.Random
    commands: _Count
    matched: int = field(default=0)

    def hits(self, capdu: bytes) -> bool:
        f = self.fault
        if (f.after and self.commands.value <= f.after) or (
            f.ins and (len(capdu) < 2 or capdu[1] not in f.ins)
        ):
            return False
        self.matched += 1
        return self.matched % f.every == 0 and self.rng.random() < f.probability


class FaultLayer(Layer):
    """One fault, applied to the commands its selector picks; `note` tells a trace."""

    def __init__(
        self,
        inner: CardInterface,
        fault: Fault,
        rng: random.Random,
        note: Callable[[str], None] = lambda event: None,
        commands: _Count | None = None,
    ) -> None:
        super().__init__(inner)
        self.fault = fault
        self._selector = _Selector(fault, rng, commands or _Count())
        self._rng = rng
        self._note = note
        self._retry: tuple[bytes, bytes] | None = None  # wrong-le: (command, right answer)

    @property
    def atr(self) -> bytes:
        return self.fault.atr if self.fault.kind == "atr" else self.inner.atr

    def power_on(self) -> bytes:
        self.inner.power_on()
        return self.atr

    def reset(self) -> bytes:
        self.inner.reset()
        return self.atr

    def clear(self) -> None:
        self._retry = None

    def transmit(self, capdu: bytes) -> bytes:
        kind = self.fault.kind
        if kind == "wrong-le" and self._retry is not None:
            expected, answer = self._retry
            self._retry = None
            if capdu == expected:
                return answer
        if not self._selector.hits(capdu):
            return self.inner.transmit(capdu)
        self._note(f"fault {kind}")
        away = (self.fault.ms or 1000) / 1000
        if kind == "remove":
            raise CardRemoved(away)
        if kind == "power-loss":
            self.inner.power_off()
            raise CardRemoved(away)
        if kind == "delay":
            time.sleep(self.fault.ms / 1000)
        answer = self.inner.transmit(capdu)
        if kind == "reset":
            self.inner.reset()
        elif kind == "truncate" and answer:
            answer = answer[:-1]
        elif kind == "corrupt" and answer:
            at = self._rng.randrange(len(answer))
            answer = answer[:at] + bytes((answer[at] ^ 0xFF,)) + answer[at + 1 :]
        elif kind == "wrong-le":
            answer = self._wrong_le(capdu, answer)
        return answer

    def _wrong_le(self, capdu: bytes, answer: bytes) -> bytes:
        """6Cxx when a short case-2 command's Le is not the data's length."""
        data = answer[:-2]
        if len(capdu) != 5 or not data or len(data) > 256 or len(data) == (capdu[4] or 256):
            return answer
        right = capdu[:4] + bytes((len(data) & 0xFF,))
        self._retry = (right, answer)
        return bytes((0x6C, len(data) & 0xFF))


class _Plan(Layer):
    """The entry of a plan's layers: a command whose INS no fault names goes straight to the
    card, past the fault layers (`inner`), through a table of 256 routes made once.

    `transmit` is a closure set on the instance, its names bound at construction: one Python
    frame and no attribute lookup per command, as a layer that is off must cost (issue 11)."""

    def __init__(
        self,
        card: CardInterface,
        faulty: CardInterface,
        named: frozenset[int],
        commands: _Count | None = None,
    ) -> None:
        super().__init__(faulty)
        straight, through = card.transmit, faulty.transmit
        routes = [through if ins in named else straight for ins in range(256)]

        def transmit(capdu: bytes) -> bytes:
            try:
                route = routes[capdu[1]]
            except IndexError:  # no INS: the faults decide
                route = through
            return route(capdu)

        if commands is None:
            self.transmit = transmit  # type: ignore[method-assign]
            return
        count = commands

        def counting(capdu: bytes) -> bytes:  # the same inlined (one frame), counting for `after`
            count.value += 1
            try:
                route = routes[capdu[1]]
            except IndexError:
                route = through
            return route(capdu)

        self.transmit = counting  # type: ignore[method-assign]


_EVERY_INS = frozenset(range(256))
_SEE_ALL = ("chain", "wrong-le")  # they hold an answer that any other command drops


def stack_faults(
    card: CardInterface, plan: list[Fault], seed: int, note: Callable[[str], None]
) -> CardInterface:
    """`card` inside one layer per fault of `plan` (the first fault outermost), behind a plan
    entry that sends the commands no fault names straight to `card`; `card` itself when the
    plan is empty."""
    if not plan:
        return card
    named = frozenset[int]().union(*(f.ins or _EVERY_INS for f in plan if f.kind != "chain"))
    if any(f.kind in _SEE_ALL for f in plan):
        named = _EVERY_INS
    commands = _Count()
    faulty = card
    for number, fault in reversed(list(enumerate(plan))):
        if fault.kind == "chain":
            faulty = T0Chaining(faulty)
        else:
            rng = random.Random(f"{seed}:{number}")
            faulty = FaultLayer(faulty, fault, rng, note, commands)
    return _Plan(card, faulty, named, commands if any(f.after for f in plan) else None)


def read_plan(path: Path) -> tuple[list[Fault], int]:
    """The faults and the seed of a fault plan file; ProfileError (FieldError) naming the
    file and the field."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ProfileError(f"{path}: cannot read: {error.strerror or error}") from None
    plan = document(data, str(path)).table(("seed", "fault"))
    faults = [_fault(entry) for entry in plan["fault"].tables(_FIELDS)]
    return faults, plan["seed"].integer(0, 2**63, 0)


_FIELDS = ("kind", "ins", "every", "after", "probability", "ms", "atr")


def _fault(entry: Table) -> Fault:
    kind = entry["kind"].choice(KINDS)
    probability = entry["probability"].value
    if probability is None:
        probability = 1.0
    if not isinstance(probability, int | float) or isinstance(probability, bool):
        raise entry["probability"].fail("a number 0 to 1", repr(probability))
    if not 0 <= probability <= 1:
        raise entry["probability"].fail("a number 0 to 1", repr(probability))
    atr = entry["atr"].hex(2, 33) if kind == "atr" else b""
    return Fault(
        kind=kind,
        ins=frozenset(item.hex(1, 1)[0] for item in entry["ins"].items(default=[])),
        every=entry["every"].integer(1, 2**31, 1),
        after=entry["after"].integer(0, 2**31, 0),
        probability=float(probability),
        ms=entry["ms"].integer(0, 600_000, 0),
        atr=atr,
    )
