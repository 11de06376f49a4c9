"""Client side of the vsmartcard vpcd protocol: connects a card object to pcscd.

vpcd (the pcscd driver from Debian's vsmartcard-vpcd) listens on TCP port 35963 + N for the
card of reader ``Virtual PCD 00 NN``; the card connects to it.  Each message is a big-endian
uint16 length followed by the payload.  A 1-byte payload is a control code (0 power off,
1 power on, 2 reset: no reply; 4 get ATR: reply with the ATR); anything else is a C-APDU
answered with the R-APDU.  Every reply is length-prefixed the same way.

Debian's vpcd writes the length and the body with two ``send()`` calls, so unless the card
ACKs at once, Nagle plus delayed ACK costs ~44 ms per APDU.  We therefore re-arm
``TCP_QUICKACK`` before every read (the kernel clears it after use).

Between messages the card waits as long as vpcd likes; once a message has begun, the rest of
it and the answer must move within ``frame_timeout`` seconds, or the card drops the connection
and connects again (a peer stalled mid-frame, or one that stopped reading, never holds the
reader).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import socket
import struct
import time
from collections.abc import Callable
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
    "reader_names",
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
_DEFAULT_NAME = "Virtual PCD"


def reader_names(conf_dir: Path = READER_CONF_DIR) -> dict[int, str]:
    """The readers vpcd serves here, number -> PC/SC name, from the ``FRIENDLYNAME`` and
    ``DEVICENAME /dev/null:PORT`` lines of each file in `conf_dir` (reader N listens on
    port 35963 + N; pcscd names the slots of a device "FRIENDLYNAME 00 00", "… 00 01").

    Without a vpcd configuration (pcscd not installed here, say) the two default readers.
    """
    names: dict[int, str] = {}
    for entry in _conf_entries(conf_dir):
        device = entry.get("DEVICENAME", "")
        if not device.startswith("/dev/null:"):
            continue
        try:
            base = int(device.removeprefix("/dev/null:"), 0)
        except ValueError:
            continue
        friendly = entry.get("FRIENDLYNAME", _DEFAULT_NAME)
        for slot in range(_SLOTS_PER_DEVICE):
            if base + slot >= VPCD_BASE_PORT:
                names[base + slot - VPCD_BASE_PORT] = f"{friendly} 00 {slot:02X}"
    if not names:
        names = {n: f"{_DEFAULT_NAME} 00 {n:02X}" for n in range(_SLOTS_PER_DEVICE)}
    return dict(sorted(names.items()))


def _conf_entries(conf_dir: Path) -> list[dict[str, str]]:
    """The reader entries of the files in `conf_dir` (a key seen again starts a new entry)."""
    entries: list[dict[str, str]] = []
    for path in sorted(conf_dir.glob("*")) if conf_dir.is_dir() else []:
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        entry: dict[str, str] = {}
        entries.append(entry)
        for line in lines:
            words = line.split(None, 1)
            if len(words) != 2 or words[0].startswith("#"):
                continue
            key, value = words
            if key in entry:
                entry = {}
                entries.append(entry)
            entry[key] = value.strip().strip('"')
    return entries


def configured_readers(conf_dir: Path = READER_CONF_DIR) -> list[int]:
    """The reader numbers vpcd serves here (see `reader_names`)."""
    return list(reader_names(conf_dir))


def reader_port(n: int) -> int:
    """TCP port of vpcd reader number ``n``."""
    return VPCD_BASE_PORT + n


def reader_name(port: int, conf_dir: Path = READER_CONF_DIR) -> str | None:
    """PC/SC name of the reader behind a vpcd port, or None for a port vpcd does not use."""
    return reader_names(conf_dir).get(port - VPCD_BASE_PORT)


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


class _Idle(Exception):
    """No message began within the time allowed."""


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


def _recv_message(sock: socket.socket, frame_timeout: float, idle: float | None = None) -> bytes:
    """One message's payload.  Its first byte may take ``idle`` seconds (None: forever; then
    _Idle); the rest must follow within ``frame_timeout`` (TimeoutError), and the socket keeps
    that time-out for the answer."""
    sock.settimeout(idle)
    sock.setsockopt(_SOL_TCP, _QUICKACK, 1)
    try:
        header = sock.recv(2)
    except TimeoutError:
        raise _Idle from None
    if not header:
        raise _Closed
    sock.settimeout(frame_timeout)
    if len(header) == 1:
        header += _recv_exact(sock, 1)
    (size,) = _LEN.unpack(header)
    return _recv_exact(sock, size)


class VpcdClient:
    """Serves one card to one vpcd reader, reconnecting whenever the connection drops.

    ``run()`` blocks until ``request_stop()`` is called (from a signal handler or another
    thread).  The card is powered off on every (re)connect; vpcd powers it on when a PC/SC
    application connects.  ``remove()`` takes the card out of the reader (the connection is
    dropped and stays down) until ``insert()``; ``drop()`` drops the connection and connects
    again at once.  ``on_event`` hears "connected", "disconnected", "power on" and "atr" (an
    ATR sent), from the thread running ``run()``.
    """

    def __init__(
        self,
        card: CardInterface,
        host: str = VPCD_HOST,
        port: int = VPCD_BASE_PORT,
        *,
        backoff_initial: float = 0.1,
        backoff_max: float = 0.5,
        idle_warning: float = 2.0,
        connect_timeout: float = 5.0,
        frame_timeout: float = 1.0,
        on_event: Callable[[str], None] = lambda event: None,
    ) -> None:
        self.card = card
        self.host = host
        self.port = port
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.idle_warning = idle_warning
        self.connect_timeout = connect_timeout
        self.frame_timeout = frame_timeout
        self.on_event = on_event
        self._stopping = False
        self._inserted = True
        self._sock: socket.socket | None = None
        self._hinted = False

    @property
    def inserted(self) -> bool:
        """Whether the card is in the reader (not taken out with ``remove``)."""
        return self._inserted

    @property
    def connected(self) -> bool:
        """Whether the card is connected to vpcd now."""
        return self._sock is not None

    def request_stop(self) -> None:
        """Make ``run()`` return soon.  Safe from signal handlers and other threads."""
        self._stopping = True
        self.drop()

    def remove(self) -> None:
        """Take the card out of the reader: drop the connection, stay away until ``insert``."""
        self._inserted = False
        self.drop()

    def insert(self) -> None:
        """Put the card back: connect to vpcd again (within 50 ms)."""
        self._inserted = True

    def drop(self) -> None:
        """Drop the connection (vpcd reports the card gone at its next poll)."""
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        """Connect, serve, and reconnect with back-off until stopped."""
        delay = self.backoff_initial
        while not self._stopping:
            if not self._inserted:
                time.sleep(0.05)
                continue
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
                self.on_event("disconnected")
            if not self._stopping and self._inserted:
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
        self.on_event("connected")
        self._control(sock, CTRL_POWER_OFF)
        try:
            payload = self._first_message(sock)
        except (_Closed, OSError):  # a stall (TimeoutError) included
            return False
        card = self.card
        try:
            while True:
                if len(payload) == 1:
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
                payload = _recv_message(sock, self.frame_timeout)
        except TimeoutError:
            log.warning(
                "vpcd at %s:%d stalled for %s s with a message half read or half sent; "
                "reconnecting",
                self.host,
                self.port,
                self.frame_timeout,
            )
        except (_Closed, OSError):
            pass
        return True

    def _first_message(self, sock: socket.socket) -> bytes:
        """Wait for vpcd's first message, warning if it is slow to come (busy reader)."""
        try:
            return _recv_message(sock, self.frame_timeout, idle=self.idle_warning)
        except _Idle:
            log.warning(
                "connected to vpcd at %s:%d but it sends nothing; "
                "is another card already using this reader?",
                self.host,
                self.port,
            )
            return _recv_message(sock, self.frame_timeout)

    def _control(self, sock: socket.socket, code: int) -> None:
        card = self.card
        if code == CTRL_GET_ATR:
            atr = card.atr
            sock.sendall(_LEN.pack(len(atr)) + atr)
            self.on_event("atr")
            return
        try:
            if code == CTRL_POWER_ON:
                card.power_on()
                self.on_event("power on")
            elif code == CTRL_POWER_OFF:
                card.power_off()
            elif code == CTRL_RESET:
                card.reset()
            else:
                log.warning("ignoring unknown vpcd control code %d", code)
        except Exception:
            log.exception("card failed on vpcd control code %d", code)
