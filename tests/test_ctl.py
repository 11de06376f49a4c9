"""Card events under control: `ServedCard` in process, and `mynacard ctl` against a running
`mynacard serve` through its control socket, with a real PC/SC client watching (docs/control.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from pcsc import REPO_ROOT, card_present, wait_for_card
from test_vpcd import SELECT_JPKI, FakeVpcd, connect, transmit

from mynacard.cli import main
from mynacard.served import CardSpec, ServedCard

SELECT_AUTH_CERT = bytes.fromhex("00A4020C02000A")
SELECT_TOKEN = bytes.fromhex("00A4020C020006")  # JPKI's token EF: 160 bytes
SELECT_SIGN_CERT = bytes.fromhex("00A4020C020001")
READ_256 = bytes.fromhex("00B0000000")
READY = re.compile(r'^READY reader=(\S+) name="([^"]*)" vpcd=(\S+)$')


class Server:
    """`mynacard serve ARGS --control-dir DIR` as a subprocess; its stdout lines in a queue."""

    def __init__(self, control: Path, *args: str) -> None:
        command = [sys.executable, "-m", "mynacard", "serve", "--control-dir", str(control)]
        self.proc = subprocess.Popen(
            [*command, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def line(self, prefix: str, timeout: float = 10.0) -> str:
        """The next stdout line starting with `prefix` (fails after `timeout` s)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line.startswith(prefix):
                return line
        pytest.fail(f"serve printed no {prefix!r} line in {timeout} s: {self.stop(check=False)}")

    def stop(self, *, check: bool = True) -> str:
        """SIGTERM; its stderr.  With `check`, it must exit 0 without a traceback."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if check:
            assert self.proc.returncode == 0 and "Traceback" not in err, err
        return err


def ctl(control: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`mynacard ctl --control-dir DIR ARGS` in process: (status, stdout, stderr)."""
    status = main(["ctl", "--control-dir", str(control), *args])
    out, err = capsys.readouterr()
    return status, out, err


def ctl_ok(control: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> str:
    status, out, err = ctl(control, *args, capsys=capsys)
    assert status == 0, err
    return out


def status_of(control: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    answer: dict[str, object] = json.loads(ctl_ok(control, "status", "--json", capsys=capsys))
    return answer


@pytest.fixture
def control(tmp_path: Path) -> Path:
    directory = tmp_path / "control"
    directory.mkdir(mode=0o700)
    return directory


# -- without pcscd -------------------------------------------------------------------------


def test_served_card_in_process(vpcd: FakeVpcd, tmp_path: Path) -> None:
    """The Python API: ready once vpcd powered the card and read its ATR, faults applied and
    cleared at run time, counters, another profile, removal."""
    plan = tmp_path / "plan.toml"
    plan.write_text('[[fault]]\nkind = "wrong-le"\nins = ["B0"]\n')
    spec = CardSpec(profile="default", state=tmp_path / "state", port=vpcd.port)
    with ServedCard(spec) as card:
        conn = vpcd.accept()
        assert not card.wait_ready(0.1)
        conn.control(1)  # what pcscd does on insertion: power on, then read the ATR
        assert conn.atr() == bytes.fromhex("3BE000FF8131FE4514")
        assert card.wait_ready(2)
        for command in (SELECT_JPKI, SELECT_TOKEN):
            assert conn.apdu(command) == b"\x90\x00"
        card.apply_faults(plan)
        assert conn.apdu(READ_256) == b"\x6c\xa0"  # the fault is on: 6Cxx
        assert card.status()["fault_plan"] == str(plan)
        card.clear_faults()
        assert conn.apdu(READ_256)[-2:] == b"\x90\x00"
        card.reset()
        assert conn.apdu(READ_256) == b"\x69\x86"  # the reset forgot the selected EF
        status = card.status()
        counters = status["counters"]
        assert counters["apdus"] == 5 and counters["reset"] == 1 and counters["faults"] >= 1
        assert status["fault_plan"] is None and status["profile"] == "default"
        card.use_profile("no-sign-cert")
        conn = vpcd.accept()  # swapped: the old connection was dropped, a new one made
        assert conn.apdu(SELECT_JPKI) == b"\x90\x00"
        assert conn.apdu(SELECT_SIGN_CERT) == b"\x6a\x82"  # no signature certificate
        assert card.status()["state"] == str(tmp_path / "no-sign-cert")
        card.remove()
        assert not card.wait_ready(0) and not card.status()["inserted"]


@pytest.fixture
def vpcd() -> Iterator[FakeVpcd]:
    server = FakeVpcd()
    yield server
    server.listener.close()


def test_wait_ready_without_a_server_is_one_line(
    control: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    status, out, err = ctl(control, "wait-ready", "--timeout", "0.3", capsys=capsys)
    assert status == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("mynacard: wait-ready: no card after 0.3 s")
    assert time.monotonic() - started >= 0.3


def test_bad_fault_plan_is_one_line(
    control: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text('[[fault]]\nkind = "melt"\n')
    status, _, err = ctl(control, "fault", str(plan), capsys=capsys)
    assert status == 2 and err.count("\n") == 1 and "fault[0].kind" in err


def test_control_dir_others_may_enter_is_refused(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    result = subprocess.run(
        [sys.executable, "-m", "mynacard", "serve", "--control-dir", str(open_dir), "--state",
         str(tmp_path / "s"), "--vpcd", "127.0.0.1:9"],
        capture_output=True, text=True, timeout=30, check=False, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "other users may enter it (mode 755)" in result.stderr
    assert f"chmod 700 {open_dir}" in result.stderr


OTHER_USER_CLIENT = """
import socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    sock.connect(sys.argv[1])
except OSError as error:
    print("connect:", error.strerror)
    sys.exit(0)
sock.sendall(b'{"op": "remove"}\\n')
print("answer:", sock.makefile().readline().strip())
"""


@pytest.mark.skipif(os.getuid() != 0 or not shutil.which("setpriv"), reason="needs root")
def test_socket_refuses_another_user(vpcd: FakeVpcd, tmp_path: Path) -> None:
    """Another uid cannot reach the socket (0700 directory, 0600 socket), and even with the
    permissions opened up the server refuses it (SO_PEERCRED) and the card stays in."""
    base = Path(tempfile.mkdtemp(prefix="mynacard-ctl-"))  # outside pytest's 0700 tmp tree
    base.chmod(0o711)
    control = base / "control"
    server = Server(control, "--state", str(tmp_path / "state"), "--vpcd", f"127.0.0.1:{vpcd.port}")
    try:
        conn = vpcd.accept_from(server.proc)
        path = control / f"port-{vpcd.port}.sock"
        assert (control.stat().st_mode & 0o777, path.stat().st_mode & 0o777) == (0o700, 0o600)

        def as_nobody() -> str:
            command = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                       "/usr/bin/python3", "-c", OTHER_USER_CLIENT, str(path)]  # fmt: skip
            return subprocess.run(command, capture_output=True, text=True, check=True).stdout

        assert as_nobody().strip() == "connect: Permission denied"
        control.chmod(0o711)
        path.chmod(0o666)
        refused = '{"ok": false, "error": "refused: uid 65534 is not the owner"}'
        assert as_nobody().strip() == f"answer: {refused}"
        conn.control(1)
        assert conn.atr()  # still connected: the refused request did nothing
    finally:
        err = server.stop()
        shutil.rmtree(base)
    assert "refused a client of uid 65534" in err


# -- through pcscd: what a PC/SC client sees ---------------------------------------------------


class Served:
    """One `mynacard serve` on reader 0 for the PC/SC tests of this module."""

    def __init__(self, server: Server, control: Path, name: str) -> None:
        self.server, self.control, self.name = server, control, name


@pytest.fixture(scope="module")
def served(pcscd: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("ctl")
    control = root / "control"
    server = Server(control, "--state", str(root / "state"), "--reader", "0")
    try:
        match = READY.match(server.line("READY"))
        assert match is not None and match.group(1) == "0"
        name = match.group(2)
        assert card_present(name)  # READY means pcscd sees the card: connect at once
        yield Served(server, control, name)
    finally:
        server.stop()
    assert wait_for_card(name, present=False, timeout=5)


@pytest.fixture
def inserted(served: Served, capsys: pytest.CaptureFixture[str]) -> Iterator[Served]:
    """The served card, inserted, without faults, and pcscd seeing it; left that way."""
    yield served
    ctl_ok(served.control, "clear", capsys=capsys)
    ctl_ok(served.control, "insert", capsys=capsys)
    ctl_ok(served.control, "wait-ready", "--timeout", "5", capsys=capsys)


@pytest.mark.pcsc
def test_remove_then_insert(inserted: Served, capsys: pytest.CaptureFixture[str]) -> None:
    """remove: pcscd reports the reader empty; insert: the card is back and usable."""
    ctl_ok(inserted.control, "remove", capsys=capsys)
    assert wait_for_card(inserted.name, present=False, timeout=2)
    status = status_of(inserted.control, capsys)
    assert (status["inserted"], status["connected"], status["ready"]) == (False, False, False)
    code, _, err = ctl(inserted.control, "wait-ready", "--timeout", "0.5", capsys=capsys)
    assert code == 2 and err.count("\n") == 1 and "does not see the card" in err
    assert not card_present(inserted.name)  # still out
    ctl_ok(inserted.control, "insert", capsys=capsys)
    ctl_ok(inserted.control, "wait-ready", "--timeout", "5", capsys=capsys)
    assert card_present(inserted.name)
    connection = connect(inserted.name)
    try:
        assert transmit(connection, SELECT_JPKI) == b"\x90\x00"
    finally:
        connection.disconnect()
    assert inserted.server.line("READY").startswith("READY reader=0 ")  # announced again


@pytest.mark.pcsc
def test_reset_is_seen_by_the_client(inserted: Served, capsys: pytest.CaptureFixture[str]) -> None:
    """A reset from the card's side: the client's selection is gone (6986)."""
    before = status_of(inserted.control, capsys)["counters"]
    connection = connect(inserted.name)
    try:
        for command in (SELECT_JPKI, SELECT_AUTH_CERT):
            assert transmit(connection, command) == b"\x90\x00"
        assert transmit(connection, READ_256)[-2:] == b"\x90\x00"
        ctl_ok(inserted.control, "reset", capsys=capsys)
        assert transmit(connection, READ_256) == b"\x69\x86"
    finally:
        connection.disconnect()
    after = status_of(inserted.control, capsys)["counters"]
    assert isinstance(before, dict) and isinstance(after, dict)
    assert after["reset"] == before["reset"] + 1 and after["apdus"] >= before["apdus"] + 4


@pytest.mark.pcsc
def test_power_off_is_a_card_event(inserted: Served, capsys: pytest.CaptureFixture[str]) -> None:
    """A power cut: the client's connection fails, pcscd sees the card leave and come back."""
    from smartcard.Exceptions import CardConnectionException

    connection = connect(inserted.name)
    try:
        assert transmit(connection, SELECT_JPKI) == b"\x90\x00"
        ctl_ok(inserted.control, "power-off", capsys=capsys)
        ctl_ok(inserted.control, "wait-ready", "--timeout", "5", capsys=capsys)
        with pytest.raises(CardConnectionException, match="0x80100069"):  # REMOVED_CARD
            transmit(connection, SELECT_JPKI)
    finally:
        with contextlib.suppress(CardConnectionException):
            connection.disconnect()
    fresh = connect(inserted.name)
    try:
        assert transmit(fresh, SELECT_JPKI) == b"\x90\x00"
    finally:
        fresh.disconnect()


@pytest.mark.pcsc
def test_fault_at_run_time_then_clear(
    inserted: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ctl fault PLAN` changes what the client sees from the next command on; `clear`
    brings normal answers back."""
    plan = tmp_path / "plan.toml"
    plan.write_text('[[fault]]\nkind = "wrong-le"\nins = ["B0"]\n')
    connection = connect(inserted.name)
    try:
        for command in (SELECT_JPKI, SELECT_TOKEN):
            assert transmit(connection, command) == b"\x90\x00"
        assert len(transmit(connection, READ_256)) == 162  # normal: 160 bytes + 9000
        ctl_ok(inserted.control, "fault", str(plan), capsys=capsys)
        assert transmit(connection, READ_256) == b"\x6c\xa0"
        status = status_of(inserted.control, capsys)
        assert status["fault_plan"] == str(plan)
        ctl_ok(inserted.control, "clear", capsys=capsys)
        assert len(transmit(connection, READ_256)) == 162
    finally:
        connection.disconnect()
    assert status_of(inserted.control, capsys)["fault_plan"] is None


@pytest.mark.pcsc
def test_another_profile(inserted: Served, capsys: pytest.CaptureFixture[str]) -> None:
    """`ctl profile P` swaps the card: pcscd sees a removal and the new card."""
    ctl_ok(inserted.control, "profile", "no-sign-cert", capsys=capsys)
    ctl_ok(inserted.control, "wait-ready", "--timeout", "5", capsys=capsys)
    connection = connect(inserted.name)
    try:
        assert transmit(connection, SELECT_JPKI) == b"\x90\x00"
        assert transmit(connection, SELECT_SIGN_CERT) == b"\x6a\x82"  # no signature cert
    finally:
        connection.disconnect()
    assert status_of(inserted.control, capsys)["profile"] == "no-sign-cert"
    ctl_ok(inserted.control, "profile", "default", capsys=capsys)
    ctl_ok(inserted.control, "wait-ready", "--timeout", "5", capsys=capsys)
    connection = connect(inserted.name)
    try:
        assert transmit(connection, SELECT_JPKI) == b"\x90\x00"
        assert transmit(connection, SELECT_SIGN_CERT) == b"\x90\x00"
    finally:
        connection.disconnect()


def test_serve_without_a_control_dir_still_serves(vpcd: FakeVpcd, tmp_path: Path) -> None:
    """A control directory that cannot be made (a file is in the way): `serve` says so and
    serves the card anyway."""
    blocked = tmp_path / "file"
    blocked.write_text("")
    server = Server(blocked / "control", "--state", str(tmp_path / "state"), "--vpcd",
                    f"127.0.0.1:{vpcd.port}")  # fmt: skip
    try:
        conn = vpcd.accept_from(server.proc)
        conn.control(1)
        assert conn.apdu(SELECT_JPKI) == b"\x90\x00"
    finally:
        err = server.stop()
    assert "no control sockets for mynacard ctl" in err and "Not a directory" in err
