"""APDU transcripts: one exchange per line, with response patterns (ETSI/3GPP script style).

A transcript file is UTF-8 text::

    # mynacard transcript 1
    # anything after '#' is a comment
    POWER -> 3BE000FF8131FE4514
    00A4040C0AD392F000260100000001 -> 9000
    00B0000004 -> 3082 [2] 9000
    00200080 -> 63C. | 9000
    RESET -> [*]

The left side is the command in hex (spaces allowed), a 5-byte EXTERNAL AUTHENTICATE header
followed by ``cmac:KEY`` (its data is the AES-CMAC under KEY of the challenge the card gave
last, made again whenever the line is sent), or one of the actions ``RESET`` (warm
reset), ``POWER`` (power cycle) and ``RESTART`` (the card closed and opened again from its
state, as after a power loss; only targets with `restart`), whose answer is the ATR.  The
right side is the
expected response: hex bytes, where ``.`` stands for any one hex digit; ``[N]`` for any N
bytes, ``[N-M]`` for N to M bytes, ``[*]`` for any number of bytes; ``|`` separates
alternatives.  Card-specific or random bytes (signatures, certificates learned from the
card, challenges) are written as wildcards, so a transcript replays on any conformant card.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

HEADER = "# mynacard transcript 1"


class TranscriptError(ValueError):
    """A transcript line that cannot be parsed; the message names the line."""


class Action(Enum):
    """What one transcript line does to the card."""

    APDU = "APDU"
    RESET = "RESET"
    POWER = "POWER"
    RESTART = "RESTART"  # the card closed and opened again from its state (a power loss)


_TOKEN = re.compile(r"\[(\*|\d+(?:-\d+)?)\]|[0-9A-Fa-f.]+")
_HEX = frozenset("0123456789ABCDEFabcdef")


def _exact_alternatives(text: str) -> frozenset[bytes] | None:
    """The responses `text` allows when every alternative is plain hex bytes (most
    expectations: status words, data known to the byte); None when it has wildcards."""
    found = []
    for alternative in text.split("|"):
        compact = alternative.replace(" ", "")
        if not compact or len(compact) % 2 or not _HEX.issuperset(compact):
            return None
        found.append(bytes.fromhex(compact))
    return frozenset(found)


@functools.lru_cache(maxsize=4096)
def _regex(text: str) -> re.Pattern[str]:
    return re.compile(_compile(text))


@dataclass(frozen=True)
class Pattern:
    """An expected response: alternatives of hex text with wildcards (see the module doc).

    Plain hex alternatives are compared as bytes; the regular expression that wildcards
    need is compiled (once per text) only for the patterns that have them."""

    text: str
    _exact: frozenset[bytes] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        exact = _exact_alternatives(self.text)
        object.__setattr__(self, "_exact", exact)
        if exact is None:
            _regex(self.text)  # a bad pattern fails here, where it is written

    def matches(self, response: bytes) -> bool:
        if self._exact is not None:
            return response in self._exact
        return _regex(self.text).fullmatch(response.hex().upper()) is not None

    def __str__(self) -> str:
        return self.text

    def first_difference(self, response: bytes) -> int | None:
        """The offset of the first byte of `response` that no alternative can match, or
        ``len(response)`` if the response ends where more is wanted; None if it matches."""
        if self.matches(response):
            return None
        digits = response.hex().upper()
        return (
            max(_Walk(alternative).departure(digits) for alternative in self.text.split("|")) // 2
        )

    @classmethod
    def exact(cls, response: bytes) -> Pattern:
        return cls(response.hex().upper() or "[0]")

    @classmethod
    def any_of(cls, patterns: Iterable[Pattern]) -> Pattern:
        return cls(" | ".join(dict.fromkeys(p.text for p in patterns)))


def _compile(text: str) -> str:
    alternatives = []
    for alternative in text.split("|"):
        parts = []
        compact = alternative.replace(" ", "")
        position = 0
        while position < len(compact):
            token = _TOKEN.match(compact, position)
            if token is None:
                raise TranscriptError(f"bad response pattern {text!r} at {compact[position:]!r}")
            word = token.group(0)
            position = token.end()
            if word.startswith("["):
                count = token.group(1)
                if count == "*":
                    parts.append("(?:[0-9A-F]{2})*")
                else:
                    low, _, high = count.partition("-")
                    parts.append(f"(?:[0-9A-F]{{2}}){{{low},{high or low}}}")
            elif len(word) % 2:
                raise TranscriptError(f"bad response pattern {text!r}: odd hex digits in {word}")
            else:
                parts.append("".join("[0-9A-F]" if c == "." else c for c in word.upper()))
        alternatives.append("".join(parts))
    return "|".join(f"(?:{alternative})" for alternative in alternatives)


Element = tuple[str, int, int]  # (digit or "." or "*", low, high): "*" is low..high bytes
State = tuple[int, int]  # (element, hex digits taken inside it)


def _elements(alternative: str) -> list[Element]:
    """An alternative as hex-digit elements: ``(digit, 1, 1)`` for one digit (``.`` for
    any) and ``("*", low, high)`` for `low` to `high` bytes (high -1: no limit)."""
    elements: list[Element] = []
    for token in _TOKEN.finditer(alternative.replace(" ", "")):
        if token.group(1) is None:
            elements += [(digit, 1, 1) for digit in token.group(0).upper()]
        elif token.group(1) == "*":
            elements.append(("*", 0, -1))
        else:
            low, _, high = token.group(1).partition("-")
            elements.append(("*", int(low), int(high or low)))
    return elements


class _Walk:
    """The positions of one alternative that a prefix of a response can reach, and which
    response lengths each position can still end at."""

    def __init__(self, alternative: str) -> None:
        self.elements = _elements(alternative)
        # digits the elements from i on take, at least and at most (-1: no limit)
        self.least, self.most = [0], [0]
        for kind, low, high in reversed(self.elements):
            size_low, size_high = (2 * low, 2 * high) if kind == "*" else (1, 1)
            most = -1 if self.most[0] < 0 or size_high < 0 else self.most[0] + size_high
            self.least.insert(0, self.least[0] + size_low)
            self.most.insert(0, most)

    def closure(self, states: set[State]) -> set[State]:
        """A byte wildcard may end on any whole byte within its bounds."""
        pending, seen = list(states), set(states)
        while pending:
            index, taken = pending.pop()
            if index < len(self.elements) and self.elements[index][0] == "*":
                low = self.elements[index][1]
                if taken % 2 == 0 and taken >= 2 * low and (index + 1, 0) not in seen:
                    seen.add((index + 1, 0))
                    pending.append((index + 1, 0))
        return seen

    def step(self, states: set[State], digit: str) -> set[State]:
        following: set[State] = set()
        for index, taken in states:
            if index >= len(self.elements):
                continue
            kind, _low, high = self.elements[index]
            if kind == "*":
                if high < 0 or taken < 2 * high:
                    following.add((index, taken + 1))
            elif kind in (".", digit):
                following.add((index + 1, 0))
        return self.closure(following)

    def may_end_after(self, state: State, remaining: int) -> bool:
        """Whether `remaining` more digits (any) can complete the match from `state`."""
        index, taken = state
        if index >= len(self.elements):
            return remaining == 0
        kind, low, high = self.elements[index]
        if kind != "*":
            least, most = self.least[index], self.most[index]
        else:  # the rest of this wildcard (back on a whole byte), then what follows it
            least = max(2 * low - taken, taken % 2) + self.least[index + 1]
            rest = self.most[index + 1]
            most = -1 if high < 0 or rest < 0 else 2 * high - taken + rest
        return (
            least <= remaining
            and (most < 0 or remaining <= most)
            and ((remaining - least) % 2 == 0)
        )

    def departure(self, digits: str) -> int:
        """The first hex digit of `digits` after which no match of its length remains;
        for a length the alternative cannot have, the first digit no match can start with
        (``len(digits)`` if the response is a prefix of a match)."""
        states = self.closure({(0, 0)})
        whole = any(self.may_end_after(state, len(digits)) for state in states)
        for position, digit in enumerate(digits):
            states = self.step(states, digit)
            left = len(digits) - position - 1
            if not states or (whole and not any(self.may_end_after(s, left) for s in states)):
                return position
        return len(digits)


@dataclass(frozen=True)
class Exchange:
    """One line: an action (with the command for APDUs) and the expected response."""

    action: Action
    command: bytes
    expected: Pattern
    note: str = ""
    # EXTERNAL AUTHENTICATE answering the card's last challenge (used up or not): its data
    # is the AES-CMAC of that challenge under this key, made again on every replay (written
    # `cmac:KEY`).
    cmac_key: bytes = b""

    def format(self) -> str:
        left = self.command.hex().upper() if self.action is Action.APDU else self.action.value
        if self.cmac_key:
            left = f"{self.command[:5].hex().upper()} cmac:{self.cmac_key.hex().upper()}"
        comment = f"  # {self.note}" if self.note else ""
        return f"{left} -> {self.expected}{comment}"


def parse_line(line: str, number: int = 0) -> Exchange | None:
    """The exchange on one line, or None for blank and comment lines."""
    text, _, comment = line.partition("#")
    text = text.strip()
    if not text:
        return None
    left, arrow, right = text.partition("->")
    if not arrow or not right.strip():
        raise TranscriptError(f"line {number}: expected 'COMMAND -> RESPONSE', got {line!r}")
    word = left.strip().upper()
    try:
        expected = Pattern(right.strip())
    except TranscriptError as error:
        raise TranscriptError(f"line {number}: {error}") from None
    if word in (Action.RESET.value, Action.POWER.value, Action.RESTART.value):
        return Exchange(Action(word), b"", expected, comment.strip())
    word, _, key_text = word.partition("CMAC:")
    try:
        command = bytes.fromhex(word)
        key = bytes.fromhex(key_text)
    except ValueError:
        raise TranscriptError(f"line {number}: command is not hex: {left.strip()!r}") from None
    if len(command) < 4:
        raise TranscriptError(f"line {number}: a command APDU has at least 4 bytes")
    if key_text and (len(command) != 5 or len(key) != 16):
        raise TranscriptError(f"line {number}: cmac: needs a 5-byte header and a 16-byte key")
    if key:
        command += bytes(16)  # made again from the challenge when the line is sent
    return Exchange(Action.APDU, command, expected, comment.strip(), key)


def parse(text: str) -> list[Exchange]:
    exchanges = []
    for number, line in enumerate(text.splitlines(), 1):
        exchange = parse_line(line, number)
        if exchange is not None:
            exchanges.append(exchange)
    return exchanges


def read_text(path: Path) -> str:
    """The UTF-8 text of a transcript-like file; TranscriptError, naming the file, if it
    cannot be read or is not text."""
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as error:
        raise TranscriptError(f"{path}: cannot read: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise TranscriptError(
            f"{path}: not a transcript (not UTF-8 text at byte {error.start})"
        ) from None


def load(path: Path) -> list[Exchange]:
    """The exchanges of the transcript file at `path`; TranscriptError, naming the file, if
    it cannot be read or is not a transcript."""
    text = read_text(path)
    try:
        return parse(text)
    except TranscriptError as error:
        raise TranscriptError(f"{path}: {error}") from None


def format_transcript(exchanges: Sequence[Exchange], comments: Sequence[str] = ()) -> str:
    lines = [HEADER, *(f"# {c}" for c in comments), *(e.format() for e in exchanges)]
    return "\n".join(lines) + "\n"


def save(path: Path, exchanges: Sequence[Exchange], comments: Sequence[str] = ()) -> None:
    path.write_text(format_transcript(exchanges, comments), encoding="utf-8")


@dataclass
class Recorder:
    """Collects the exchanges of one run, newest last."""

    exchanges: list[Exchange] = field(default_factory=list)

    def add(self, exchange: Exchange) -> None:
        self.exchanges.append(exchange)

    def clear(self) -> None:
        self.exchanges.clear()

    def __iter__(self) -> Iterator[Exchange]:
        return iter(self.exchanges)

    def __len__(self) -> int:
        return len(self.exchanges)
