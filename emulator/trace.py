"""APDU traces: a layer writing every exchange and power event the card sees.

Two formats: JSON lines (one object per exchange or event: time, reader, command, response,
duration in µs, and what other layers noted, such as an injected fault) and a script for
pcsc-tools' `scriptor` and `opensc-tool -s` (commands and `reset`, answers and durations
in `us` as comments: ASCII, which is cheaper to write).
Secret data (PINs, passwords, cryptograms) is masked unless `secrets` is true.

An exchange is kept as its bytes and clock readings and formatted when the lines waiting are
written and flushed: at every power event and card removal, on close, and by a thread that
looks every `CHECK_INTERVAL` seconds and writes when `FLUSH_INTERVAL` seconds passed since
its last write or `BUFFER_LINES` wait. So `tail -f` follows a trace within about 50 ms; a
process killed with SIGKILL loses what waits (the exchanges of at most its last 50 ms, never
a power event); closing loses nothing (`serve` closes on SIGTERM and Ctrl-C).

The card's side runs in every exchange, so it is as short as CPython allows: `transmit` is a
closure bound at construction that reads the clock twice and extends one list by four items
(no tuple kept, so nothing for the garbage collector to track; no length check: the thread
enforces `BUFFER_LINES`, which a burst can overshoot by what the card answers in 5 ms).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime
from itertools import repeat
from typing import Any, Literal, TextIO

from .faults import CardRemoved
from .layers import SECRET_INS, CardInterface, Layer, masked

__all__ = ["BUFFER_LINES", "CHECK_INTERVAL", "FLUSH_INTERVAL", "Trace", "TraceFormat"]

TraceFormat = Literal["json", "scriptor"]
FLUSH_INTERVAL = 0.05  # seconds: the longest lines wait
CHECK_INTERVAL = 0.005  # seconds: how often the thread looks at what waits
BUFFER_LINES = 4096
_MASK = "**"
_SECOND = 1_000_000_000  # ns
_clock = time.perf_counter_ns
# What waits: four items a line, command, response, start, end (bytes, bytes and
# perf_counter_ns readings) for an exchange, or a line formatted already, None, 0, 0.
_Waiting = list[Any]

log = logging.getLogger(__name__)


class Trace(Layer):
    """Writes each exchange and power event to `out` in `fmt` (see the module's docstring
    for when lines are flushed); `close()` writes what waits."""

    def __init__(
        self,
        inner: CardInterface,
        out: TextIO,
        *,
        reader: str = "",
        fmt: TraceFormat = "json",
        secrets: bool = False,
    ) -> None:
        super().__init__(inner)
        self._out = out
        self._reader = reader
        self._fmt = fmt
        self._secrets = secrets
        self._notes: list[str] = []  # the same list for the closure: emptied, never replaced
        self._reader_json = json.dumps(reader, ensure_ascii=False)
        self._stamp = (0, "")  # a second since the epoch and its isoformat, replaced as one
        self._waiting: _Waiting = []  # extended by the card, taken by `flush`
        self._writing = threading.Lock()
        self._closed = threading.Event()
        self._capture()
        self._flusher = threading.Thread(target=self._flush_while_open, name="trace", daemon=True)
        self._flusher.start()

    def _capture(self) -> None:
        """Set `transmit`, the card's side of the trace: a closure keeping the exchange's bytes
        and clock readings, its names bound here."""
        inner, keep, notes = self.inner.transmit, self._waiting.extend, self._notes
        unanswered, noted = self._unanswered, self._noted

        def transmit(capdu: bytes) -> bytes:
            start = _clock()
            try:
                response = inner(capdu)
            except CardRemoved:
                unanswered(capdu)
                raise
            if notes:
                noted(capdu, response, start, _clock())
            else:
                keep((capdu, response, start, _clock()))
            return response

        self.transmit = transmit  # type: ignore[method-assign]

    def note(self, event: str) -> None:
        """Attach what another layer did (e.g. an injected fault) to the next line."""
        self._notes.append(event)

    def power_on(self) -> bytes:
        atr = super().power_on()
        self._event("power on", atr)
        return atr

    def reset(self) -> bytes:
        atr = super().reset()
        self._event("reset", atr)
        return atr

    def power_off(self) -> None:
        super().power_off()
        self._event("power off", b"")

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._closed.set()
            self._flusher.join()
            self.flush()

    def flush(self) -> None:
        """Format, write and flush the lines waiting."""
        with self._writing:
            waiting = self._waiting
            count = len(waiting)  # the card may extend it meanwhile: that stays
            if not count:
                return
            text = self._lines(waiting[:count], _wall_offset())
            del waiting[:count]
            self._out.write(text)
            self._out.flush()

    def _flush_while_open(self) -> None:
        waiting, full = self._waiting, 4 * BUFFER_LINES
        written = time.monotonic()
        while not self._closed.wait(CHECK_INTERVAL):
            if not waiting:
                continue
            now = time.monotonic()
            if len(waiting) < full and now - written < FLUSH_INTERVAL:
                continue
            try:
                self.flush()
            except (OSError, ValueError) as error:  # closed or full; close() will tell
                log.error("trace: cannot write: %s", error)
                return
            written = now

    def _command(self, capdu: bytes) -> str:
        return capdu.hex(" ").upper() if self._secrets else masked(capdu)

    def _lines(self, batch: _Waiting, offset: int, notes: list[str] | None = None) -> str:
        """The lines of `batch` (see _Waiting): exchanges formatted (with `notes`, given with
        one exchange alone), what was formatted already as it is. `offset` turns
        perf_counter_ns readings into time_ns. One loop with the names it uses bound locally,
        the time stamp's second made once and its µs counted from it on small integers: this
        is the trace's cost."""
        secrets, json_lines = self._secrets, self._fmt == "json"
        second, iso = self._stamp
        low = second * _SECOND - offset  # the second's start as a perf_counter_ns reading
        high = low + _SECOND
        head = f'{{"time": "{iso}.'
        middle = f'+00:00", "reader": {self._reader_json}, "command": "'
        events, comments = _events(notes), _comments(notes)
        lines = []
        items = iter(batch)
        for capdu, response, start, end in zip(*repeat(items, 4), strict=True):
            if response is None:
                lines.append(capdu)
                continue
            if secrets or capdu[1:2] not in SECRET_INS:
                command, hidden = capdu.hex(" ").upper(), False
            else:
                command = masked(capdu)
                hidden = _MASK in command
            answer, micros = response.hex(" ").upper(), (end - start) // 1000
            if json_lines:
                if not low <= end < high:
                    second = (end + offset) // _SECOND
                    low = second * _SECOND - offset
                    high = low + _SECOND
                    self._stamp = second, iso = second, _isoformat(second)
                    head = f'{{"time": "{iso}.'
                digits = str(1_000_000 + (end - low) // 1000)  # "1" and the six µs digits
                lines.append(
                    f'{head}{digits[1:]}{middle}{command}", "response": "{answer}", '
                    f'"us": {micros}{events}}}\n'
                )
            elif hidden:
                lines.append(f"{comments}# {command}  (masked)\n# > {answer}  ({micros} us)\n")
            else:
                lines.append(f"{comments}{command}\n# > {answer}  ({micros} us)\n")
        return "".join(lines)

    def _noted(self, capdu: bytes, response: bytes, start: int, end: int) -> None:
        """An exchange with the notes taken so far: formatted at once, so they stay with it."""
        line = self._lines([capdu, response, start, end], _wall_offset(), self._take_notes())
        self._waiting.extend((line, None, 0, 0))

    def _take_notes(self) -> list[str]:
        notes = self._notes[:]
        self._notes.clear()
        return notes

    def _now(self, nanoseconds: int) -> str:
        """The UTC time as isoformat(timespec="microseconds") gives it."""
        second, micros = divmod(nanoseconds // 1000, 1_000_000)
        if second != self._stamp[0]:
            self._stamp = second, _isoformat(second)
        return f"{self._stamp[1]}.{micros:06d}+00:00"

    def _unanswered(self, capdu: bytes) -> None:
        """A command the card never answered (it left the reader): no response; flushed."""
        if self._fmt == "json":
            self._json(command=self._command(capdu), response=None)
        else:
            self._line(f"# {self._command(capdu)}  (not answered: the card left the reader)")

    def _event(self, event: str, atr: bytes) -> None:
        if self._fmt == "json":
            self._json(event=event, **({"atr": atr.hex(" ").upper()} if atr else {}))
        else:
            self._line("reset" if event == "reset" else f"# {event}")

    def _json(self, **fields: object) -> None:
        record: dict[str, object] = {"time": self._now(time.time_ns()), "reader": self._reader}
        record.update(fields)
        if self._notes:
            record["events"] = self._take_notes()
        self._waiting.extend((json.dumps(record, ensure_ascii=False) + "\n", None, 0, 0))
        self.flush()

    def _line(self, text: str) -> None:
        self._waiting.extend((f"{_comments(self._take_notes())}{text}\n", None, 0, 0))
        self.flush()


def _events(notes: list[str] | None) -> str:
    """Notes as a JSON field."""
    return f', "events": {json.dumps(notes, ensure_ascii=False)}' if notes else ""


def _comments(notes: list[str] | None) -> str:
    """Notes as scriptor comments."""
    return "".join(f"# {event}\n" for event in notes or ())


def _isoformat(second: int) -> str:
    """A second since the epoch as UTC isoformat, to the second (the part of a time stamp
    made once per second)."""
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _wall_offset() -> int:
    """What to add to a perf_counter_ns reading to get time_ns now."""
    return time.time_ns() - time.perf_counter_ns()
