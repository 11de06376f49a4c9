"""The bench's reference for secure messaging on the text AP (docs/secure-messaging.md).

Written from the public description (the myna-card client), not from the emulator: a client
that opens a session and wraps commands, and the exact answers a card must give, so that an
exchange under SM can be checked byte for byte. The encryption is deterministic (the IV is
AES-ECB of the counter), so the reference predicts every byte of a wrapped answer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.ciphers.modes import CBC, ECB

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


def session_public_key(ef_0006: bytes) -> rsa.RSAPublicKey:
    """The RSA key of text EF 0006: A1 { 90 exponent, 91 modulus } (BER, any order)."""
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


def iv(key: bytes, counter: int) -> bytes:
    """IV(N) = AES-128-ECB_K(N as 16 big-endian bytes)."""
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
        cryptogram = self.public_key.encrypt(SEED_HEADER + self.seed, _OAEP)
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

    def read_binary(self, offset: int = 0, length: int = 0) -> bytes:
        """READ BINARY under SM: DO 96 00 LH LL (0 = the whole EF from `offset`), Le 65536."""
        self._next()
        body = ber_object(0x96, b"\x00" + length.to_bytes(2, "big"))
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
