"""The mapper: letters to APDUs, answers to abstract outputs, over a card or the model.

An answer's abstract output is its status word, with ``+data`` when data came with it;
a reset's is ``ATR``.  A letter that sends several commands outputs each answer's, joined
with `` ; ``.  The model's output lists every reading it accepts (``9000 | 6A82``), so a
learned output agrees with an expected one when it is one of them (`agrees`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from aalpy.base import SUL

from ..guard import GuardRefusal, PinGuard
from ..model import CardFacts, CardModel, Expectation
from ..targets import Target, TargetError
from ..transcript import Action, Exchange, Pattern
from .alphabet import Letter

SEPARATOR = " ; "
ALTERNATIVES = " | "
_SIZED = re.compile(r"\[(\d+)(?:-\d+)?\]")


class LearnError(RuntimeError):
    """The target cannot be learned any further (guard refusal, transport failure)."""


def abstract(action: Action, response: bytes | None) -> str:
    """A card's answer as an abstract output."""
    if action is not Action.APDU:
        return "ATR" if response else "no ATR"
    if len(response or b"") < 2:
        return "no answer"
    assert response is not None
    sw = response[-2:].hex().upper()
    return f"{sw} +data" if len(response) > 2 else sw


ANY = "*"  # the model does not know the answer at all (an object it cannot see)
_STATUS = re.compile(r"[0-9A-F.]{4}")


def _abstract_alternative(action: Action, alternative: str) -> str:
    text = alternative.replace(" ", "")
    if action is not Action.APDU:
        return "ATR"
    sw, data = text[-4:], text[:-4]
    if not _STATUS.fullmatch(sw):
        return ANY
    if not data or data == "[0]":
        return sw
    return f"{sw} +data?" if data.startswith(("[*]", "[0-")) else f"{sw} +data"


def abstract_pattern(action: Action, pattern: Pattern) -> str:
    """The abstract outputs the model accepts for `pattern`, sorted, one per reading."""
    readings = {_abstract_alternative(action, alt) for alt in pattern.text.split("|")}
    return ALTERNATIVES.join(sorted(readings))


def _concrete(pattern: Pattern) -> bytes:
    """A response for the model's bookkeeping: the first reading, wildcards as zero bytes
    (the fewest a sized wildcard allows, at least one) and hex digits as 0."""
    text = pattern.text.split("|")[0].replace(" ", "").replace("[*]", "00")
    text = text.replace("[0-", "[1-")
    text = _SIZED.sub(lambda match: "00" * int(match.group(1)), text).replace(".", "0")
    return bytes.fromhex(text)


def _reading(output: str) -> re.Pattern[str]:
    if output == ANY:
        return re.compile(".*")
    escaped = re.escape(output).replace(r"\.", "[0-9A-F]")
    return re.compile(escaped.replace(r"\ \+data\?", r"(?: \+data)?"))


def agrees(learned: str, expected: str) -> bool:
    """Whether a learned output is one the model accepts, command by command."""
    got, wanted = learned.split(SEPARATOR), expected.split(SEPARATOR)
    return len(got) == len(wanted) and all(
        any(_reading(reading).fullmatch(answer) for reading in options.split(ALTERNATIVES))
        for answer, options in zip(got, wanted, strict=True)
    )


NOT_SENT = "not sent"


class _Selection:
    """Whether the application is selected, as the letters' answers tell.  Behind the PIN
    guard (`guarded`) VERIFY with a value is not sent while it is not (the guard could not
    tell which PIN it names): the letter's output is `NOT_SENT`, on the card and the model
    alike."""

    def __init__(self, guarded: bool) -> None:
        self.guarded = guarded
        self.selected = False

    def withheld(self, letter: str) -> bool:
        return self.guarded and not self.selected and letter.startswith(("verify ", "wrong "))

    def saw(self, letter: str, output: str) -> None:
        if letter == "select":
            self.selected = output.startswith("9000")
        elif letter in ("reset", "power"):
            self.selected = False


class CardSUL(SUL):  # type: ignore[misc]
    """A target as AALpy's system under learning: each query starts on a fresh card (a
    disposable one) or after a warm reset (any other, behind the PIN guard)."""

    def __init__(self, target: Target | PinGuard, letters: list[Letter]) -> None:
        super().__init__()
        self.target = target
        self.letters = {letter.name: letter for letter in letters}
        self.exchanges = 0  # commands and resets that reached the card
        self.selection = _Selection(isinstance(target, PinGuard))

    def pre(self) -> None:
        self.exchanges += 1
        self.selection.selected = False
        self._do(self.target.fresh)

    def post(self) -> None:
        """Nothing: the next query starts with `pre`."""

    def _do(self, call: Callable[..., Any], *args: bytes) -> Any:
        try:
            return call(*args)
        except GuardRefusal as refusal:
            raise LearnError(f"the PIN guard refused a command: {refusal}") from None
        except TargetError as error:
            raise LearnError(f"the target failed: {error}") from None

    def step(self, letter: str | None) -> str:
        name = str(letter)
        if self.selection.withheld(name):
            return NOT_SENT
        outputs = []
        for action, command in self.letters[name].steps:
            self.exchanges += 1
            target = self.target
            if action is Action.RESET:
                answer: bytes | None = self._do(target.reset)
            elif action is Action.POWER:
                answer = self._do(target.power_cycle)
            else:
                answer = self._do(target.transmit, command)
            outputs.append(abstract(action, answer))
        output = SEPARATOR.join(outputs)
        self.selection.saw(name, output)
        return output


def priming_word(letters: list[Letter]) -> tuple[str, ...]:
    """Select, every right PIN, then every other letter but the wrong PINs: run on the
    model once, it settles what the facts leave open (an optional application's presence,
    records nobody wrote down) to its first reading."""
    names = [letter.name for letter in letters]
    rights = [name for name in names if name.startswith("verify ")]
    rest = [n for n in names if n != "select" and not n.startswith(("verify ", "wrong "))]
    return ("select", *rights, *rest)


class ModelSUL(SUL):  # type: ignore[misc]
    """The reference model as a system under learning, through the same letters.

    Each query starts a `CardModel` on new facts from `facts()`, primed with
    `priming_word`: without that, the first time the model meets an open question its
    output lists every reading and later ones only the one it learned, which a learner
    would take for one more state."""

    def __init__(
        self, facts: Callable[[], CardFacts], letters: list[Letter], *, guarded: bool = False
    ) -> None:
        super().__init__()
        self.facts = facts
        self.selection = _Selection(guarded)
        self.letters = {letter.name: letter for letter in letters}
        self.priming = priming_word(letters)
        self.model = CardModel(facts(), fresh=True)
        self.exchanges: list[Exchange] = []  # what the last query sent, with the patterns

    def pre(self) -> None:
        self.model = CardModel(self.facts(), fresh=True)
        for letter in self.priming:
            self._send(letter)
        self.model = CardModel(self.model.facts, fresh=True)
        self.exchanges = []
        self.selection.selected = False

    def post(self) -> None:
        """Nothing: the next query starts with `pre`."""

    def step(self, letter: str | None) -> str:
        name = str(letter)
        if self.selection.withheld(name):
            return NOT_SENT
        output = self._send(name)
        self.selection.saw(name, output)
        return output

    def _send(self, letter: str) -> str:
        outputs = []
        for action, command in self.letters[letter].steps:
            expectation: Expectation = (
                self.model.expect(command) if action is Action.APDU else self.model.expect_atr()
            )
            outputs.append(abstract_pattern(action, expectation.pattern))
            if expectation.effect is not None:
                expectation.effect(_concrete(expectation.pattern))
            self.exchanges.append(Exchange(action, command, expectation.pattern, note=letter))
        return SEPARATOR.join(outputs)

    def transcript(self, inputs: tuple[str, ...]) -> list[Exchange]:
        """The exchanges `inputs` make from power-on, with what the model expects: a warm
        reset first, so the transcript starts from the same state on any card."""
        self.pre()
        self.step("reset")
        for letter in inputs:
            self.step(letter)
        return list(self.exchanges)
