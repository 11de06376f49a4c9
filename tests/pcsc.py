"""Helpers for tests that go through the real pcscd + vpcd stack.

pcscd is "ours" when its pid is the one in .run/pcscd.pid (written by setup.sh or by
``start_pcscd`` here); only then may a test stop or restart it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_DIR = REPO_ROOT / ".run"
PID_FILE = RUN_DIR / "pcscd.pid"
VPCD_BASE_PORT = 0x8C7B


def _pid_from(path: Path) -> int | None:
    try:
        text = path.read_bytes().replace(b"\0", b"").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _is_pcscd(pid: int) -> bool:
    """Is ``pid`` a pcscd that we can reach, i.e. in our mount and network namespaces?

    A pcscd run under ``unshare -m -n`` (an isolated test run) is visible in /proc but
    has its own socket and ports.
    """
    try:
        if Path(f"/proc/{pid}/comm").read_text().strip() != "pcscd":
            return False
        return all(
            os.readlink(f"/proc/{pid}/ns/{ns}") == os.readlink(f"/proc/self/ns/{ns}")
            for ns in ("mnt", "net")
        )
    except OSError:
        return False


def pcscd_pid() -> int | None:
    """Pid of the running pcscd (in our namespaces), if any."""
    pid = _pid_from(Path("/run/pcscd/pcscd.pid"))
    if pid is not None and _is_pcscd(pid):
        return pid
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and _is_pcscd(int(proc.name)):
            return int(proc.name)
    return None


def owned_pcscd_pid() -> int | None:
    """Pid of the running pcscd if this repository started it."""
    pid = _pid_from(PID_FILE)
    return pid if pid is not None and _is_pcscd(pid) else None


def vpcd_listening(reader: int = 0) -> bool:
    """Is vpcd listening for reader N?  Reads /proc/net/tcp (connecting would insert a card)."""
    suffix = f":{VPCD_BASE_PORT + reader:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[1].endswith(suffix) and fields[3] == "0A":
                    return True
    return False


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


def start_pcscd() -> int:
    """Start ``pcscd --foreground`` (own session, logs in .run/pcscd.log); returns its pid.

    Raises RuntimeError if it does not come up with vpcd's port, e.g. because another
    pcscd was started at the same time.
    """
    RUN_DIR.mkdir(exist_ok=True)
    log_path = RUN_DIR / "pcscd.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            ["pcscd", "--foreground"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    if not _wait(lambda: proc.poll() is not None or vpcd_listening(), 5.0) or proc.poll():
        proc.kill()
        proc.wait()
        raise RuntimeError(f"pcscd did not come up with vpcd's port (see {log_path})")
    PID_FILE.write_text(f"{proc.pid}\n")
    return proc.pid


def stop_pcscd(pid: int) -> None:
    """SIGTERM pcscd and wait for it to exit (it takes ~1.75 s)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    # pcscd is our child when we started it: reap it, or it stays a zombie.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    _wait(lambda: not _is_pcscd(pid), 10.0)
    if _pid_from(PID_FILE) == pid:
        PID_FILE.unlink()


def reader_name(reader: int) -> str:
    return f"Virtual PCD 00 {reader:02d}"


def card_present(reader_name: str) -> bool | None:
    """Whether pcscd sees a card in the reader now (None if pcscd is unreachable)."""
    return wait_for_card(reader_name, present=True, timeout=0.0, poll=False)


def wait_for_card(
    reader_name: str, *, present: bool, timeout: float, poll: bool = True
) -> bool | None:
    """Wait with SCardGetStatusChange until a card is (or is no longer) in the reader.

    Returns whether the wanted state was reached, or None when pcscd cannot be reached.
    A fresh context is used every time, so this keeps working across pcscd restarts.
    """
    from smartcard import scard

    deadline = time.monotonic() + timeout
    while True:
        rc, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        if rc == scard.SCARD_S_SUCCESS:
            try:
                rc, states = scard.SCardGetStatusChange(
                    ctx, 0, [(reader_name, scard.SCARD_STATE_UNAWARE)]
                )
                while rc == scard.SCARD_S_SUCCESS:
                    _, event, _ = states[0]
                    if bool(event & scard.SCARD_STATE_PRESENT) == present:
                        return True
                    left_ms = int((deadline - time.monotonic()) * 1000)
                    if left_ms <= 0 or not poll:
                        return False
                    known = event & ~scard.SCARD_STATE_CHANGED
                    rc, states = scard.SCardGetStatusChange(ctx, left_ms, [(reader_name, known)])
            finally:
                scard.SCardReleaseContext(ctx)
        if time.monotonic() >= deadline or not poll:
            return None if rc == scard.SCARD_E_NO_SERVICE else False
        time.sleep(0.05)  # pcscd restarting, or the reader not there yet


class CardServer:
    """``mynacard serve`` as a subprocess on vpcd reader N.

    `start` returns once pcscd sees the card; `stop` ends the server with SIGTERM (it must
    exit 0, without a traceback) and `kill` with SIGKILL; both wait until the card is gone,
    so the reader is free for the next server.
    """

    def __init__(
        self,
        profile: str | Path,
        state_dir: Path,
        reader: int = 0,
        *,
        extra_args: tuple[str, ...] = (),
        python: str | Path = sys.executable,
        cwd: Path = REPO_ROOT,
    ) -> None:
        self.name = reader_name(reader)
        self.command = [str(python), "-m", "mynacard", "serve", "--profile", str(profile)]
        self.command += ["--state", str(state_dir), "--reader", str(reader), *extra_args]
        # A control socket of the test's own, never that of a `serve` the developer runs.
        self.command += ["--control-dir", str(state_dir.with_name(state_dir.name + "-control"))]
        self.cwd = cwd
        self._proc: subprocess.Popen[str] | None = None
        self._output: IO[str] | None = None

    def said(self) -> str:
        """What the server printed so far."""
        if self._output is None:
            return ""
        self._output.seek(0)
        return self._output.read()

    def start(self, timeout: float = 5.0) -> str:
        """Start the server; return the reader name once the card is in it."""
        if wait_for_card(self.name, present=True, timeout=0.0, poll=False):
            raise RuntimeError(
                f"{self.name!r} already holds a card (is another `mynacard serve` running?)"
            )
        self._output = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed by stop/kill)
        self._proc = subprocess.Popen(
            self.command, stdout=self._output, stderr=self._output, text=True, cwd=self.cwd
        )
        if not wait_for_card(self.name, present=True, timeout=timeout):
            said = self.said()
            self.stop(check=False)
            raise RuntimeError(f"no card in {self.name!r} after {timeout} s; server said:\n{said}")
        return self.name

    def stop(self, *, check: bool = True, wait_gone: bool = True) -> None:
        """SIGTERM; with `check`, AssertionError unless it exited 0 without a traceback.
        Without `wait_gone` it returns before pcscd has seen the card go (~0.3 s)."""
        self._end(signal.SIGTERM, check, wait_gone)

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as a crash or ``kill -9`` would end it."""
        self._end(signal.SIGKILL, check=False, wait_gone=True)

    def _end(self, signum: signal.Signals, check: bool, wait_gone: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.send_signal(signum)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if wait_gone:
            wait_for_card(self.name, present=False, timeout=5.0)
        text = self.said()
        if self._output is not None:
            self._output.close()
            self._output = None
        if check and (proc.returncode != 0 or "Traceback" in text):
            raise AssertionError(f"mynacard serve exited {proc.returncode}:\n{text}")


@contextlib.contextmanager
def serve_card(
    profile: str | Path,
    state_dir: Path,
    reader: int = 0,
    *,
    extra_args: tuple[str, ...] = (),
    timeout: float = 5.0,
    python: str | Path = sys.executable,
    cwd: Path = REPO_ROOT,
) -> Iterator[str]:
    """Run ``mynacard serve`` as a subprocess until the card is in the reader; yield its name.

    On exit the server gets SIGTERM (and must exit 0) and we wait until the card is gone,
    so the next test can use the same reader.
    """
    server = CardServer(profile, state_dir, reader, extra_args=extra_args, python=python, cwd=cwd)
    name = server.start(timeout)
    try:
        yield name
    except BaseException:
        server.stop(check=False)
        raise
    server.stop()


class ScardError(RuntimeError):
    """A PC/SC call failed; `code` is its SCARD_E_/SCARD_W_ result."""

    def __init__(self, call: str, code: int) -> None:
        from smartcard import scard

        super().__init__(f"{call}: {scard.SCardGetErrorMessage(code)} ({code & 0xFFFFFFFF:#010x})")
        self.code = code


class ScardConnection:
    """A shared connection to a reader through pcscd, with pyscard's `smartcard.scard` (the
    PC/SC C API as it is, so resets and power cycles are the real SCardReconnect)."""

    def __init__(self, reader_name: str) -> None:
        from smartcard import scard

        self._scard = scard
        rc, self._context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        self._check("SCardEstablishContext", rc)
        rc, self._handle, self._protocol = scard.SCardConnect(
            self._context, reader_name, scard.SCARD_SHARE_SHARED, self._protocols
        )
        if rc != scard.SCARD_S_SUCCESS:
            scard.SCardReleaseContext(self._context)
            self._check("SCardConnect", rc)

    @property
    def _protocols(self) -> int:
        return int(self._scard.SCARD_PROTOCOL_T0 | self._scard.SCARD_PROTOCOL_T1)

    def _check(self, call: str, rc: int) -> None:
        if rc != self._scard.SCARD_S_SUCCESS:
            raise ScardError(call, rc)

    def transmit(self, capdu: bytes) -> bytes:
        """One C-APDU, its R-APDU (data + SW)."""
        rc, response = self._scard.SCardTransmit(self._handle, self._protocol, list(capdu))
        self._check("SCardTransmit", rc)
        return bytes(response)

    def atr(self) -> bytes:
        rc, _, _, _, atr = self._scard.SCardStatus(self._handle)
        self._check("SCardStatus", rc)
        return bytes(atr)

    def reconnect(self, disposition: int) -> bytes:
        """SCardReconnect with SCARD_RESET_CARD (warm reset) or SCARD_UNPOWER_CARD (power
        off and on); returns the ATR."""
        rc, self._protocol = self._scard.SCardReconnect(
            self._handle, self._scard.SCARD_SHARE_SHARED, self._protocols, disposition
        )
        self._check("SCardReconnect", rc)
        return self.atr()

    def reset(self) -> bytes:
        return self.reconnect(self._scard.SCARD_RESET_CARD)

    def power_cycle(self) -> bytes:
        return self.reconnect(self._scard.SCARD_UNPOWER_CARD)

    def close(self) -> None:
        self._scard.SCardDisconnect(self._handle, self._scard.SCARD_LEAVE_CARD)
        self._scard.SCardReleaseContext(self._context)
