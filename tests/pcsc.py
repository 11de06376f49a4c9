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
    name = reader_name(reader)
    if wait_for_card(name, present=True, timeout=0.0, poll=False):
        raise RuntimeError(f"{name!r} already holds a card (is another `mynacard serve` running?)")
    command = [str(python), "-m", "mynacard", "serve", "--profile", str(profile)]
    command += ["--state", str(state_dir), "--reader", str(reader), *extra_args]
    with tempfile.TemporaryFile("w+") as output:
        proc = subprocess.Popen(command, stdout=output, stderr=output, text=True, cwd=cwd)

        def said() -> str:
            output.seek(0)
            return output.read()

        try:
            if not wait_for_card(name, present=True, timeout=timeout):
                raise RuntimeError(f"no card in {name!r} after {timeout} s; server said:\n{said()}")
            yield name
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            wait_for_card(name, present=False, timeout=5.0)
        text = said()
        if proc.returncode != 0 or "Traceback" in text:
            raise AssertionError(f"mynacard serve exited {proc.returncode}:\n{text}")
