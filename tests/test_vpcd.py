"""The vpcd transport: framing against a fake vpcd, then through the real pcscd."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import ServeCard
from pcsc import (
    REPO_ROOT,
    reader_name,
    wait_for_card,
)

from mynacard import vpcd as vpcd_module
from mynacard.vpcd import VpcdClient, reader_port, unreachable_message

ATR = bytes.fromhex("3B80800101")
SELECT_UNKNOWN = bytes.fromhex("00A4040C07A0000000000001")
SELECT_JPKI = bytes.fromhex("00A4040C0AD392F000260100000001")


class FakeCard:
    """Records power events; SELECT gives 6A82, other APDUs get ``answer(capdu)``."""

    def __init__(self, answer: Callable[[bytes], bytes] | None = None) -> None:
        self.atr = ATR
        self.events: list[str] = []
        self.answer = answer or (lambda capdu: capdu + b"\x90\x00")

    def power_on(self) -> bytes:
        self.events.append("on")
        return self.atr

    def power_off(self) -> None:
        self.events.append("off")

    def reset(self) -> bytes:
        self.events.append("reset")
        return self.atr

    def transmit(self, capdu: bytes) -> bytes:
        if capdu[1:2] == b"\xa4":
            return b"\x6a\x82"
        return self.answer(capdu)


class VpcdConn:
    """The vpcd side of one connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.settimeout(5)

    def send(self, payload: bytes) -> None:
        self.sock.sendall(struct.pack("!H", len(payload)) + payload)

    def recv(self) -> bytes:
        (size,) = struct.unpack("!H", self._exact(2))
        return self._exact(size)

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def control(self, code: int) -> None:
        self.send(bytes([code]))

    def atr(self) -> bytes:
        self.control(4)
        return self.recv()

    def apdu(self, capdu: bytes) -> bytes:
        self.send(capdu)
        return self.recv()


class FakeVpcd:
    """A listening socket standing in for vpcd's reader port."""

    def __init__(self, port: int = 0) -> None:
        self.listener = socket.create_server(("127.0.0.1", port))
        self.listener.settimeout(5)
        self.port: int = self.listener.getsockname()[1]

    def accept(self) -> VpcdConn:
        return VpcdConn(self.listener.accept()[0])

    def accept_from(self, proc: subprocess.Popen[str], timeout: float = 10) -> VpcdConn:
        """Accept the connection of a card subprocess, failing early if it exits."""
        self.listener.settimeout(0.1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                return self.accept()
            except TimeoutError:
                continue
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"card process did not connect (rc {proc.returncode}):\n{out}{err}")


@contextmanager
def running(client: VpcdClient) -> Iterator[threading.Thread]:
    thread = threading.Thread(target=client.run, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        client.request_stop()
        thread.join(5)
        assert not thread.is_alive(), "client did not stop"


@pytest.fixture
def vpcd() -> Iterator[FakeVpcd]:
    server = FakeVpcd()
    yield server
    server.listener.close()


def test_reader_ports() -> None:
    assert reader_port(0) == 35963
    assert reader_port(1) == 35964


def test_reader_names_follow_reader_conf(tmp_path: Path) -> None:
    """Each DEVICENAME gives two readers named after its FRIENDLYNAME, as pcscd names them."""
    from mynacard.cli import main

    (tmp_path / "vpcd").write_text(
        'FRIENDLYNAME "Virtual PCD"\nDEVICENAME   /dev/null:0x8C7B\n'
        "LIBPATH      /usr/lib/pcsc/drivers/serial/libifdvpcd.so\nCHANNELID    0x8C7B\n"
    )
    with open(tmp_path / "mynacard-vpcd", "w") as out, contextlib.redirect_stdout(out):
        assert main(["reader-conf"]) == 0
    assert vpcd_module.reader_names(tmp_path) == {
        0: "Virtual PCD 00 00",
        1: "Virtual PCD 00 01",
        2: "Virtual PCD B 00 00",
        3: "Virtual PCD B 00 01",
    }
    assert vpcd_module.reader_name(35966, tmp_path) == "Virtual PCD B 00 01"
    assert vpcd_module.reader_name(35967, tmp_path) is None


def test_control_codes(vpcd: FakeVpcd) -> None:
    card = FakeCard()
    with running(VpcdClient(card, "127.0.0.1", vpcd.port)):
        conn = vpcd.accept()
        assert conn.atr() == ATR  # control codes have no reply: GET ATR synchronises
        assert card.events == ["off"]  # powered off on connect
        for code in (1, 2, 0):
            conn.control(code)
        assert conn.atr() == ATR
        assert card.events == ["off", "on", "reset", "off"]


def test_apdu_round_trip(vpcd: FakeVpcd) -> None:
    with running(VpcdClient(FakeCard(), "127.0.0.1", vpcd.port)):
        conn = vpcd.accept()
        conn.control(1)
        assert conn.apdu(SELECT_UNKNOWN) == b"\x6a\x82"
        assert conn.apdu(b"\x00\x84\x00\x00\x08") == b"\x00\x84\x00\x00\x08\x90\x00"


def test_message_split_across_reads(vpcd: FakeVpcd) -> None:
    """vpcd writes length and body separately; the body may also arrive in pieces."""
    with running(VpcdClient(FakeCard(), "127.0.0.1", vpcd.port)):
        conn = vpcd.accept()
        capdu = b"\x00\xda\x00\x00\x00\x10\x00" + bytes(4096)
        message = struct.pack("!H", len(capdu)) + capdu
        for piece in (message[:1], message[1:2], message[2:100], message[100:]):
            conn.sock.sendall(piece)
            time.sleep(0.01)
        assert conn.recv() == capdu + b"\x90\x00"


def test_large_response(vpcd: FakeVpcd) -> None:
    body = bytes(range(256)) * 234 + b"\x01" * 96  # 60 000 bytes
    with running(VpcdClient(FakeCard(lambda c: body + b"\x90\x00"), "127.0.0.1", vpcd.port)):
        conn = vpcd.accept()
        assert conn.apdu(b"\x00\xb0\x00\x00\x00\x00\x00") == body + b"\x90\x00"
        assert conn.apdu(b"\x00\xb0\x00\x00\x00\x00\x00") == body + b"\x90\x00"


def test_oversize_response_keeps_framing(vpcd: FakeVpcd, caplog: pytest.LogCaptureFixture) -> None:
    def answer(capdu: bytes) -> bytes:
        return bytes(65534) + b"\x90\x00" if capdu[1] == 0xB0 else b"\x90\x00"

    with running(VpcdClient(FakeCard(answer), "127.0.0.1", vpcd.port)):
        conn = vpcd.accept()
        assert conn.apdu(b"\x00\xb0\x00\x00\x00\x00\x00") == b"\x6f\x00"
        assert conn.apdu(b"\x00\x84\x00\x00\x08") == b"\x90\x00"  # still in step
    assert "exceeds vpcd's 65535-byte limit" in caplog.text


def test_card_exception_answers_6f00(vpcd: FakeVpcd, caplog: pytest.LogCaptureFixture) -> None:
    def answer(capdu: bytes) -> bytes:
        raise ValueError("card bug")

    with running(VpcdClient(FakeCard(answer), "127.0.0.1", vpcd.port)):
        conn = vpcd.accept()
        assert conn.apdu(b"\x00\x84\x00\x00\x08") == b"\x6f\x00"
        assert conn.apdu(SELECT_UNKNOWN) == b"\x6a\x82"
    assert "card bug" in caplog.text


def test_reconnects_after_close(vpcd: FakeVpcd) -> None:
    card = FakeCard()
    with running(VpcdClient(card, "127.0.0.1", vpcd.port)):
        conn = vpcd.accept()
        conn.control(1)
        assert conn.apdu(SELECT_UNKNOWN) == b"\x6a\x82"
        conn.sock.close()  # pcscd went away
        started = time.monotonic()
        conn = vpcd.accept()
        assert time.monotonic() - started < 1.0
        assert conn.atr() == ATR
        assert card.events == ["off", "on", "off"]  # powered off again on reconnect
        assert conn.apdu(SELECT_UNKNOWN) == b"\x6a\x82"


def test_retries_until_vpcd_listens(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    caplog.set_level(logging.INFO, logger="mynacard.vpcd")
    with running(VpcdClient(FakeCard(), "127.0.0.1", port)):
        time.sleep(0.5)  # a few refused attempts
        server = FakeVpcd(port)
        try:
            assert server.accept().atr() == ATR
        finally:
            server.listener.close()
    hints = [r for r in caplog.records if "cannot reach vpcd" in r.getMessage()]
    assert len(hints) == 1
    assert f"127.0.0.1:{port} (connection refused)" in hints[0].getMessage()


def test_unreachable_message_says_how_to_start() -> None:
    err = ConnectionRefusedError(111, "Connection refused")
    message = unreachable_message("127.0.0.1", 35963, err)
    assert "pcscd --foreground" in message and "vsmartcard-vpcd" in message


def test_warns_when_vpcd_stays_silent(vpcd: FakeVpcd, caplog: pytest.LogCaptureFixture) -> None:
    """vpcd keeps a second card for the same reader waiting in its backlog, silent."""
    with running(VpcdClient(FakeCard(), "127.0.0.1", vpcd.port, idle_warning=0.2)):
        conn = vpcd.accept()
        time.sleep(0.4)
        assert conn.atr() == ATR
    assert "is another card already using this reader?" in caplog.text


def test_stop_while_idle(vpcd: FakeVpcd) -> None:
    client = VpcdClient(FakeCard(), "127.0.0.1", vpcd.port)
    with running(client) as thread:
        vpcd.accept().atr()
        started = time.monotonic()
        client.request_stop()
        thread.join(2)
        assert not thread.is_alive()
        assert time.monotonic() - started < 0.5


def serve_verbose(vpcd: FakeVpcd, state: Path, *commands: bytes) -> str:
    """Run `mynacard serve --verbose` against the fake vpcd, send `commands`; its stderr."""
    address = f"127.0.0.1:{vpcd.port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mynacard", "serve", "-v", "--state", str(state), "--vpcd", address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        conn = vpcd.accept_from(proc)
        conn.control(1)
        for command in commands:
            conn.apdu(command)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    return err


def test_verbose_logs_apdus_with_secrets_masked(vpcd: FakeVpcd, tmp_path: Path) -> None:
    verify = bytes.fromhex("00200080063132333435FF")[:5] + b"ABC123"
    err = serve_verbose(
        vpcd, tmp_path / "state", SELECT_JPKI, bytes.fromhex("00A4020C02001B"), verify
    )
    assert "C-APDU 00 A4 04 0C 0A D3 92 F0 00 26 01 00 00 00 01" in err
    assert "R-APDU 90 00" in err and "power on" in err
    assert "C-APDU 00 20 00 80 06 ** ** ** ** ** **" in err
    assert "41 42 43" not in err and "ABC123" not in err
    assert "PIL" not in err and "STREAM" not in err  # -v sets only mynacard's loggers


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_exits_cleanly_on_signal(
    vpcd: FakeVpcd, tmp_path: Path, signum: signal.Signals
) -> None:
    """`mynacard serve` closes the card (state released) and exits 0, without a traceback."""
    from mynacard import open_card

    state = tmp_path / "state"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mynacard",
            "serve",
            "--state",
            str(state),
            "--vpcd",
            f"127.0.0.1:{vpcd.port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        conn = vpcd.accept_from(proc)
        conn.control(1)
        assert conn.apdu(SELECT_JPKI) == b"\x90\x00"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert out.startswith("serving profile 'default'")
    with open_card("default", state):  # the state lock was released
        pass


# -- transport faults (issue 10): the peer stalls, truncates, dribbles or stops reading -----

FRAME_TIMEOUT = 0.2


def stalling_client(card: FakeCard, port: int) -> VpcdClient:
    return VpcdClient(card, "127.0.0.1", port, frame_timeout=FRAME_TIMEOUT, backoff_initial=0.01)


def assert_reconnects(vpcd: FakeVpcd, conn: VpcdConn, within: float) -> VpcdConn:
    """The card dropped `conn` (EOF) and came back on a new connection, in working order."""
    started = time.monotonic()
    with pytest.raises((EOFError, ConnectionResetError)):
        conn.recv()
    fresh = vpcd.accept()
    assert time.monotonic() - started < within
    assert fresh.atr() == ATR
    assert fresh.apdu(SELECT_UNKNOWN) == b"\x6a\x82"
    return fresh


@pytest.mark.parametrize(
    "partial",
    [b"\x00", b"\x00\x0c", b"\x00\x0c" + SELECT_UNKNOWN[:5], b"\xff\xff" + SELECT_UNKNOWN],
    ids=["half-a-length", "length-only", "half-a-body", "length-beyond-the-body"],
)
def test_peer_stalled_mid_frame_is_dropped(
    vpcd: FakeVpcd, partial: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """A message begun and never finished does not hold the reader: after the frame time-out
    the card drops the connection and connects again."""
    with running(stalling_client(FakeCard(), vpcd.port)):
        conn = vpcd.accept()
        assert conn.atr() == ATR
        conn.sock.sendall(partial)
        assert_reconnects(vpcd, conn, within=FRAME_TIMEOUT + 1.0)
    assert "stalled for 0.2 s" in caplog.text


def test_truncated_frame_then_close(vpcd: FakeVpcd) -> None:
    """The peer sends half a message and closes: the card reconnects at once."""
    with running(stalling_client(FakeCard(), vpcd.port)):
        conn = vpcd.accept()
        conn.sock.sendall(b"\x00\x0c" + SELECT_UNKNOWN[:4])
        conn.sock.close()
        fresh = vpcd.accept()
        assert fresh.apdu(SELECT_UNKNOWN) == b"\x6a\x82"


def test_byte_by_byte_delivery(vpcd: FakeVpcd) -> None:
    """Each byte in its own segment, with pauses shorter than the frame time-out."""
    with running(stalling_client(FakeCard(), vpcd.port)):
        conn = vpcd.accept()
        command = b"\x00\x84\x00\x00\x08"
        for message in (b"\x00\x01\x04", struct.pack("!H", len(command)) + command):
            for byte in message:
                conn.sock.sendall(bytes([byte]))
                time.sleep(0.002)
        assert conn.recv() == ATR
        assert conn.recv() == command + b"\x90\x00"


@pytest.mark.parametrize("size", [0, 65535], ids=["empty", "largest"])
def test_odd_lengths_keep_the_framing(vpcd: FakeVpcd, size: int, tmp_path: Path) -> None:
    """A message of no bytes, or of the largest length the prefix allows, is answered with a
    status word (no APDU is that long or that short) and the next message is in step."""
    from mynacard import open_card

    def answer(capdu: bytes) -> bytes:
        return card.transmit(capdu)

    with (
        open_card("default", tmp_path / "state") as card,
        running(stalling_client(FakeCard(answer), vpcd.port)),
    ):
        conn = vpcd.accept()
        response = conn.apdu(bytes([0x00, 0xB0]) + bytes(size - 2) if size else b"")
        assert len(response) == 2 and response != b"\x90\x00"
        assert conn.apdu(SELECT_JPKI) == b"\x6a\x82"  # FakeCard: SELECT is 6A82


def test_peer_not_reading_is_dropped(vpcd: FakeVpcd, caplog: pytest.LogCaptureFixture) -> None:
    """A peer that sends commands and never reads the answers: once the socket buffers are
    full the card's send times out, and it drops the connection and connects again."""
    body = bytes(60_000)
    with running(stalling_client(FakeCard(lambda c: body + b"\x90\x00"), vpcd.port)):
        conn = vpcd.accept()
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        command = b"\x00\xb0\x00\x00\x00\x00\x00"
        started = time.monotonic()
        with contextlib.suppress(OSError):  # the card may close while we still send
            for _ in range(200):
                conn.send(command)
        conn.sock.settimeout(FRAME_TIMEOUT + 2.0)
        fresh = vpcd.accept()  # the card has given up on the old connection
        assert time.monotonic() - started < FRAME_TIMEOUT + 3.0
        assert fresh.atr() == ATR
    assert "stalled for 0.2 s" in caplog.text


def test_remove_and_insert(vpcd: FakeVpcd) -> None:
    """`remove` drops the connection and stays away; `insert` connects again."""
    card = FakeCard()
    client = stalling_client(card, vpcd.port)
    with running(client):
        conn = vpcd.accept()
        assert conn.atr() == ATR
        client.remove()
        with pytest.raises((EOFError, ConnectionResetError)):
            conn.recv()
        vpcd.listener.settimeout(0.3)
        with pytest.raises(TimeoutError):
            vpcd.accept()  # no card while it is out
        assert not client.connected and not client.inserted
        client.insert()
        vpcd.listener.settimeout(2)
        assert vpcd.accept().atr() == ATR
        assert client.inserted


# -- through pcscd ---------------------------------------------------------------------------

THREAD_READER = 1  # in-process cards use reader 1, `mynacard serve` tests reader 0


@contextmanager
def card_in_reader(card: FakeCard, reader: int = THREAD_READER) -> Iterator[str]:
    """Serve ``card`` from a thread of this process; yield the reader name once present."""
    name = reader_name(reader)
    client = VpcdClient(card, "127.0.0.1", reader_port(reader))
    with running(client):
        assert wait_for_card(name, present=True, timeout=5), f"no card in {name}"
        yield name
    assert wait_for_card(name, present=False, timeout=5), f"card still in {name}"


def connect(name: str):  # type: ignore[no-untyped-def]
    from smartcard.System import readers

    reader = next(r for r in readers() if str(r) == name)
    connection = reader.createConnection()
    connection.connect()
    return connection


def transmit(connection, capdu: bytes) -> bytes:  # type: ignore[no-untyped-def]
    data, sw1, sw2 = connection.transmit(list(capdu))
    return bytes([*data, sw1, sw2])


@pytest.mark.pcsc
def test_pcsc_round_trip(pcscd: int) -> None:
    body = bytes(range(256)) * 234 + b"\x01" * 96  # 60 000 bytes

    def answer(capdu: bytes) -> bytes:
        return body + b"\x90\x00" if capdu[1] == 0xB0 else b"\x90\x00"

    with card_in_reader(FakeCard(answer)) as name:
        connection = connect(name)
        try:
            assert bytes(connection.getATR()) == ATR
            assert transmit(connection, SELECT_UNKNOWN) == b"\x6a\x82"
            assert transmit(connection, b"\x00\xb0\x00\x00\x00\x00\x00") == body + b"\x90\x00"
        finally:
            connection.disconnect()


@pytest.mark.pcsc
def test_pcsc_latency_needs_quickack(pcscd: int) -> None:
    """Without TCP_QUICKACK every APDU costs ~44 ms (Nagle + delayed ACK in vpcd)."""
    with card_in_reader(FakeCard()) as name:
        connection = connect(name)
        try:
            for _ in range(20):
                transmit(connection, b"\x00\x84\x00\x00\x08")
            times = []
            for _ in range(200):
                started = time.perf_counter()
                transmit(connection, b"\x00\x84\x00\x00\x08")
                times.append(time.perf_counter() - started)
        finally:
            connection.disconnect()
    assert statistics.median(times) < 0.005


@pytest.mark.pcsc
def test_serve_through_pcscd(serve: ServeCard) -> None:
    from mynacard.personalize.profile import load_profile

    with serve("default") as name:
        connection = connect(name)
        try:
            assert bytes(connection.getATR()) == load_profile("default").atr
            assert transmit(connection, SELECT_UNKNOWN) == b"\x6a\x82"
            assert transmit(connection, SELECT_JPKI) == b"\x90\x00"
        finally:
            connection.disconnect()
