"""Benchmarks: printed figures and ratios to baselines measured in the same run.

1. In process: small APDUs per second (SELECT EF + READ BINARY of 32 bytes), target >= 500,000.
2. RSA-2048 signatures per second through the card (80 2A, DigestInfo) versus calling
   `cryptography` directly with the same key, alternating; target within 1.05x.
3. Secure messaging: READ BINARY of text EF 0002 per second under SM (docs/secure-messaging.md)
   beside the same read in clear, alternating rounds.
4. Round trip through pcscd + vpcd: the emulator versus a minimal echo card (9000 to
   everything), alternating; both cards pinned to CPU 0, this process to CPU 1; target 1.1x.

    .venv/bin/python bench/bench_card.py [--rounds N] [--skip-pcsc]

Part 3 needs pcscd with the vsmartcard vpcd driver (`sudo ./setup.sh test` installs them);
it starts pcscd when it is not running and stops it again afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

import pcsc  # noqa: E402  (the tests' pcscd helpers)

from mynacard import open_card  # noqa: E402
from mynacard.conformance.secure_messaging import SmClient, session_public_key  # noqa: E402
from mynacard.personalize.profile import load_profile  # noqa: E402

SELECT_JPKI = bytes.fromhex("00A4040C0AD392F000260100000001")
SELECT_TOKEN = bytes.fromhex("00A4020C020006")
READ_32 = bytes.fromhex("00B0000020")
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


def in_process_apdus(rounds: int) -> tuple[float, float]:
    """Small APDUs per second, SELECT EF + READ BINARY pairs: (median, best) of `rounds`."""
    with tempfile.TemporaryDirectory() as state, open_card("default", state) as card:
        transmit = card.transmit
        transmit(SELECT_JPKI)
        assert transmit(SELECT_TOKEN) == b"\x90\x00" and len(transmit(READ_32)) == 34
        pairs = 100_000
        rates = []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(pairs):
                transmit(SELECT_TOKEN)
                transmit(READ_32)
            rates.append(2 * pairs / (time.perf_counter() - start))
        return statistics.median(rates), max(rates)


def signing(rounds: int) -> tuple[float, float]:
    """Signatures per second (median of rounds): through the card and directly, each of a
    digest not signed before (the card keeps PKCS#1 v1.5 signatures it made)."""
    profile = load_profile("default")
    assert profile.jpki is not None
    key = profile.jpki.auth_key
    digest = hashlib.sha256(b"benchmark").digest()
    apdu = b"\x80\x2a\x00\x80\x33" + SHA256_DIGEST_INFO + digest + b"\x00"
    pkcs1, prehashed = padding.PKCS1v15(), Prehashed(hashes.SHA256())
    pin = profile.pins["auth"].encode()
    per_round = 100
    with tempfile.TemporaryDirectory() as state, open_card(profile, state) as card:
        card.transmit(SELECT_JPKI)
        card.transmit(bytes.fromhex("00A4020C020018"))
        assert card.transmit(b"\x00\x20\x00\x80\x04" + pin) == b"\x90\x00"
        card.transmit(bytes.fromhex("00A4020C020017"))
        assert card.transmit(apdu)[:-2] == key.sign(digest, pkcs1, prehashed)
        card_rates, raw_rates = [], []
        for number in range(rounds):
            digests = [hashlib.sha256(f"{number}:{i}".encode()).digest() for i in range(per_round)]
            apdus = [apdu[:-33] + fresh + b"\x00" for fresh in digests]
            start = time.perf_counter()
            for command in apdus:
                card.transmit(command)
            card_rates.append(per_round / (time.perf_counter() - start))
            start = time.perf_counter()
            for fresh in digests:
                key.sign(fresh, pkcs1, prehashed)
            raw_rates.append(per_round / (time.perf_counter() - start))
    return statistics.median(card_rates), statistics.median(raw_rates)


def secure_messaging_reads(rounds: int) -> tuple[float, float]:
    """READ BINARY of the whole text EF 0002 per second (median of rounds): in clear, then
    under SM with a fresh counter each time (SELECT once, DO 96 Le 0 = the whole EF)."""
    profile = load_profile("default")
    per_round = 2_000
    plain_read = bytes.fromhex("00B00000000000")
    with tempfile.TemporaryDirectory() as state, open_card(profile, state) as card:
        transmit = card.transmit
        transmit(bytes.fromhex("00A4040C0AD3921000310001010408"))
        transmit(bytes.fromhex("00A4020C020011"))
        assert transmit(b"\x00\x20\x00\x80\x04" + profile.pins["text"].encode()) == b"\x90\x00"
        transmit(bytes.fromhex("00A4020C020006"))
        client = SmClient(session_public_key(transmit(plain_read)[:-2]))
        assert transmit(client.open()) == b"\x90\x00"
        assert transmit(client.select_ef(0x0002)) == b"\x90\x00"
        attributes = transmit(plain_read)[:-2]
        assert client.unwrap(transmit(client.read_binary())) == attributes
        plain_rates, sm_rates = [], []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(per_round):
                transmit(plain_read)
            plain_rates.append(per_round / (time.perf_counter() - start))
            start = time.perf_counter()
            for _ in range(per_round):
                transmit(client.read_binary())
            sm_rates.append(per_round / (time.perf_counter() - start))
        assert client.unwrap(transmit(client.read_binary())) == attributes
    return statistics.median(plain_rates), statistics.median(sm_rates)


def _pinned(cpu: int) -> Callable[[], None]:
    return lambda: os.sched_setaffinity(0, {cpu})


def _round_trip_ns(reader: str, apdus: list[bytes], count: int) -> list[int]:
    from smartcard import scard

    rc, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    assert rc == scard.SCARD_S_SUCCESS
    rc, handle, protocol = scard.SCardConnect(
        ctx, reader, scard.SCARD_SHARE_SHARED, scard.SCARD_PROTOCOL_T1
    )
    assert rc == scard.SCARD_S_SUCCESS, scard.SCardGetErrorMessage(rc)
    try:
        for setup in apdus[:-1]:
            scard.SCardTransmit(handle, protocol, list(setup))
        measured = list(apdus[-1])
        samples = []
        for _ in range(count):
            start = time.perf_counter_ns()
            rc, _ = scard.SCardTransmit(handle, protocol, measured)
            samples.append(time.perf_counter_ns() - start)
            assert rc == scard.SCARD_S_SUCCESS
        return samples
    finally:
        scard.SCardDisconnect(handle, scard.SCARD_LEAVE_CARD)
        scard.SCardReleaseContext(ctx)


def through_pcscd(rounds: int) -> tuple[float, float, float]:
    """Round trips (µs) of READ BINARY 32 bytes: the emulator's and the echo card's medians
    over alternating rounds of 250, and the median of the per-round ratios."""
    started = None if pcsc.vpcd_listening() else pcsc.start_pcscd()
    os.sched_setaffinity(0, {1})
    cards: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory() as state:
            card_cmd = [
                sys.executable,
                "-m",
                "mynacard",
                "serve",
                "--state",
                state,
                "--reader",
                "0",
            ]
            echo_cmd = [sys.executable, str(REPO_ROOT / "bench" / "echo_card.py"), "--reader", "1"]
            for cmd in (card_cmd, echo_cmd):
                cards.append(
                    subprocess.Popen(cmd, stdout=subprocess.DEVNULL, preexec_fn=_pinned(0))
                )
            for reader in (pcsc.reader_name(0), pcsc.reader_name(1)):
                if not pcsc.wait_for_card(reader, present=True, timeout=10):
                    raise RuntimeError(f"no card appeared in {reader}")
            card_medians: list[float] = []
            echo_medians: list[float] = []
            for _ in range(rounds * 4):
                card_ns = _round_trip_ns(
                    pcsc.reader_name(0), [SELECT_JPKI, SELECT_TOKEN, READ_32], 250
                )
                echo_ns = _round_trip_ns(pcsc.reader_name(1), [READ_32], 250)
                card_medians.append(statistics.median(card_ns) / 1000)
                echo_medians.append(statistics.median(echo_ns) / 1000)
            ratios = [c / e for c, e in zip(card_medians, echo_medians, strict=True)]
            return (
                statistics.median(card_medians),
                statistics.median(echo_medians),
                statistics.median(ratios),
            )
    finally:
        for proc in cards:
            proc.terminate()
            proc.wait(timeout=10)
        if started is not None:
            pcsc.stop_pcscd(started)


def main() -> int:
    parser = argparse.ArgumentParser(description="mynacard benchmarks")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-pcsc", action="store_true", help="skip the pcscd round trip")
    args = parser.parse_args()

    rate, best = in_process_apdus(args.rounds)
    print(
        f"in process: {rate:,.0f} small APDUs/s median of {args.rounds} rounds, best {best:,.0f} "
        "(SELECT EF + READ BINARY 32 B; target 500,000)"
    )
    card_rate, raw_rate = signing(args.rounds)
    print(
        f"signing: card {card_rate:,.1f}/s, cryptography {raw_rate:,.1f}/s, "
        f"ratio {raw_rate / card_rate:.3f}x (target <= 1.05x)"
    )
    plain_reads, sm_reads = secure_messaging_reads(args.rounds)
    print(
        f"text EF 0002 reads: in clear {plain_reads:,.0f}/s, under SM {sm_reads:,.0f}/s, "
        f"ratio {plain_reads / sm_reads:.2f}x (SM read rate beside the plain rate)"
    )
    if not args.skip_pcsc:
        card_us, echo_us, ratio = through_pcscd(args.rounds)
        print(
            f"through pcscd: card {card_us:.1f} µs, echo card {echo_us:.1f} µs per READ BINARY, "
            f"median ratio of {4 * args.rounds} alternating rounds {ratio:.3f}x (target <= 1.1x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
