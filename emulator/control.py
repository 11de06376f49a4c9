"""The control socket of `mynacard serve`: card events for a running server, from
`mynacard ctl` (docs/control.md).

One Unix stream socket per served reader, ``reader-N.sock`` (``port-P.sock`` for a vpcd port
that is no reader here), in a directory only its owner may enter (0700;
``$XDG_RUNTIME_DIR/mynacard``, else ``$XDG_STATE_HOME/mynacard/run``). Never TCP. The server
answers only peers of its own uid (SO_PEERCRED), and the client talks only to a server of its
own uid. A request is one JSON line, ``{"op": "remove"}``; the answer is one JSON line,
``{"ok": true, "status": {...}}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .served import ServedCard
from .vpcd import VPCD_BASE_PORT

__all__ = [
    "ControlError",
    "ControlServer",
    "control_dir",
    "request",
    "socket_path",
]

log = logging.getLogger(__name__)

_MAX_REQUEST = 64 * 1024
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class ControlError(Exception):
    """The control socket cannot be used; the message says why and what to do."""


def control_dir() -> Path:
    """Where the control sockets live: ``$XDG_RUNTIME_DIR/mynacard``, else
    ``$XDG_STATE_HOME/mynacard/run`` (``~/.local/state/mynacard/run``)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "mynacard"
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "mynacard" / "run"


def socket_path(directory: Path, port: int) -> Path:
    """The socket of the card on vpcd `port`: ``reader-N.sock`` or ``port-P.sock``."""
    n = port - VPCD_BASE_PORT
    return directory / (f"reader-{n}.sock" if 0 <= n < 100 else f"port-{port}.sock")


def private_dir(directory: Path) -> Path:
    """`directory`, created 0700 if missing; ControlError if another user owns it or may
    enter it."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise ControlError(f"{directory}: not a directory")
    if info.st_uid != os.getuid():
        raise ControlError(f"{directory}: owned by uid {info.st_uid}, not by you; use another")
    if info.st_mode & 0o077:
        raise ControlError(
            f"{directory}: other users may enter it (mode {stat.S_IMODE(info.st_mode):o}); "
            f"fix it with: chmod 700 {directory}"
        )
    return directory


def _peer_uid(sock: socket.socket) -> int:
    credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
    uid: int = _CRED.unpack(credentials)[1]
    return uid


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message, ensure_ascii=False).encode() + b"\n")


def _receive(sock: socket.socket) -> dict[str, Any]:
    """One JSON line; ControlError if the peer closed first or sent something else."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk or len(data) > _MAX_REQUEST:
            raise ControlError("the other side of the control socket closed it")
        data += chunk
    try:
        message = json.loads(data)
    except ValueError:
        raise ControlError("the control socket sent something that is not JSON") from None
    if not isinstance(message, dict):
        raise ControlError("the control socket sent something that is not a JSON object")
    return message


Action = Callable[[ServedCard, dict[str, Any]], dict[str, Any]]


def _done(card: ServedCard) -> dict[str, Any]:
    return {"status": card.status()}


def _wait_ready(card: ServedCard, request: dict[str, Any]) -> dict[str, Any]:
    timeout = request.get("timeout")
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout < 0:
        raise ValueError(f"wait-ready: timeout must be a number of seconds, got {timeout!r}")
    return {"ready": card.wait_ready(float(timeout)), **_done(card)}


def _path_argument(request: dict[str, Any], key: str) -> Path | None:
    value = request.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key} must be a path, got {value!r}")
    return Path(value) if value is not None else None


def _use_profile(card: ServedCard, request: dict[str, Any]) -> dict[str, Any]:
    profile = request.get("profile")
    if not isinstance(profile, str) or not profile:
        raise ValueError(f"profile must be a profile name or path, got {profile!r}")
    card.use_profile(profile, _path_argument(request, "state"))
    return _done(card)


def _apply_faults(card: ServedCard, request: dict[str, Any]) -> dict[str, Any]:
    plan = _path_argument(request, "plan")
    if plan is None:
        raise ValueError("fault: the plan's path is missing")
    card.apply_faults(plan)
    return _done(card)


def _simple(action: Callable[[ServedCard], object]) -> Action:
    def run(card: ServedCard, request: dict[str, Any]) -> dict[str, Any]:
        action(card)
        return _done(card)

    return run


ACTIONS: dict[str, Action] = {
    "insert": _simple(ServedCard.insert),
    "remove": _simple(ServedCard.remove),
    "reset": _simple(ServedCard.reset),
    "power-off": _simple(ServedCard.power_off),
    "profile": _use_profile,
    "fault": _apply_faults,
    "clear": _simple(ServedCard.clear_faults),
    "status": _simple(lambda card: None),
    "wait-ready": _wait_ready,
}


class ControlServer:
    """Answers control requests for one served card on its socket, from a thread."""

    def __init__(self, card: ServedCard, path: Path) -> None:
        self.card = card
        self.path = path
        private_dir(path.parent)
        self._listener = self._bind(path)
        self._thread = threading.Thread(target=self._accept, name=f"control-{path.name}")
        self._thread.daemon = True

    @staticmethod
    def _bind(path: Path) -> socket.socket:
        """Listen on `path`; a socket left by a server that died is replaced, a live one is
        ControlError."""
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        except OSError:
            pass
        else:
            raise ControlError(f"{path} is in use by another mynacard serve")
        finally:
            probe.close()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket: 0600
        try:
            listener.bind(str(path))
        finally:
            os.umask(old_umask)
        listener.listen(8)
        return listener

    def start(self) -> ControlServer:
        self._thread.start()
        return self

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(10)
                message = _receive(conn)
                uid = _peer_uid(conn)
                if uid != os.getuid():
                    log.warning("control socket %s: refused a client of uid %d", self.path, uid)
                    _send(conn, {"ok": False, "error": f"refused: uid {uid} is not the owner"})
                    return
                conn.settimeout(None)
                _send(conn, self._answer(message))
            except (OSError, ControlError):
                return

    def _answer(self, message: dict[str, Any]) -> dict[str, Any]:
        op = message.get("op")
        action = ACTIONS.get(op) if isinstance(op, str) else None
        if action is None:
            return {"ok": False, "error": f"unknown request {op!r}; known: {', '.join(ACTIONS)}"}
        try:
            return {"ok": True, **action(self.card, message)}
        except Exception as error:  # a bad profile or plan, a state in use: said in one line
            return {"ok": False, "error": str(error) or type(error).__name__}


def request(path: Path, message: dict[str, Any], *, wait: float = 0.0) -> dict[str, Any]:
    """Send one request to the server on `path` and return its answer; keep trying to
    connect for `wait` seconds (a server still starting).  ControlError if none answers."""
    deadline = time.monotonic() + wait
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            break
        except (FileNotFoundError, ConnectionRefusedError) as error:
            sock.close()
            if time.monotonic() >= deadline:
                raise ControlError(
                    f"no mynacard serve answers on {path} ({error.strerror}); is it running, "
                    "with the same --reader and --control-dir?"
                ) from None
            time.sleep(0.05)
        except OSError as error:
            sock.close()
            raise ControlError(f"{path}: {error.strerror or error}") from None
    with sock:
        uid = _peer_uid(sock)
        if uid != os.getuid():
            raise ControlError(f"{path}: the server runs as uid {uid}, not as you; not using it")
        _send(sock, message)
        return _receive(sock)
