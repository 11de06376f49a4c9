"""The card's interface, and layers: wrappers with that interface that change how answers
travel (T=0 chaining, logging), never what the card answers.

A layer wraps an inner card and is stacked by whoever opens the card (`open_card`, the
server); it clears its own state on every power-on, reset and power-off (apdu4j-style).
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Protocol, runtime_checkable

from .apdu import INS, SW

__all__ = ["SECRET_INS", "ApduLog", "CardInterface", "Layer", "T0Chaining", "masked"]


@runtime_checkable
class CardInterface(Protocol):
    """A card as a reader sees it: power, reset and one command-response exchange."""

    @property
    def atr(self) -> bytes: ...

    def power_on(self) -> bytes:
        """Power on (a cold reset); returns the ATR."""
        ...

    def reset(self) -> bytes:
        """Warm reset; returns the ATR."""
        ...

    def power_off(self) -> None: ...

    def transmit(self, capdu: bytes) -> bytes:
        """One command APDU in, its response APDU (data + SW) out."""
        ...

    def close(self) -> None:
        """Power off and release the card's state."""
        ...

    def __enter__(self) -> CardInterface: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Layer:
    """A wrapper that passes everything to `inner`; subclasses override what they change
    and `clear` what they hold."""

    def __init__(self, inner: CardInterface) -> None:
        self.inner = inner

    @property
    def atr(self) -> bytes:
        return self.inner.atr

    def clear(self) -> None:
        """Forget what this layer holds (called on power-on, reset and power-off)."""

    def power_on(self) -> bytes:
        self.clear()
        return self.inner.power_on()

    def reset(self) -> bytes:
        self.clear()
        return self.inner.reset()

    def power_off(self) -> None:
        self.clear()
        self.inner.power_off()

    def transmit(self, capdu: bytes) -> bytes:
        return self.inner.transmit(capdu)

    def close(self) -> None:
        self.clear()
        self.inner.close()

    def __enter__(self) -> Layer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_T0_MAX = 256
_OK = SW.OK.to_bytes(2, "big")


class T0Chaining(Layer):
    """T=0 style answers: data over 256 bytes comes as 61xx, fetched with GET RESPONSE.

    The `t0_chaining` quirk (docs/decisions.md #23), for testing middleware's GET RESPONSE
    loop. What is pending is dropped by any other command, reset and power-off.
    """

    def __init__(self, inner: CardInterface) -> None:
        super().__init__(inner)
        self._pending = b""

    def clear(self) -> None:
        self._pending = b""

    def transmit(self, capdu: bytes) -> bytes:
        if len(capdu) == 5 and capdu[0] == 0x00 and capdu[1] == INS.GET_RESPONSE and self._pending:
            return self._next_chunk(capdu[4] or _T0_MAX)
        self._pending = b""
        response = self.inner.transmit(capdu)
        if len(response) - 2 <= _T0_MAX or response[-2:] != _OK:
            return response
        self._pending = response[:-2]
        return self._status()

    def _next_chunk(self, le: int) -> bytes:
        chunk, self._pending = self._pending[:le], self._pending[le:]
        return chunk + (self._status() if self._pending else _OK)

    def _status(self) -> bytes:
        return bytes((0x61, min(len(self._pending), _T0_MAX) & 0xFF))


# Commands whose data field is a secret: PINs and passwords, AES-CMAC cryptograms.
_SECRET_DATA = {
    (0x00, INS.VERIFY),
    (0x00, INS.CHANGE_REFERENCE_DATA),
    (0x80, INS.CHANGE_KEY),
    (0x00, INS.EXTERNAL_AUTHENTICATE),
}


# Their INS as `capdu[1:2]` gives it: a command whose INS is not here is never masked.
SECRET_INS = frozenset(bytes((ins,)) for _, ins in _SECRET_DATA)


def masked(capdu: bytes) -> str:
    """A command APDU in hex for logs and traces, with secret data bytes as `**`."""
    if len(capdu) > 5 and (capdu[0], capdu[1]) in _SECRET_DATA:
        header = 7 if capdu[4] == 0 and len(capdu) > 7 else 5
        return capdu[:header].hex(" ").upper() + " **" * (len(capdu) - header)
    return capdu.hex(" ").upper()


class ApduLog(Layer):
    """Logs every exchange and power event at DEBUG, secrets masked (`serve --verbose`)."""

    def __init__(self, inner: CardInterface, log: logging.Logger) -> None:
        super().__init__(inner)
        self._log = log

    def power_on(self) -> bytes:
        self._log.debug("power on")
        return super().power_on()

    def reset(self) -> bytes:
        self._log.debug("reset")
        return super().reset()

    def power_off(self) -> None:
        self._log.debug("power off")
        super().power_off()

    def transmit(self, capdu: bytes) -> bytes:
        self._log.debug("C-APDU %s", masked(capdu))
        response = self.inner.transmit(capdu)
        self._log.debug("R-APDU %s", response.hex(" ").upper())
        return response
