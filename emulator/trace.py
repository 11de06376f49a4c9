"""APDU traces: a layer writing every exchange and power event as it leaves the card.

Two formats: JSON lines (one object per exchange or event: time, reader, command, response,
duration in µs, and what other layers noted, such as an injected fault) and a script for
pcsc-tools' `scriptor` and `opensc-tool -s` (commands and `reset`, answers as comments).
Secret data (PINs, passwords, cryptograms) is masked unless `secrets` is true.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Literal, TextIO

from .faults import CardRemoved
from .layers import CardInterface, Layer, masked

TraceFormat = Literal["json", "scriptor"]
_MASK = "**"


class Trace(Layer):
    """Writes each exchange to `out` (flushed line by line) in `fmt`."""

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
        self._notes: list[str] = []
        self._reader_json = json.dumps(reader, ensure_ascii=False)
        self._second = -1
        self._prefix = ""

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

    def transmit(self, capdu: bytes) -> bytes:
        start = time.perf_counter_ns()
        try:
            response = self.inner.transmit(capdu)
        except CardRemoved:
            self._unanswered(capdu)
            raise
        micros = (time.perf_counter_ns() - start) // 1000
        command = capdu.hex(" ").upper() if self._secrets else masked(capdu)
        if self._fmt == "json":
            self._exchange(command, response.hex(" ").upper(), micros)
        else:
            hidden = _MASK in command
            self._line(
                f"{'# ' if hidden else ''}{command}{'  (masked)' if hidden else ''}\n"
                f"# > {response.hex(' ').upper()}  ({micros} µs)"
            )
        return response

    def _unanswered(self, capdu: bytes) -> None:
        """A command the card never answered (it left the reader): no response."""
        command = capdu.hex(" ").upper() if self._secrets else masked(capdu)
        if self._fmt == "json":
            self._json(command=command, response=None)
        else:
            self._line(f"# {command}  (not answered: the card left the reader)")

    def _exchange(self, command: str, response: str, micros: int) -> None:
        """One exchange as a JSON line, written without json.dumps (every field but the
        reader and the events is hex or a number; the reader is encoded once)."""
        events = ""
        if self._notes:
            events = f', "events": {json.dumps(self._notes, ensure_ascii=False)}'
            self._notes = []
        self._out.write(
            f'{{"time": "{self._now()}", "reader": {self._reader_json}, "command": "{command}", '
            f'"response": "{response}", "us": {micros}{events}}}\n'
        )
        self._out.flush()

    def _now(self) -> str:
        """The UTC time as isoformat(timespec="microseconds") gives it, the part up to the
        second made once per second."""
        now = time.time_ns()
        second, fraction = divmod(now, 1_000_000_000)
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{fraction // 1000:06d}+00:00"

    def _event(self, event: str, atr: bytes) -> None:
        if self._fmt == "json":
            self._json(event=event, **({"atr": atr.hex(" ").upper()} if atr else {}))
        elif event == "reset":
            self._line("reset")
        else:
            self._line(f"# {event}")

    def _json(self, **fields: object) -> None:
        record: dict[str, object] = {
            "time": self._now(),
            "reader": self._reader,
            **fields,
        }
        if self._notes:
            record["events"], self._notes = self._notes, []
        self._out.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._out.flush()

    def _line(self, text: str) -> None:
        for event in self._notes:
            self._out.write(f"# {event}\n")
        self._notes = []
        self._out.write(text + "\n")
        self._out.flush()
