"""Client side of the vsmartcard vpcd protocol: connects a card object to pcscd.

vpcd (the pcscd driver from Debian's vsmartcard-vpcd) listens on TCP port 35963 + N for the
card of reader ``Virtual PCD 00 NN``; the card connects to it.  Each message is a big-endian
uint16 length followed by the payload.  A 1-byte payload is a control code (0 power off,
1 power on, 2 reset: no reply; 4 get ATR: reply with the ATR); anything else is a C-APDU
answered with the R-APDU.  Every reply is length-prefixed the same way.

Debian's vpcd writes the length and the body with two ``send()`` calls, so unless the card
ACKs at once, Nagle plus delayed ACK costs ~44 ms per APDU.  We therefore re-arm
``TCP_QUICKACK`` before every read (the kernel clears it after use).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import socket
import struct
import time
from pathlib import Path
from types import FrameType

from .faults import CardRemoved
from .layers import CardInterface, masked

__all__ = [
    "VPCD_BASE_PORT",
    "VPCD_HOST",
    "VpcdClient",
    "configured_readers",
    "reader_name",
    "reader_port",
    "unreachable_message",
]

log = logging.getLogger(__name__)

VPCD_HOST = "127.0.0.1"
VPCD_BASE_PORT = 0x8C7B  # 35963, CHANNELID in /etc/reader.conf.d/vpcd
MAX_MESSAGE = 0xFFFF  # the length prefix is 16 bits

CTRL_POWER_OFF = 0
CTRL_POWER_ON = 1
CTRL_RESET = 2
CTRL_GET_ATR = 4

SW_NO_PRECISE_DIAGNOSIS = b"\x6f\x00"

_LEN = struct.Struct("!H")
_SOL_TCP = socket.IPPROTO_TCP
_QUICKACK = socket.TCP_QUICKACK


READER_CONF_DIR = Path("/etc/reader.conf.d")
_SLOTS_PER_DEVICE = 2  # vpcd makes two readers for each DEVICENAME (docs/pcsc-stack.md)


def configured_readers(conf_dir: Path = READER_CONF_DIR) -> list[int]:
    """The reader numbers vpcd serves here, from its ``DEVICENAME /dev/null:PORT`` lines.

    Without a vpcd configuration (pcscd not installed here, say) the two default readers.
    """
    ports: set[int] = set()
    for path in sorted(conf_dir.glob("*")) if conf_dir.is_dir() else []:
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            words = line.split()
            if len(words) == 2 and words[0] == "DEVICENAME" and words[1].startswith("/dev/null:"):
                try:
                    base = int(words[1].removeprefix("/dev/null:"), 0)
                except ValueError:
                    continue
                ports.update(range(base, base + _SLOTS_PER_DEVICE))
    if not ports:
        ports = set(range(VPCD_BASE_PORT, VPCD_BASE_PORT + _SLOTS_PER_DEVICE))
    return sorted(port - VPCD_BASE_PORT for port in ports if port >= VPCD_BASE_PORT)


def reader_port(n: int) -> int:
    """TCP port of vpcd reader number ``n``."""
    return VPCD_BASE_PORT + n


def reader_name(port: int) -> str | None:
    """PC/SC name of the reader behind a vpcd port, or None for a non-standard port."""
    n = port - VPCD_BASE_PORT
    return f"Virtual PCD 00 {n:02d}" if 0 <= n < 100 else None


def unreachable_message(host: str, port: int, err: OSError) -> str:
    """The one-line hint printed when vpcd cannot be reached."""
    reason = "connection refused" if err.errno == errno.ECONNREFUSED else str(err)
    return (
        f"cannot reach vpcd at {host}:{port} ({reason}). "
        "Is pcscd running with the vsmartcard-vpcd driver? "
        "Start it with: sudo pcscd --foreground &  "
        "(Debian: apt-get install pcscd vsmartcard-vpcd)"
    )


class _Closed(Exception):
    """The peer closed the connection (possibly in the middle of a message)."""


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    """Read exactly ``n`` bytes, re-arming TCP_QUICKACK before every read."""
    sock.setsockopt(_SOL_TCP, _QUICKACK, 1)
    data = sock.recv(n)
    if len(data) == n:
        return data
    buf = bytearray(data)
    while data and len(buf) < n:
        sock.setsockopt(_SOL_TCP, _QUICKACK, 1)
        data = sock.recv(n - len(buf))
        buf += data
    if len(buf) < n:
        raise _Closed
    return bytes(buf)


class VpcdClient:
    """Serves one card to one vpcd reader, reconnecting whenever the connection drops.

    ``run()`` blocks until ``request_stop()`` is called (from a signal handler or another
    thread).  The card is powered off on every (re)connect; vpcd powers it on when a PC/SC
    application connects.
    """

    def __init__(
        self,
        card: CardInterface,
        host: str = VPCD_HOST,
        port: int = VPCD_BASE_PORT,
        *,
        backoff_initial: float = 0.1,
        backoff_max: float = 2.0,
        idle_warning: float = 2.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.card = card
        self.host = host
        self.port = port
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.idle_warning = idle_warning
        self.connect_timeout = connect_timeout
        self._stopping = False
        self._sock: socket.socket | None = None
        self._hinted = False

    def request_stop(self) -> None:
        """Make ``run()`` return soon.  Safe from signal handlers and other threads."""
        self._stopping = True
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        """Connect, serve, and reconnect with back-off until stopped."""
        delay = self.backoff_initial
        while not self._stopping:
            try:
                address = (self.host, self.port)
                sock = socket.create_connection(address, timeout=self.connect_timeout)
            except OSError as err:
                if not self._hinted:
                    self._hinted = True
                    log.warning("%s", unreachable_message(self.host, self.port, err))
                self._sleep(delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            try:
                if self._serve(sock):
                    delay = self.backoff_initial
            finally:
                self._sock = None
                sock.close()
            if not self._stopping:
                log.info("vpcd at %s:%d closed the connection; reconnecting", self.host, self.port)
                self._sleep(delay)
                delay = min(delay * 2, self.backoff_max)

    def run_until_signalled(self) -> None:
        """``run()`` with SIGINT and SIGTERM mapped to ``request_stop()`` (main thread only)."""

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self.request_stop()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.run()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))

    def _serve(self, sock: socket.socket) -> bool:
        """Handle messages until the connection closes; True if at least one arrived."""
        sock.setsockopt(_SOL_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        if self._stopping:  # a stop request raced with the connect
            return False
        self._hinted = True
        log.info("connected to vpcd at %s:%d", self.host, self.port)
        self._control(sock, CTRL_POWER_OFF)
        try:
            header = self._first_header(sock)
        except (_Closed, OSError):
            return False
        card = self.card
        try:
            while True:
                (size,) = _LEN.unpack(header)
                payload = _recv_exact(sock, size)
                if size == 1:
                    self._control(sock, payload[0])
                else:
                    try:
                        rapdu = card.transmit(payload)
                    except CardRemoved as removed:
                        log.info("card removed in the middle of a command for %s s", removed.away)
                        sock.close()
                        self._sleep(removed.away)
                        return True
                    except Exception:
                        log.exception("card failed on C-APDU %s", masked(payload))
                        rapdu = SW_NO_PRECISE_DIAGNOSIS
                    if len(rapdu) > MAX_MESSAGE:
                        log.error(
                            "R-APDU of %d bytes exceeds vpcd's 65535-byte limit; answering 6F00",
                            len(rapdu),
                        )
                        rapdu = SW_NO_PRECISE_DIAGNOSIS
                    sock.sendall(_LEN.pack(len(rapdu)) + rapdu)
                if self._stopping:
                    break
                header = _recv_exact(sock, 2)
        except (_Closed, OSError):
            pass
        return True

    def _first_header(self, sock: socket.socket) -> bytes:
        """Wait for vpcd's first message, warning if it is slow to come (busy reader)."""
        sock.settimeout(self.idle_warning)
        try:
            return _recv_exact(sock, 2)
        except TimeoutError:
            log.warning(
                "connected to vpcd at %s:%d but it sends nothing; "
                "is another card already using this reader?",
                self.host,
                self.port,
            )
            sock.settimeout(None)
            return _recv_exact(sock, 2)
        finally:
            sock.settimeout(None)

    def _control(self, sock: socket.socket, code: int) -> None:
        card = self.card
        if code == CTRL_GET_ATR:
            atr = card.atr
            sock.sendall(_LEN.pack(len(atr)) + atr)
            return
        try:
            if code == CTRL_POWER_ON:
                card.power_on()
            elif code == CTRL_POWER_OFF:
                card.power_off()
            elif code == CTRL_RESET:
                card.reset()
            else:
                log.warning("ignoring unknown vpcd control code %d", code)
        except Exception:
            log.exception("card failed on vpcd control code %d", code)
