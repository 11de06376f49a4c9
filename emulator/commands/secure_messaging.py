"""Secure messaging of the text AP (docs/secure-messaging.md): SET SESSION KEY (80 AE) and
the commands sent under CLA 08.

SET SESSION KEY carries an RSA-OAEP cryptogram (SHA-256, MGF1-SHA-256, empty label) of
`A0 22 80 20 <32-byte seed>` under EF 0006's key; the session key K is seed[0:16]. Every CLA 08
command then uses the next counter N (from 1): IV(N) = AES-ECB_K(N as 16 bytes) encrypts
both the command's DO 86 and the answer's. Confidentiality only: no MAC, CLA 0C is 6987.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.ciphers.modes import CBC, ECB

from ..apdu import INS, SW, CommandApdu, StatusError
from ..session import OK, Context, Handler, SecureChannel, sw
from . import files, pins, select

SM_CLASS = 0x08  # SM, no integrity check: the only one this card takes
SM_MAC_CLASS = 0x0C  # SM with a checksum: the session has no checksum key
TAG_CRYPTOGRAM = 0x86  # padding-content indicator 01 + AES-CBC cryptogram
TAG_LENGTH = 0x96  # Le of READ BINARY, in clear
PADDING_INDICATOR = 0x01
BLOCK = 16
SEED_HEADER = bytes.fromhex("A0228020")  # A0 { 80 <32-byte seed> }: an encryption key only
SEED_SIZE = 32
_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)

# What a CLA 08 command may be: its INS, the DO its data must be, the plain handler.
_COMMANDS: dict[int, tuple[int, Handler]] = {
    INS.SELECT: (TAG_CRYPTOGRAM, select.select),
    INS.VERIFY: (TAG_CRYPTOGRAM, pins.verify),
    INS.READ_BINARY: (TAG_LENGTH, files.read_binary),
}


def route(ctx: Context, apdu: CommandApdu, table: Mapping[int, Handler] | None) -> Handler | None:
    """The handler of an APDU whose class `table` routes by INS (None: no such class).

    CLA 08 / 0C come here; so does every plain command while a broken session lasts, with
    the `sm_break_blocks_plain` quirk (but SELECT by DF name, which ends the session).
    """
    if apdu.cla in (SM_CLASS, SM_MAC_CLASS):
        return secure
    if table is None:
        return None
    channel = ctx.session.channel
    if (
        channel is not None
        and channel.broken
        and ctx.quirks.sm_break_blocks_plain
        and (apdu.ins, apdu.p1) != (INS.SELECT, 0x04)
    ):
        return _session_gone
    return table.get(apdu.ins)


def _session_gone(ctx: Context, apdu: CommandApdu) -> bytes:
    raise StatusError(SW.SM_DATA_OBJECT_MISSING)


def set_session_key(ctx: Context, apdu: CommandApdu) -> bytes:
    """SET SESSION KEY: each application refuses it as measured (docs/card-spec.md §2.4);
    the text AP, after its PIN, opens a session (replacing any, broken or not)."""
    app = ctx.session.app
    if app is None:
        raise StatusError(SW.INS_NOT_SUPPORTED)
    if not app.session_key_use.granted(ctx.session.verified):
        raise StatusError(SW.SECURITY_STATUS_NOT_SATISFIED)
    key = app.session_key
    if key is None:
        raise StatusError(app.session_key_sw)
    if apdu.p1 or apdu.p2:
        raise StatusError(SW.INCORRECT_P1_P2)
    if apdu.le is not None:
        raise StatusError(SW.WRONG_LENGTH)
    cryptogram = apdu.data
    if len(cryptogram) != key.key_size // 8:
        raise StatusError(SW.WRONG_DATA)
    if int.from_bytes(cryptogram, "big") >= key.public_key().public_numbers().n:
        raise StatusError(SW.NO_PRECISE_DIAGNOSIS)
    try:
        plain = _decrypted(key, cryptogram)
    except ValueError:
        raise StatusError(SW.WRONG_DATA) from None
    if len(plain) != len(SEED_HEADER) + SEED_SIZE or not plain.startswith(SEED_HEADER):
        raise StatusError(SW.WRONG_DATA)
    ctx.session.channel = SecureChannel(plain[len(SEED_HEADER) : len(SEED_HEADER) + 16])
    return OK


@functools.lru_cache(maxsize=64)
def _decrypted(key: rsa.RSAPrivateKey, cryptogram: bytes) -> bytes:
    """RSA-OAEP decryption (ValueError if it fails). It depends on the cryptogram alone, so
    one sent again (a client that replays its SET SESSION KEY, as the bench does) is looked
    up, not decrypted again: the private operation costs about 0.4 ms."""
    return key.decrypt(cryptogram, _OAEP)


def secure(ctx: Context, apdu: CommandApdu) -> bytes:
    """A CLA 08 / 0C command: unwrapped, run as its plain self, the answer wrapped."""
    channel = ctx.session.channel
    if channel is None:
        no_session = SW.SECURE_MESSAGING_NOT_SUPPORTED if apdu.ins == INS.SELECT else None
        raise StatusError(no_session or SW.SM_DATA_OBJECT_MISSING)
    if channel.broken:
        raise StatusError(SW.SM_DATA_OBJECT_MISSING)
    if apdu.cla == SM_MAC_CLASS:
        raise StatusError(SW.SM_OBJECTS_MISSING)  # a checksum: this session has no key for it
    counter = channel.counter
    channel.counter += 1  # every SM command moves it, refused ones included
    command = _COMMANDS.get(apdu.ins)
    if command is None:
        raise StatusError(SW.SECURE_MESSAGING_NOT_SUPPORTED)
    tag, handler = command
    value = _single_object(apdu.data, tag)
    if value is None:
        return _break(channel)
    if tag == TAG_LENGTH:
        le = _length(value)
        if le is None:
            return _break(channel)
        plain = CommandApdu(0x00, apdu.ins, apdu.p1, apdu.p2, le=le, extended=True)
    else:
        data = _decrypt(channel.key, counter, value)
        if data is None:
            return _break(channel)
        plain = CommandApdu(0x00, apdu.ins, apdu.p1, apdu.p2, data)
    answer = _run(handler, ctx, plain)
    if answer[-2:] != OK or len(answer) == 2:
        return answer
    return _wrapped(channel.key, counter, answer[:-2]) + OK


def _run(handler: Handler, ctx: Context, apdu: CommandApdu) -> bytes:
    try:
        return handler(ctx, apdu)
    except StatusError as error:
        return sw(error.sw)


def _break(channel: SecureChannel) -> bytes:
    """A wrong counter or a malformed body: 6988, and the session is gone (69FC after)."""
    channel.broken = True
    return sw(SW.SM_OBJECTS_INCORRECT)


def _single_object(data: bytes, tag: int) -> bytes | None:
    """The value of `data` if it is exactly one BER-TLV object with the one-byte `tag`
    (short or long length form), else None."""
    if len(data) < 2 or data[0] != tag:
        return None
    first = data[1]
    if first < 0x80:
        length, start = first, 2
    elif first in (0x81, 0x82) and len(data) >= 2 + (first & 0x7F):
        size = first & 0x7F
        length, start = int.from_bytes(data[2 : 2 + size], "big"), 2 + size
    else:
        return None
    return data[start:] if len(data) == start + length else None


def _length(value: bytes) -> int | None:
    """DO 96's Le: 00 LH LL as measured (also LH LL or one byte); 0 = to the end of the EF."""
    if not 1 <= len(value) <= 3 or (len(value) == 3 and value[0]):
        return None
    return int.from_bytes(value, "big") or 65536


@functools.lru_cache(maxsize=256)
def _cipher_iv(key: bytes, counter: int) -> bytes:
    """IV(N) = AES-ECB_K(N as 16 bytes); kept for the last few keys and counters."""
    encryptor = Cipher(AES(key), ECB()).encryptor()
    return encryptor.update(counter.to_bytes(BLOCK, "big")) + encryptor.finalize()


def _decrypt(key: bytes, counter: int, value: bytes) -> bytes | None:
    """DO 86's plaintext: indicator 01, AES-CBC under IV(counter), ISO padding removed."""
    body = value[1:]
    if not value or value[0] != PADDING_INDICATOR or not body or len(body) % BLOCK:
        return None
    decryptor = Cipher(AES(key), CBC(_cipher_iv(key, counter))).decryptor()
    padded = (decryptor.update(body) + decryptor.finalize()).rstrip(b"\x00")
    return padded[:-1] if padded.endswith(b"\x80") else None


def encrypt(key: bytes, counter: int, data: bytes) -> bytes:
    """ISO/IEC 7816-4 padding (always added), then AES-CBC under IV(counter)."""
    padded = data + b"\x80" + bytes(-(len(data) + 1) % BLOCK)
    encryptor = Cipher(AES(key), CBC(_cipher_iv(key, counter))).encryptor()
    return encryptor.update(padded) + encryptor.finalize()


def _wrapped(key: bytes, counter: int, data: bytes) -> bytes:
    """An answer's data as DO 86: 86 L 01 || cryptogram, length in the shortest form."""
    value = bytes((PADDING_INDICATOR,)) + encrypt(key, counter, data)
    return bytes((TAG_CRYPTOGRAM,)) + _ber_length(len(value)) + value


def _ber_length(length: int) -> bytes:
    if length < 0x80:
        return bytes((length,))
    size = 1 if length < 0x100 else 2
    return bytes((0x80 | size,)) + length.to_bytes(size, "big")
