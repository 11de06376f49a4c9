"""Card processes that can be killed: a zygote that has loaded mynacard and the profiles forks
one process per card, which opens its state directory with `open_card` and answers APDUs
over a Unix socket (frames: 2-byte length, then the bytes).

    with Zygote(tmp_path, ["default"]) as zygote:
        card = zygote.card("default", state_dir)   # a new process; the card is open
        card.transmit(apdu)                         # or send() and answer(timeout)
        card.kill()                                 # kill -9, returns once it is gone

Forking from a loaded process makes a restart cost milliseconds, not a Python start-up, so a
test can kill hundreds of cards. A profile name "default!compare-first" gives a card with the
timing bug of issue 10 put back (to show the attack test catches it). Run as a script, this
module is the zygote.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

_LENGTH = struct.Struct("!H")
_PID = struct.Struct("!I")


class CardRefused(RuntimeError):
    """The card process could not open its state (the StateError's message)."""


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _recv_frame(sock: socket.socket) -> bytes | None:
    header = _recv_exact(sock, _LENGTH.size)
    if header is None:
        return None
    return _recv_exact(sock, _LENGTH.unpack(header)[0])


def _send_frame(sock: socket.socket, data: bytes) -> None:
    sock.sendall(_LENGTH.pack(len(data)) + data)


class CardProcess:
    """One card process: APDUs in, answers out, and kill -9."""

    def __init__(self, socket_path: Path, profile: str, state_dir: Path) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(str(socket_path))
        pid = _recv_exact(self._sock, _PID.size)
        if pid is None:
            raise RuntimeError("the zygote did not fork a card process")
        self.pid: int = _PID.unpack(pid)[0]
        _send_frame(self._sock, f"{profile}\0{state_dir}".encode())

    def ready(self) -> None:
        """Wait until the card is open; CardRefused with the card's error otherwise."""
        frame = self._frame(None)
        if frame != b"R":
            raise CardRefused((frame or b"no answer").decode(errors="replace")[1:])

    def send(self, capdu: bytes) -> None:
        _send_frame(self._sock, capdu)

    def answer(self, timeout: float | None = None) -> bytes | None:
        """The next answer, or None if none came within `timeout` seconds of now (select's
        microseconds: a socket timeout would round up to a millisecond)."""
        if timeout is not None and not select.select([self._sock], [], [], timeout)[0]:
            return None
        return self._frame(None)

    def _frame(self, timeout: float | None) -> bytes | None:
        self._sock.settimeout(timeout)
        try:
            return _recv_frame(self._sock)
        except TimeoutError:
            return None

    def transmit(self, capdu: bytes) -> bytes:
        self.send(capdu)
        answer = self.answer()
        if answer is None:
            raise RuntimeError("the card process died")
        return answer

    def kill(self) -> None:
        """kill -9; returns once the process is gone (its state lock released)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self._gone()

    def close(self) -> None:
        """End the card normally (it closes its state) and wait until it is gone."""
        self._gone()

    def _gone(self) -> None:
        self._sock.close()
        while True:  # the zygote reaps it (SIGCHLD ignored), then the pid is gone
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.0002)


class Zygote:
    """The zygote process (a context manager); `card()` starts a card process."""

    def __init__(self, work_dir: Path, profiles: list[str]) -> None:
        self.socket_path = work_dir / "zygote.sock"
        self._proc = subprocess.Popen(
            [sys.executable, __file__, str(self.socket_path), *profiles],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != "ready":
            self._proc.kill()
            raise RuntimeError("the card zygote did not start")

    def card(self, profile: str, state_dir: Path) -> CardProcess:
        """A new card process with its card open (CardRefused if the state is refused)."""
        card = self.start(profile, state_dir)
        card.ready()
        return card

    def start(self, profile: str, state_dir: Path) -> CardProcess:
        """A new card process, still opening its card (call `ready`)."""
        return CardProcess(self.socket_path, profile, state_dir)

    def __enter__(self) -> Zygote:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._proc.terminate()
        self._proc.wait()


def _serve_one(conn: socket.socket, profiles: dict[str, Any]) -> None:
    """The card process: open the card named in the first frame, then answer APDUs."""
    from mynacard import StateError, open_card

    conn.sendall(_PID.pack(os.getpid()))
    request = _recv_frame(conn)
    if request is None:
        return
    profile, state_dir = request.decode().split("\0")
    name, _, mutant = profile.partition("!")
    if mutant == "compare-first":
        _compare_first()
    try:
        card = open_card(profiles[name], state_dir)
    except StateError as error:
        _send_frame(conn, b"E" + str(error).encode())
        return
    _send_frame(conn, b"R")
    try:
        while (capdu := _recv_frame(conn)) is not None:
            _send_frame(conn, card.transmit(capdu))
    finally:
        card.close()


def _compare_first() -> None:
    """Put back, in this card process only, the bug of issue 10: compare first, and write the
    counter only for a wrong value (a right one answers without writing)."""
    from mynacard.commands import pins

    def spend_try(ctx: Any, state: Any, compare: Callable[[], bool]) -> bool:
        if compare():
            if state.remaining != state.max_tries:
                ctx.store.set_remaining(state, state.max_tries)
            return True
        ctx.store.set_remaining(state, state.remaining - 1)
        return False

    pins.spend_try = spend_try  # type: ignore[assignment]


def _zygote(socket_path: str, names: list[str]) -> None:
    from mynacard import load_profile, open_card

    profiles = {name: load_profile(name) for name in names}
    with tempfile.TemporaryDirectory() as warm:  # load every module a card uses, once
        for name, profile in profiles.items():
            open_card(profile, Path(warm) / name).close()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(socket_path)
    server.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        if os.fork() == 0:
            server.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            try:
                _serve_one(conn, profiles)
            finally:
                os._exit(0)
        conn.close()


if __name__ == "__main__":
    _zygote(sys.argv[1], sys.argv[2:])
