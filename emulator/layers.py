"""Wrappers around the card's exchange function that change how it answers, not what."""

from __future__ import annotations

from collections.abc import Callable

from .apdu import INS

_T0_MAX = 256


class T0Chaining:
    """T=0 style answers: data over 256 bytes comes as 61xx, fetched with GET RESPONSE.

    The `t0_chaining` quirk (docs/decisions.md #23), for testing middleware's GET RESPONSE loop.
    """

    def __init__(self, exchange: Callable[[bytes], bytes]) -> None:
        self._inner = exchange
        self._pending = b""

    def clear(self) -> None:
        self._pending = b""

    def exchange(self, capdu: bytes) -> bytes:
        if len(capdu) == 5 and capdu[0] == 0x00 and capdu[1] == INS.GET_RESPONSE and self._pending:
            return self._next_chunk(capdu[4] or _T0_MAX)
        self._pending = b""
        response = self._inner(capdu)
        if len(response) - 2 <= _T0_MAX or response[-2:] != b"\x90\x00":
            return response
        self._pending = response[:-2]
        return self._status()

    def _next_chunk(self, le: int) -> bytes:
        chunk, self._pending = self._pending[:le], self._pending[le:]
        return chunk + (self._status() if self._pending else b"\x90\x00")

    def _status(self) -> bytes:
        return bytes((0x61, min(len(self._pending), _T0_MAX) & 0xFF))
