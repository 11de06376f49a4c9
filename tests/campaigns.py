"""Reliability campaigns, bounded in the test suite and long in bench/reliability.py: the
timed-kill attack on PIN tries, kill -9 during mixed traffic, random inputs with the card's
invariants checked after each, and memory over many APDUs and open/close cycles.

Each returns what it measured; the callers assert on it (tests) or print it (the bench).
"""

from __future__ import annotations

import gc
import random
import resource
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from card_process import CardProcess, Zygote
from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers.algorithms import AES

from mynacard import Profile, open_card
from mynacard.apps import common, jpki, juki, text, visual
from mynacard.files import TransparentEF, decode_records
from mynacard.store import CardStore, PinState, read_free_area, read_pin_status, reset_pin

SELECT_JPKI = bytes.fromhex("00A4040C0AD392F000260100000001")
SELECT_AUTH_PIN = bytes.fromhex("00A4020C020018")
SELECT_TAXI = bytes.fromhex("00A4040C07F0544158490001")
RIGHT_AUTH, WRONG_AUTH = b"1234", b"9999"
TAXI_PIN = b"5560"
TAXI_KEY1 = bytes.fromhex("790197BAA19B3FF4E2B62CABF2859EC7")


def verify(value: bytes, p2: int = 0x80) -> bytes:
    return bytes((0x00, 0x20, 0x00, p2, len(value))) + value


# -- the timed-kill attack ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Guess:
    """One guess of the auth PIN: the attacker waited `deadline_us` for an answer (None:
    none came, the card was killed); `remaining` is the counter on disk afterwards (3 before)."""

    deadline_us: float
    right: bool
    answer: bytes | None
    remaining: int

    @property
    def free(self) -> bool:
        """A wrong guess that cost no try."""
        return not self.right and self.remaining == 3


def _auth_card(zygote: Zygote, state: Path, card_name: str = "default") -> CardProcess:
    """A new card process with the auth PIN selected, warmed up by a right VERIFY of the sign
    PIN (its writes), so the timed VERIFY pays no first-write costs."""
    card = zygote.card(card_name, state)
    for apdu in (SELECT_JPKI, bytes.fromhex("00A4020C02001B"), verify(b"ABC123"), SELECT_AUTH_PIN):
        card.transmit(apdu)
    return card


def verify_latencies(
    zygote: Zygote, state: Path, rounds: int, card_name: str = "default"
) -> tuple[list[float], list[float]]:
    """Microseconds from sending a wrong (then a right) VERIFY to its answer, `rounds` each,
    each the first VERIFY of a new card process, as in the attack."""
    wrong, right = [], []
    for _ in range(rounds):
        for value, times in ((WRONG_AUTH, wrong), (RIGHT_AUTH, right)):
            if (state / "card.personalised").exists():
                reset_pin(state, "auth")
            card = _auth_card(zygote, state, card_name)
            start = time.perf_counter_ns()
            card.transmit(verify(value))
            times.append((time.perf_counter_ns() - start) / 1000)
            card.close()
    return wrong, right


def timed_kill_attack(
    zygote: Zygote, state: Path, deadlines_us: list[float], guesses: int, card_name: str = "default"
) -> list[Guess]:
    """For each deadline T, `guesses` wrong and as many right guesses (interleaved), each on a
    card with a full counter: send VERIFY, kill -9 if no answer within T, restart, read the
    counter from disk."""
    results = []
    for deadline in deadlines_us:
        for _ in range(guesses):
            for right in (False, True):
                reset_pin(state, "auth")
                card = _auth_card(zygote, state, card_name)
                card.send(verify(RIGHT_AUTH if right else WRONG_AUTH))
                answer = card.answer(timeout=deadline / 1e6)  # from the send, near enough
                if answer is None:
                    card.kill()
                else:
                    card.close()
                remaining = {p.name: p.remaining for p in read_pin_status(state)}["auth"]
                results.append(Guess(deadline, right, answer, remaining))
    return results


def deadlines(wrong: list[float], right: list[float], count: int) -> list[float]:
    """0, then `count - 1` deadlines spaced evenly on a log scale from 10 µs to 1.5 times the
    slowest typical latency (the 90th percentile of both)."""
    both = sorted(wrong + right)
    top = max(both[int(len(both) * 0.9)] * 1.5, 20.0)
    return [0.0] + [10.0 * (top / 10.0) ** (i / (count - 2)) for i in range(count - 1)]


def telling(guesses: list[Guess]) -> dict[float, tuple[float, float]]:
    """By deadline T: the share of wrong guesses that were free, and of right guesses that
    were answered. The attack of issue 10 needs a T where both are high (it had 0.98 and 1);
    when the decrement comes first, a free wrong guess is one killed before the comparison,
    and a right guess answers only after its own decrement: the two add up to about 1."""
    table = {}
    for deadline in sorted({g.deadline_us for g in guesses}):
        wrong = [g for g in guesses if g.deadline_us == deadline and not g.right]
        right = [g for g in guesses if g.deadline_us == deadline and g.right]
        table[deadline] = (
            sum(g.free for g in wrong) / len(wrong),
            sum(g.answer is not None for g in right) / len(right),
        )
    return table


# -- kill -9 during mixed traffic ---------------------------------------------------------------


@dataclass(slots=True)
class Model:
    """What the acknowledged answers say the card holds: counters and the taxi EFs."""

    counters: dict[str, int]
    tickets: int  # the taxi counter EF 0002
    rides: int  # records in the taxi record EF 0003


@dataclass(frozen=True, slots=True)
class Step:
    """One APDU of the traffic and how its answer changes the model."""

    apdu: bytes | Callable[[bytes], bytes]  # a callable makes it from the last challenge
    counter: str | None = None  # the counter a VERIFY / EXTERNAL AUTHENTICATE spends
    right: bool = False  # ... with the right value
    tickets: int = 0  # what 9000 does to the ticket counter
    rides: int = 0  # ... and to the number of rides


def _key1_mac(right: bool) -> Callable[[bytes], bytes]:
    def answer(challenge: bytes) -> bytes:
        code = cmac.CMAC(AES(TAXI_KEY1))
        code.update(challenge)
        mac = code.finalize() if right else bytes(16)
        return bytes.fromhex("0082008110") + mac

    return answer


GET_CHALLENGE = bytes.fromhex("0084000010")
MAX_TRIES = {"auth": 3, "taxi:0011": 3, "taxi:key1": 5}


def _operations(rng: random.Random) -> list[Step]:
    """One operation of a user of the card (a few APDUs)."""
    kind = rng.choice(["auth", "auth", "taxi-pin", "ride", "ride", "refund-read", "read"])
    if kind == "auth":
        right = rng.random() < 0.4
        value = RIGHT_AUTH if right else WRONG_AUTH
        return [Step(SELECT_JPKI), Step(SELECT_AUTH_PIN), Step(verify(value), "auth", right)]
    if kind == "taxi-pin":
        right = rng.random() < 0.4
        value = TAXI_PIN if right else b"0000"
        return [Step(SELECT_TAXI), Step(verify(value, 0x91), "taxi:0011", right)]
    if kind == "ride":  # authenticate with key 1, then use a ticket and record the ride
        right = rng.random() < 0.8
        steps = [Step(SELECT_TAXI), Step(GET_CHALLENGE), Step(_key1_mac(right), "taxi:key1", right)]
        if right:
            steps += [
                Step(bytes.fromhex("003001140101"), tickets=-1),
                Step(bytes.fromhex("00E2001804") + rng.randbytes(4), rides=1),
            ]
        return steps
    if kind == "refund-read":
        return [Step(SELECT_TAXI), Step(bytes.fromhex("00B2011400"))]
    return [Step(SELECT_JPKI), Step(bytes.fromhex("00A4020C020006")),
            Step(bytes.fromhex("00B0000004"))]  # fmt: skip


def _on_disk(state: Path) -> Model:
    counters = {p.name: p.remaining for p in read_pin_status(state) if p.name in MAX_TRIES}
    files = next(app.files for app in read_free_area(state).apps if app.name == "taxi")
    tickets = int.from_bytes(decode_records(files[0x0002])[0], "big")
    return Model(counters, tickets, len(decode_records(files[0x0003])))


def _acknowledge(model: Model, step: Step, answer: bytes) -> None:
    if step.counter is not None and answer[-2] == 0x63:
        model.counters[step.counter] = answer[-1] & 0x0F
    elif step.counter is not None and answer == b"\x90\x00":
        model.counters[step.counter] = MAX_TRIES[step.counter]
    elif answer == b"\x90\x00":
        model.tickets += step.tickets
        model.rides += step.rides


def _allowed(model: Model, step: Step | None) -> Iterator[Model]:
    """The states the disk may hold: the acknowledged one, or with the command in flight
    done (a check: its try spent, or restored if the value was right)."""
    yield model
    if step is None:
        return
    if step.counter is not None and model.counters[step.counter] > 0:
        spent = dict(model.counters)
        spent[step.counter] -= 1
        yield Model(spent, model.tickets, model.rides)
        if step.right:
            restored = {**model.counters, step.counter: MAX_TRIES[step.counter]}
            yield Model(restored, model.tickets, model.rides)
    elif step.tickets or step.rides:
        yield Model(model.counters, model.tickets + step.tickets, model.rides + step.rides)


@dataclass(slots=True)
class KillReport:
    kills: int = 0
    killed_in_open: int = 0
    apdus: int = 0
    acknowledged_checks: int = 0  # VERIFY / EXTERNAL AUTHENTICATE answered before a kill
    office_resets: int = 0
    losses: list[str] = field(default_factory=list)  # what went wrong (none, we hope)


def kill_campaign(zygote: Zygote, state: Path, kills: int, seed: int) -> KillReport:
    """`kills` times: a card process serves random operations and is killed -9 at a random
    moment (in the middle of an APDU, or while it opens its state); after each kill the state
    on disk must hold every acknowledged change, the command in flight done or not, and no
    counter above what the answers allow."""
    rng = random.Random(seed)
    report = KillReport()
    zygote.card("taxi-tickets", state).close()
    model = _on_disk(state)
    while report.kills < kills:
        for name, remaining in model.counters.items():
            if remaining == 0:  # blocked: the office resets it, so the traffic goes on
                reset_pin(state, name)
                model.counters[name] = MAX_TRIES[name]
                report.office_resets += 1
        card = zygote.start("taxi-tickets", state)
        in_flight: Step | None = None
        if rng.random() < 0.1:
            time.sleep(rng.random() * 0.01)  # killed while it opens its state
            report.killed_in_open += 1
        else:
            card.ready()
            steps = [step for _ in range(rng.randint(1, 4)) for step in _operations(rng)]
            challenge = b""
            for number, step in enumerate(steps):
                apdu = step.apdu if isinstance(step.apdu, bytes) else step.apdu(challenge)
                card.send(apdu)
                report.apdus += 1
                if number == len(steps) - 1 or rng.random() < 0.08:
                    in_flight = step
                    time.sleep(rng.random() * 0.0003)
                    break
                answer = card.answer()
                if answer is None:
                    raise RuntimeError("the card process died")
                challenge = answer[:-2]
                _acknowledge(model, step, answer)
                report.acknowledged_checks += step.counter is not None
        card.kill()
        report.kills += 1
        disk = _on_disk(state)
        if disk not in list(_allowed(model, in_flight)):
            report.losses.append(f"kill {report.kills}: disk {disk}, acknowledged {model}")
        model = disk
    return report


# -- memory ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemoryReport:
    apdus: int
    cycles: int
    apdu_growth: int  # bytes traced, second half minus first half
    cycle_growth: int
    rss_kib: int


def memory_campaign(state: Path, apdus: int, cycles: int) -> MemoryReport:
    """Traced memory after half and after all of `apdus` mixed APDUs on one card, and of
    `cycles` open/close cycles: what grows between the halves would be a leak."""
    commands = [SELECT_JPKI, bytes.fromhex("00A4020C020006"), bytes.fromhex("00B0000004"),
                SELECT_AUTH_PIN, verify(RIGHT_AUTH), bytes.fromhex("0084000008"),
                bytes.fromhex("00B0000000"), bytes.fromhex("80AE000000")]  # fmt: skip
    tracemalloc.start()
    try:
        with open_card("default", state) as card:

            def run(count: int) -> int:
                for number in range(count):
                    card.transmit(commands[number % len(commands)])
                gc.collect()
                return tracemalloc.get_traced_memory()[0]

            run(min(apdus // 10, 10_000))  # caches and the first allocations
            middle = run(apdus // 2)
            apdu_growth = run(apdus - apdus // 2) - middle

        def cycle(count: int) -> int:
            for _ in range(count):
                open_card("default", state).close()
            gc.collect()
            return tracemalloc.get_traced_memory()[0]

        cycle(min(cycles // 10, 20))
        middle = cycle(cycles // 2)
        cycle_growth = cycle(cycles - cycles // 2) - middle
    finally:
        tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return MemoryReport(apdus, cycles, apdu_growth, cycle_growth, rss)


# -- invariants after every input ----------------------------------------------------------------


class RecordingStore(CardStore):
    """The card store, noting every durable write of the current input in `writes`:
    ("remaining", PIN, old, new), ("value", PIN) or ("file", FID)."""

    writes: ClassVar[list[tuple[object, ...]]] = []

    def set_remaining(self, pin: PinState, remaining: int) -> None:
        RecordingStore.writes.append(("remaining", pin.name, pin.remaining, remaining))
        super().set_remaining(pin, remaining)

    def set_value(self, pin: PinState, value: bytes) -> None:
        RecordingStore.writes.append(("value", pin.name))
        super().set_value(pin, value)

    def save_file(self, aid: bytes, fid: int, content: bytes) -> None:
        RecordingStore.writes.append(("file", fid))
        super().save_file(aid, fid, content)


CHECKS = {0x20, 0x82}  # VERIFY, EXTERNAL AUTHENTICATE: the only commands that spend a try
CHANGES = {0x24, 0x32}  # CHANGE REFERENCE DATA, CHANGE KEY: the only ones that set a value
OPENS = CHECKS  # what may open a protected object (answered 9000)


def _windows(data: bytes, size: int = 16) -> set[bytes]:
    """`size`-byte windows of `data` every `size` bytes, without filler-only ones."""
    windows = {data[i : i + size] for i in range(0, max(len(data) - size + 1, 1), size)}
    return {w for w in windows if len(set(w)) > 2}


class Invariants:
    """The card's invariants, checked after every input by `transmit`: a well-formed answer
    (never 6F00); counters written only by VERIFY / EXTERNAL AUTHENTICATE, one try spent
    before the comparison and the maximum restored only on 9000; PIN values set only by
    CHANGE REFERENCE DATA / CHANGE KEY; no protected EF's content before a PIN or key was
    verified since power-on; no private-key bytes and no PIN value in any answer."""

    def __init__(self, profile: Profile, state: Path) -> None:
        RecordingStore.writes.clear()
        self.card = open_card(profile, state, store_type=RecordingStore)
        self.inputs = 0
        self.opened = False  # a VERIFY / EXTERNAL AUTHENTICATE answered 9000 since power-on
        public: list[bytes] = []
        protected: set[bytes] = set()
        contents = []
        for build in (jpki.build, text.build, visual.build, juki.build, common.build):
            for obj in build(profile).objects.values():
                if isinstance(obj, TransparentEF):
                    contents.append(obj.data)
                    if obj.read.free:
                        public.append(obj.data)
                    else:
                        protected |= _windows(obj.data, 12)
        self.protected = {w for w in protected if not any(w in data for data in public)}
        self.secrets = set()
        assert profile.jpki is not None
        for key in (profile.jpki.auth_key, profile.jpki.sign_key):
            if key is not None:
                numbers = key.private_numbers()
                for secret in (numbers.p, numbers.q, numbers.d, numbers.dmp1, numbers.dmq1):
                    self.secrets |= _windows(secret.to_bytes((secret.bit_length() + 7) // 8))
        values = [value.encode() for value in profile.pins.values()] + [TAXI_PIN]
        self.pin_values = {v for v in values if not any(v in data for data in contents)}

    def power_cycle(self) -> None:
        self.card.power_off()
        self.card.power_on()
        self.opened = False

    def transmit(self, capdu: bytes) -> bytes:
        """Send one input; AssertionError naming the invariant it breaks."""
        RecordingStore.writes.clear()
        rapdu = self.card.transmit(capdu)
        self.inputs += 1
        ins = capdu[1] if len(capdu) > 1 else None
        assert len(rapdu) >= 2 and rapdu[-2:] != b"\x6f\x00", (capdu.hex(), rapdu.hex())
        ok = rapdu[-2:] == b"\x90\x00"
        counters = [w for w in RecordingStore.writes if w[0] == "remaining"]
        if counters:
            assert ins in CHECKS, f"{capdu.hex()} moved a counter: {counters}"
            _, _, old, new = counters[0]
            assert new == old - 1 >= 0, f"{capdu.hex()}: first counter write {counters[0]}"
            assert len(counters) == 1 or (len(counters) == 2 and ok), counters
        for write in RecordingStore.writes:
            if write[0] == "value":
                assert ins in CHANGES and ok, f"{capdu.hex()} set a PIN value: {write}"
        if ok and ins in OPENS:
            self.opened = True
        data = rapdu[:-2]
        if data and not self.opened:
            leaked = [w.hex() for w in self.protected if w in data]
            assert not leaked, f"{capdu.hex()} answered protected content {leaked[:1]}"
        assert not any(w in data for w in self.secrets), f"{capdu.hex()}: private-key bytes"
        assert not any(v in data for v in self.pin_values), f"{capdu.hex()}: a PIN value"
        return rapdu


AIDS = ["D392F000260100000001", "D3921000310001010408", "D3921000310001010402",
        "D3921000310001010401", "D3921000310001010100", "F0544158490001"]  # fmt: skip
FIDS = [0x0001, 0x0002, 0x0003, 0x0006, 0x000A, 0x000B, 0x0011, 0x0013, 0x0015, 0x0016,
        0x0017, 0x0018, 0x001A, 0x001B, 0x001C, 0x001D, 0x001E]  # fmt: skip
INSTRUCTIONS = [0xA4, 0xB0, 0x20, 0x24, 0x2A, 0x32, 0x84, 0x88, 0xB2, 0xCA, 0xC0, 0xAE,
                0xD6, 0xDC, 0xE2, 0x30, 0x82]  # fmt: skip
PIN_VALUES = [b"1234", b"5560", b"9999", b"0000", b"ABCDEF", b"123456"]


def random_input(rng: random.Random) -> bytes:
    """One structured-random input: a SELECT, a READ, a PIN check, a known INS with random
    parameters, or random bytes."""
    kind = rng.random()
    if kind < 0.15:
        aid = bytes.fromhex(rng.choice(AIDS))
        return bytes((0, 0xA4, 4, 0x0C, len(aid))) + aid
    if kind < 0.3:
        return bytes((0, 0xA4, 2, 0x0C, 2)) + rng.choice(FIDS).to_bytes(2, "big")
    if kind < 0.45:
        return bytes((0, rng.choice([0xB0, 0xB2]), rng.randrange(4), rng.randrange(256), 0))
    if kind < 0.6:
        value = rng.choice(PIN_VALUES)
        return bytes((0, 0x20, 0, rng.choice([0x80, 0x91, 0x81, 0x82]), len(value))) + value
    if kind < 0.9:
        body = rng.randbytes(rng.choice([0, 0, 1, 4, 16, 40, 260]))
        return bytes((rng.choice([0, 0x80]), rng.choice(INSTRUCTIONS))) + rng.randbytes(2) + body
    return rng.randbytes(rng.randrange(40))


def random_inputs_campaign(profile: Profile, state: Path, inputs: int, seed: int) -> int:
    """`inputs` structured-random inputs through `Invariants` (a power cycle every 50);
    returns the number checked."""
    rng = random.Random(seed)
    checker = Invariants(profile, state)
    try:
        for number in range(inputs):
            if number % 50 == 0:
                checker.power_cycle()
            checker.transmit(random_input(rng))
    finally:
        checker.card.close()
    return checker.inputs


# -- through pcscd --------------------------------------------------------------------------------

# One client's transaction: every answer is fixed when no other client's APDU comes between.
TRANSACTION = [
    (SELECT_JPKI, b"\x90\x00"),
    (SELECT_AUTH_PIN, b"\x90\x00"),
    (verify(WRONG_AUTH), b"\x63\xc2"),
    (bytes.fromhex("00200080"), b"\x63\xc2"),  # the retry count
    (verify(RIGHT_AUTH), b"\x90\x00"),
    (bytes.fromhex("00A4020C020006"), b"\x90\x00"),
    (bytes.fromhex("00B0000004"), b"JPKI\x90\x00"),
]


@dataclass(slots=True)
class ClientsReport:
    clients: int
    transactions: int = 0
    apdus: int = 0
    inconsistent: list[str] = field(default_factory=list)


def concurrent_clients(reader: str, clients: int, seconds: float) -> ClientsReport:
    """`clients` threads, each with its own PC/SC context and connection, run TRANSACTION
    inside SCardBeginTransaction / SCardEndTransaction for `seconds`; any answer other than
    the expected one is an inconsistency (another client's APDU came between)."""
    import threading

    from smartcard import scard

    report = ClientsReport(clients)
    lock = threading.Lock()
    until = time.monotonic() + seconds

    def client() -> None:
        rc, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        protocols = scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
        rc, handle, protocol = scard.SCardConnect(
            context, reader, scard.SCARD_SHARE_SHARED, protocols
        )
        try:
            while time.monotonic() < until:
                if scard.SCardBeginTransaction(handle) != scard.SCARD_S_SUCCESS:
                    raise RuntimeError("SCardBeginTransaction failed")
                answers = []
                try:
                    for apdu, _ in TRANSACTION:
                        rc, answer = scard.SCardTransmit(handle, protocol, list(apdu))
                        answers.append(bytes(answer) if rc == scard.SCARD_S_SUCCESS else b"")
                finally:
                    scard.SCardEndTransaction(handle, scard.SCARD_LEAVE_CARD)
                with lock:
                    report.transactions += 1
                    report.apdus += len(TRANSACTION)
                    for (apdu, expected), answer in zip(TRANSACTION, answers, strict=True):
                        if answer != expected:
                            report.inconsistent.append(f"{apdu.hex()}: {answer.hex()}")
        finally:
            scard.SCardDisconnect(handle, scard.SCARD_LEAVE_CARD)
            scard.SCardReleaseContext(context)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return report


def usable_after(reader: str, timeout: float) -> float | None:
    """Seconds until a SELECT through pcscd answers 9000 (None: not within `timeout`)."""
    from smartcard import scard

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        rc, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        if rc == scard.SCARD_S_SUCCESS:
            try:
                protocols = scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
                rc, handle, protocol = scard.SCardConnect(
                    context, reader, scard.SCARD_SHARE_SHARED, protocols
                )
                if rc == scard.SCARD_S_SUCCESS:
                    rc, answer = scard.SCardTransmit(handle, protocol, list(SELECT_JPKI))
                    scard.SCardDisconnect(handle, scard.SCARD_LEAVE_CARD)
                    if rc == scard.SCARD_S_SUCCESS and bytes(answer) == b"\x90\x00":
                        return time.monotonic() - start
            finally:
                scard.SCardReleaseContext(context)
        time.sleep(0.02)
    return None


def pcscd_restarts(reader: str, pid: int, restarts: int, timeout: float) -> list[float | None]:
    """Stop and start our pcscd `restarts` times; each time, the seconds from the new pcscd's
    start until the served card answers (None: not within `timeout`). Needs a pcscd this
    repository started (pcsc.owned_pcscd_pid)."""
    from pcsc import start_pcscd, stop_pcscd

    times = []
    for _ in range(restarts):
        stop_pcscd(pid)
        start = time.monotonic()
        pid = start_pcscd()
        usable = usable_after(reader, timeout - (time.monotonic() - start))
        times.append(None if usable is None else time.monotonic() - start)
    return times
