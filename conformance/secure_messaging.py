"""The bench's reference for secure messaging on the text AP (docs/secure-messaging.md).

Written from the public description (the myna-card client), not from the emulator: a client
that opens a session and wraps commands, and the exact answers a card must give, so that an
exchange under SM can be checked byte for byte. The encryption is deterministic (the IV is
AES-ECB of the counter), so the reference predicts every byte of a wrapped answer.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.ciphers.modes import CBC, ECB

from . import model as _model
from .apdu import Apdu, MalformedApdu, select_aid, select_ef
from .spec import TEXT
from .transcript import Pattern

if TYPE_CHECKING:
    from .machine import ConformanceMachine
    from .model import CardModel, Expectation

SET_SESSION_KEY = bytes.fromhex("80AE0000")
SEED_HEADER = bytes.fromhex("A0228020")
SEED_SIZE = 32
BLOCK = 16
OK = b"\x90\x00"
WRONG_COUNTER = b"\x69\x88"  # 6988: the session breaks
SESSION_GONE = b"\x69\xfc"  # 69FC: every SM command after a break, or with no session
NO_SM_SELECT = b"\x68\x82"  # 6882: an SM SELECT with no session
MAC_CLASS = b"\x69\x87"  # 6987: CLA 0C in a session
_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


@functools.lru_cache(maxsize=16)
def session_public_key(ef_0006: bytes) -> rsa.RSAPublicKey:
    """The RSA key of text EF 0006: A1 { 90 exponent, 91 modulus } (BER, any order); made
    once for the same EF content."""
    if not ef_0006 or ef_0006[0] != 0xA1:
        raise ValueError("EF 0006 does not start with A1")
    length, start = _length(ef_0006, 1)
    fields: dict[int, int] = {}
    position, end = start, start + length
    while position < end:
        tag = ef_0006[position]
        size, value_start = _length(ef_0006, position + 1)
        fields[tag] = int.from_bytes(ef_0006[value_start : value_start + size], "big")
        position = value_start + size
    return rsa.RSAPublicNumbers(fields[0x90], fields[0x91]).public_key()


def _length(data: bytes, position: int) -> tuple[int, int]:
    """A BER length at `position`: (length, where the value starts)."""
    first = data[position]
    if first < 0x80:
        return first, position + 1
    size = first & 0x7F
    return int.from_bytes(data[position + 1 : position + 1 + size], "big"), position + 1 + size


@functools.lru_cache(maxsize=256)
def iv(key: bytes, counter: int) -> bytes:
    """IV(N) = AES-128-ECB_K(N as 16 big-endian bytes), kept for the last few keys and N."""
    encryptor = Cipher(AES(key), ECB()).encryptor()
    return encryptor.update(counter.to_bytes(BLOCK, "big")) + encryptor.finalize()


def pad(data: bytes) -> bytes:
    """ISO/IEC 7816-4 padding, always added: 80 then 00s to a multiple of 16."""
    return data + b"\x80" + bytes(-(len(data) + 1) % BLOCK)


def encrypt(key: bytes, counter: int, data: bytes) -> bytes:
    encryptor = Cipher(AES(key), CBC(iv(key, counter))).encryptor()
    return encryptor.update(pad(data)) + encryptor.finalize()


def decrypt(key: bytes, counter: int, cryptogram: bytes) -> bytes:
    """The plaintext of a cryptogram; ValueError if the padding is not there."""
    decryptor = Cipher(AES(key), CBC(iv(key, counter))).decryptor()
    padded = (decryptor.update(cryptogram) + decryptor.finalize()).rstrip(b"\x00")
    if not padded.endswith(b"\x80"):
        raise ValueError("no ISO padding: wrong key or counter")
    return padded[:-1]


def ber_object(tag: int, value: bytes) -> bytes:
    """A one-byte-tag BER-TLV object, its length in the shortest form."""
    n = len(value)
    if n < 0x80:
        length = bytes((n,))
    elif n < 0x100:
        length = bytes((0x81, n))
    else:
        length = b"\x82" + n.to_bytes(2, "big")
    return bytes((tag,)) + length + value


def wrapped_answer(key: bytes, counter: int, data: bytes) -> bytes:
    """What the card must answer to a READ BINARY under SM that returned `data`."""
    return ber_object(0x86, b"\x01" + encrypt(key, counter, data)) + OK


@dataclass
class SmClient:
    """One session: SET SESSION KEY, then commands under CLA 08, each with the next counter.

    `last` is the counter of the last command built, the one its answer is encrypted under.
    """

    public_key: rsa.RSAPublicKey
    seed: bytes = b""
    counter: int = 1
    last: int = 0

    def __post_init__(self) -> None:
        self.seed = self.seed or os.urandom(SEED_SIZE)
        if len(self.seed) != SEED_SIZE:
            raise ValueError(f"the seed is {SEED_SIZE} bytes")

    @property
    def key(self) -> bytes:
        """The session key: the first 16 bytes of the seed, used as they are."""
        return self.seed[:16]

    def open(self) -> bytes:
        """SET SESSION KEY (extended Lc, no Le); the counter starts again at 1."""
        self.counter = 1
        numbers = self.public_key.public_numbers()
        cryptogram = _sealed(numbers.n, numbers.e, SEED_HEADER + self.seed)
        return SET_SESSION_KEY + b"\x00" + len(cryptogram).to_bytes(2, "big") + cryptogram

    def _next(self) -> int:
        self.last, self.counter = self.counter, self.counter + 1
        return self.last

    def _protected(self, ins: int, p1: int, p2: int, plain: bytes) -> bytes:
        body = ber_object(0x86, b"\x01" + encrypt(self.key, self._next(), plain))
        return bytes((0x08, ins, p1, p2, len(body))) + body

    def verify(self, p2: int, secret: bytes) -> bytes:
        """VERIFY under SM: P2 = 80|SFI (0x94 for 照合番号A)."""
        return self._protected(0x20, 0x00, p2, secret)

    def select_ef(self, fid: int) -> bytes:
        return self._protected(0xA4, 0x02, 0x0C, fid.to_bytes(2, "big"))

    def read_binary(self, offset: int = 0, length: int = 0, *, long_form: bool = False) -> bytes:
        """READ BINARY under SM: DO 96 00 LH LL (0 = the whole EF from `offset`), Le 65536;
        `long_form` writes the DO's length as 81 03 (BER allows it)."""
        self._next()
        le = b"\x00" + length.to_bytes(2, "big")
        body = b"\x96\x81\x03" + le if long_form else ber_object(0x96, le)
        header = bytes((0x08, 0xB0, offset >> 8, offset & 0xFF))
        return header + b"\x00" + len(body).to_bytes(2, "big") + body + b"\x00\x00"

    def unwrap(self, response: bytes) -> bytes:
        """The plaintext of a wrapped 9000 answer to the last command; ValueError otherwise."""
        if response[-2:] != OK:
            raise ValueError(f"SW {response[-2:].hex().upper()}")
        body = response[:-2]
        if not body:
            return b""
        if body[0] != 0x86:
            raise ValueError("the answer is not DO 86")
        length, start = _length(body, 1)
        value = body[start : start + length]
        if start + length != len(body) or value[:1] != b"\x01":
            raise ValueError("DO 86 malformed")
        return decrypt(self.key, self.last, value[1:])


@functools.lru_cache(maxsize=256)
def _sealed(modulus: int, exponent: int, plain: bytes) -> bytes:
    """RSA-OAEP of `plain`, made once per key and plaintext: OAEP's random seed changes
    nothing the card must answer, and a cryptogram sent again (as by a client that replays
    its SET SESSION KEY) lets the card skip the private operation."""
    public_key = rsa.RSAPublicNumbers(exponent, modulus).public_key()
    return public_key.encrypt(plain, _OAEP)


def describe(client: SmClient, command: bytes, response: bytes) -> str | None:
    """A transcript comment with the plaintext of an SM exchange (None if not one)."""
    if not command or command[0] != 0x08:
        return None
    body = command[5:] if len(command) > 5 and command[4] else command[7:-2]
    try:
        if body[:1] == b"\x86":
            length, start = _length(body, 1)
            plain = decrypt(client.key, client.last, body[start + 1 : start + length])
            sent = f"sent {plain.hex().upper() or '(empty)'}"
        else:
            sent = f"asked {body.hex().upper()}"
    except (ValueError, IndexError):
        sent = "sent a body that does not decrypt"
    try:
        answer = client.unwrap(response)
        got = f"got {answer.hex().upper() or 'no data'} 9000"
    except ValueError as error:
        got = f"got {error}"
    return f"SM N={client.last}: {sent}; {got}"


# -- the reference model: what the card must answer under SM ------------------------------

SEEDS: dict[bytes, bytes] = {}  # SET SESSION KEY commands the bench made -> their seeds


@dataclass
class SmState:
    """The session the card must hold: its key, the counter of the next SM command."""

    key: bytes
    counter: int = 1
    broken: bool = False


def expect(model: CardModel, command: bytes, plain: Callable[[bytes], Expectation]) -> Expectation:
    """The model's expectation of `command` with secure messaging taken into account:
    `plain` is the model without it (which knows 6882/69FC for SM with no session)."""
    if len(command) < 4:
        return plain(command)
    cla, ins, p1 = command[0], command[1], command[2]
    state = model.session.secure
    if cla in (0x08, 0x0C) and state is not None:
        return _protected(model, state, command, plain)
    base = plain(command)
    if (cla, ins) == (0x80, 0xAE):
        return _set_session_key(model, command, base)
    if (cla, ins, p1) == (0x00, 0xA4, 0x04) and state is not None:
        return _ending_on_success(model, base)
    return base


def _set_session_key(model: CardModel, command: bytes, base: Expectation) -> Expectation:
    """9000 and a new session when the text AP takes a key (its refusals match 6A80) and the
    bench made this cryptogram; otherwise what the model says, and any session stays."""
    seed = SEEDS.get(command)
    if seed is None or not base.pattern.matches(b"\x6a\x80"):
        return base

    def effect(response: bytes) -> None:
        if response == OK:
            model.session.secure = SmState(seed[:16])

    note = f"SET SESSION KEY: a seed of {SEED_SIZE} bytes, K = its first 16; N starts at 1"
    return replace(base, pattern=Pattern.exact(OK), effect=effect, note=note)


def _ending_on_success(model: CardModel, base: Expectation) -> Expectation:
    """A SELECT of an application ends the session when it succeeds."""

    def effect(response: bytes) -> None:
        if response[-2:] == OK:
            model.session.secure = None
        if base.effect is not None:
            base.effect(response)

    return replace(base, effect=effect)


def _protected(
    model: CardModel, state: SmState, command: bytes, plain: Callable[[bytes], Expectation]
) -> Expectation:
    """A CLA 08 / 0C command in a session (docs/secure-messaging.md, decisions.md #42-#46)."""
    try:
        Apdu.parse(command)
    except MalformedApdu:
        return plain(command)  # 6700: the card parses before anything else
    if state.broken:
        return _status(SESSION_GONE)
    if command[0] == 0x0C:
        return _status(MAC_CLASS)
    counter = state.counter
    inner = _inner_command(state.key, counter, command)

    def moved(response: bytes) -> None:
        state.counter = counter + 1

    if inner is None:  # a malformed body or a wrong counter

        def broke(response: bytes) -> None:
            state.counter, state.broken = counter + 1, True

        return _status(WRONG_COUNTER, broke, f"SM N={counter}: does not decrypt: 6988, broken")
    if inner == b"":
        return _status(NO_SM_SELECT, moved, f"SM N={counter}: not an SM instruction")
    base = plain(inner)

    def effect(response: bytes) -> None:
        moved(response)
        if base.effect is not None:
            base.effect(_plain_answer(state.key, counter, response))

    note = f"SM N={counter}: {_shown(inner)}"
    if command[1] != 0xB0:  # VERIFY and SELECT answer their plain status word
        return replace(base, effect=effect, note=note, observed=inner)
    exact = _exact(base.pattern)
    if exact is not None and exact[-2:] == OK:
        answer = wrapped_answer(state.key, counter, exact[:-2])
        shown = exact[:-2].hex().upper() or "no data"
        return replace(
            base,
            pattern=Pattern.exact(answer),
            effect=effect,
            note=f"{note} -> {shown} 9000",
            observed=inner,
        )

    def check(response: bytes) -> str | None:
        return base.problem(_plain_answer(state.key, counter, response))

    return replace(
        base, pattern=Pattern("[*]"), effect=effect, check=check, note=note, observed=inner
    )


def _inner_command(key: bytes, counter: int, command: bytes) -> bytes | None:
    """The plain command a CLA 08 command stands for; b"" for an INS SM does not carry, None
    for a body the card must refuse with 6988 (not one DO, the wrong one, a wrong counter)."""
    header, ins = command[1:4], command[1]
    tag = {0xA4: 0x86, 0x20: 0x86, 0xB0: 0x96}.get(ins)
    if tag is None:
        return b""
    body = command[7:-2] if len(command) > 5 and command[4] == 0 else command[5:]
    if len(body) < 2 or body[0] != tag:
        return None
    try:
        length, start = _length(body, 1)
    except IndexError:
        return None
    value = body[start:]
    if len(value) != length:
        return None
    if tag == 0x96:
        if not 1 <= len(value) <= 3 or (len(value) == 3 and value[0]):
            return None
        le = int.from_bytes(value, "big") or 65536
        return b"\x00" + header + b"\x00" + (le & 0xFFFF).to_bytes(2, "big")
    if value[:1] != b"\x01" or len(value) == 1 or (len(value) - 1) % BLOCK:
        return None
    try:
        data = decrypt(key, counter, value[1:])
    except ValueError:
        return None
    return b"\x00" + header + (bytes((len(data),)) + data if data else b"")


def _plain_answer(key: bytes, counter: int, response: bytes) -> bytes:
    """A wrapped READ answer as its plain self (for the plain model's effects and checks)."""
    if response[-2:] != OK or len(response) == 2 or response[0] != 0x86:
        return response
    try:
        length, start = _length(response, 1)
        value = response[start : start + length]
        return decrypt(key, counter, value[1:]) + OK
    except (ValueError, IndexError):
        return response


def _exact(pattern: Pattern) -> bytes | None:
    """The one response a pattern allows, if it allows exactly one."""
    text = pattern.text.replace(" ", "")
    if not text or any(c not in "0123456789ABCDEFabcdef" for c in text):
        return None
    return bytes.fromhex(text)


def _shown(inner: bytes) -> str:
    """The plain command for a transcript comment, with a VERIFY's secret masked."""
    if inner[1] == 0x20:
        return f"VERIFY P2={inner[3]:02X} with a {len(inner) - 5}-byte secret (masked)"
    return inner.hex().upper()


def _status(
    sw: bytes, effect: Callable[[bytes], None] | None = None, note: str = ""
) -> Expectation:
    return _model.Expectation(Pattern.exact(sw), "secure messaging", effect, note=note)


def session_rule(machine: ConformanceMachine, seed: bytes, steps: list[str]) -> None:
    """The bench's SM session: the text PIN in clear, SET SESSION KEY, then `steps` (SM
    commands with the right counter, a skipped counter, CLA 0C, plain commands between, a
    new key, the AP selected again), each answer checked byte for byte by `expect`."""
    model = machine.bench.model
    machine.enter(TEXT)
    machine.log_in(TEXT, frozenset({0x0011}))
    if not model.is_verified(TEXT, 0x0011):
        return
    machine.send(select_ef(0x0006))
    answer = machine.send(Apdu(0x00, 0xB0, 0, 0, le=65536, extended=True).encode())
    if answer is None or answer[-2:] != OK:
        return
    client = _opened(machine, SmClient(session_public_key(answer[:-2]), seed))
    code_a = TEXT.pin(0x0014)
    for step in steps:
        if step == "verify-a" and code_a is not None and model.value(TEXT, code_a):
            machine.send(client.verify(0x94, model.value(TEXT, code_a) or b""))
        elif step.startswith("select-"):
            machine.send(client.select_ef(int(step[7:], 16)))
        elif step == "read":
            machine.send(client.read_binary())
        elif step == "read-long-form":
            machine.send(client.read_binary(long_form=True))
        elif step == "le-high-byte":  # DO 96 01 0000: a 3-byte Le starts with 00, 6988
            command = client.read_binary()
            machine.send(command[:9] + b"\x01" + command[10:])
        elif step == "trailing-byte":  # DO 96 02 0000, then one byte more: not one DO, 6988
            command = client.read_binary()
            machine.send(command[:8] + b"\x02" + command[9:])
        elif step == "le-four-bytes":  # DO 96 04 00000000: an Le of 4 bytes, 6988
            command = client.read_binary()
            machine.send(command[:5] + b"\x00\x06\x96\x04\x00" + command[9:])
        elif step == "other-tag":  # DO 86 where READ BINARY takes DO 96: the wrong DO, 6988
            command = client.read_binary()
            machine.send(command[:7] + b"\x86" + command[8:])
        elif step == "skip-counter":
            client.counter += 1
            machine.send(client.select_ef(0x0001))
        elif step == "mac-class":
            machine.send(b"\x0c" + client.select_ef(0x0001)[1:])
            client.counter -= 1
        elif step == "plain":
            machine.send(select_ef(0x0002))
        elif step == "reopen":
            client = _opened(machine, SmClient(client.public_key, client.seed[::-1]))
        elif step == "reselect-ap":
            machine.send(select_aid(TEXT.aid))


STEPS = (
    "verify-a",
    "select-0001",
    "select-0002",
    "select-0099",
    "read",
    "read-long-form",
    "le-high-byte",
    "trailing-byte",
    "le-four-bytes",
    "other-tag",
    "skip-counter",
    "mac-class",
    "plain",
    "reopen",
    "reselect-ap",
)


def _opened(machine: ConformanceMachine, client: SmClient) -> SmClient:
    command = client.open()
    SEEDS[command] = client.seed
    machine.send(command)
    return client
