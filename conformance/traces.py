"""What `mynacard replay` reads besides transcripts: APDU traces of `mynacard serve --trace`
(JSON lines, or the scriptor format) and plain scriptor scripts.

- A JSON-lines trace becomes a transcript that expects every answer exactly as traced: each
  command, ``reset`` as RESET and ``power on`` as POWER (answering the traced ATR); the
  answers that are random on any card (GET CHALLENGE, RSASSA-PSS signatures) only by their
  length. A command the card never answered (it was removed) is left out.
- A scriptor script (hex commands, ``reset`` lines, ``#`` comments; pcsc-tools' `scriptor`,
  `opensc-tool -s`, or ``--trace-format scriptor``) becomes lines that accept any answer:
  replay prints the answers instead of checking them.

Masked command data (``**``, written unless the trace was made with ``--trace-secrets``)
cannot be sent again: reading such a trace is an error naming the line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .transcript import HEADER, Action, Exchange, Pattern, TranscriptError, parse, read_text

ANY = Pattern("[*]")
_MASK = "**"
_MASKED_SUFFIX = "(masked)"


@dataclass(frozen=True)
class ReplayInput:
    """The exchanges of a replay file and its kind: `transcript`, `trace` or `script`
    (a script's lines accept any answer; replay prints them)."""

    kind: str
    exchanges: list[Exchange]


def read_replay_input(path: Path, reader: str | None = None) -> ReplayInput:
    """A transcript, a JSON-lines trace or a scriptor script, told apart by its first line;
    TranscriptError naming the file and line if it is none of them. `reader` picks one
    reader's exchanges from a trace of several."""
    text = read_text(path)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    try:
        if first.startswith("{"):
            return ReplayInput("trace", trace_exchanges(text.splitlines(), reader))
        if first == HEADER or "->" in text:
            return ReplayInput("transcript", parse(text))
        return ReplayInput("script", script_exchanges(text.splitlines()))
    except TranscriptError as error:
        raise TranscriptError(f"{path}: {error}") from None


def trace_exchanges(lines: Iterable[str], reader: str | None = None) -> list[Exchange]:
    """A JSON-lines trace as transcript exchanges (see the module doc)."""
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise TranscriptError(f"line {number}: not a JSON object ({error.msg})") from None
        if not isinstance(record, dict):
            raise TranscriptError(f"line {number}: not a JSON object")
        records.append((number, record))
    readers = sorted({str(record.get("reader", "")) for _, record in records})
    if reader is None and len(readers) > 1:
        raise TranscriptError(f"the trace holds several readers; choose one: {', '.join(readers)}")
    if reader is not None and reader not in readers:
        raise TranscriptError(f"no reader {reader!r} in the trace (readers: {', '.join(readers)})")
    exchanges = []
    for number, record in records:
        if reader is None or record.get("reader") == reader:
            exchange = _trace_record(number, record)
            if exchange is not None:
                exchanges.append(exchange)
    return exchanges


def _trace_record(number: int, record: dict[str, object]) -> Exchange | None:
    note = ", ".join(str(event) for event in _list(record.get("events")))
    event = record.get("event")
    if event is not None:
        atr = _hex(number, "atr", record.get("atr", ""))
        if event == "reset":
            return Exchange(Action.RESET, b"", Pattern.exact(atr), note)
        if event == "power on":
            return Exchange(Action.POWER, b"", Pattern.exact(atr), note)
        return None  # power off: the next power on cycles the card
    command_text = record.get("command")
    if not isinstance(command_text, str):
        raise TranscriptError(f"line {number}: neither an exchange nor an event")
    if _MASK in command_text:
        raise TranscriptError(
            f"line {number}: the data of {command_text[:14]}… is masked; replaying it needs a "
            "trace made with --trace-secrets"
        )
    if record.get("response", "") is None:
        return None  # never answered: the card left the reader (a `remove` fault)
    command = _hex(number, "command", command_text)
    response = _hex(number, "response", record.get("response", ""))
    if len(command) < 4:
        raise TranscriptError(f"line {number}: a command APDU has at least 4 bytes")
    return Exchange(Action.APDU, command, _expected(command, response), note)


def _random_answer(command: bytes) -> bool:
    """Whether every card answers `command` differently: GET CHALLENGE, and COMPUTE DIGITAL
    SIGNATURE with RSASSA-PSS (P1 04, 05: a random salt)."""
    return command[:2] == b"\x00\x84" or (command[:2] == b"\x80\x2a" and command[2] in (4, 5))


def _expected(command: bytes, response: bytes) -> Pattern:
    """The traced answer; one that is random on every card only by its length."""
    if response[-2:] == b"\x90\x00" and _random_answer(command):
        return Pattern(f"[{len(response) - 2}] 9000")
    return Pattern.exact(response)


def _hex(number: int, name: str, value: object) -> bytes:
    try:
        return bytes.fromhex(str(value))
    except ValueError:
        raise TranscriptError(f"line {number}: {name} is not hex: {value!r}") from None


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def script_exchanges(lines: Iterable[str]) -> list[Exchange]:
    """A scriptor script as exchanges that accept any answer: each hex command, and RESET
    for each ``reset`` line; ``exit`` ends it. A command commented out as masked (a
    ``--trace-format scriptor`` trace without secrets) is an error."""
    exchanges = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if text.startswith("#"):
            if text.endswith(_MASKED_SUFFIX):
                raise TranscriptError(
                    f"line {number}: the data of {text[1:].strip()[:14]}… is masked; replaying it "
                    "needs a trace made with --trace-secrets"
                )
            continue
        word = text.lower()
        if not word:
            continue
        if word == "exit":
            break
        if word == "reset":
            exchanges.append(Exchange(Action.RESET, b"", ANY))
            continue
        try:
            command = bytes.fromhex(text)
        except ValueError:
            raise TranscriptError(
                f"line {number}: expected a command in hex, 'reset' or 'exit', got {text!r}"
            ) from None
        if len(command) < 4:
            raise TranscriptError(f"line {number}: a command APDU has at least 4 bytes")
        exchanges.append(Exchange(Action.APDU, command, ANY))
    return exchanges
