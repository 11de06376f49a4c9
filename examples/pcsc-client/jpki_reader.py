"""A small PC/SC client, the kind of code these tests are for: it reads the JPKI
authentication certificate of the card in a reader with pyscard."""

from __future__ import annotations

import contextlib

from smartcard.Exceptions import CardConnectionException, NoCardException
from smartcard.System import readers

SELECT_JPKI = bytes.fromhex("00A4040C0AD392F000260100000001")
SELECT_AUTH_CERT = bytes.fromhex("00A4020C02000A")


class CardRemovedError(Exception):
    """The card left the reader before the certificate was read."""


def transmit(connection, command: bytes) -> tuple[bytes, int]:  # type: ignore[no-untyped-def]
    """Send `command`; collect an answer a T=0 card gives in pieces (61xx: GET RESPONSE)."""
    data, sw1, sw2 = connection.transmit(list(command))
    while sw1 == 0x61:
        more, sw1, sw2 = connection.transmit([0x00, 0xC0, 0x00, 0x00, sw2])
        data += more
    return bytes(data), sw1 << 8 | sw2


def read_auth_certificate(reader_name: str) -> bytes:
    """The DER authentication certificate of the card in `reader_name`."""
    reader = next(r for r in readers() if str(r) == reader_name)
    connection = reader.createConnection()
    try:
        connection.connect()
        for command in (SELECT_JPKI, SELECT_AUTH_CERT):
            if transmit(connection, command)[1] != 0x9000:
                raise ValueError(f"{command.hex()} failed: not a JPKI card?")
        head, _ = transmit(connection, bytes.fromhex("00B0000004"))  # 30 82 LL LL
        length = 4 + int.from_bytes(head[2:4], "big")
        # One extended READ BINARY for the whole certificate (Le of 3 bytes).
        certificate, sw = transmit(connection, b"\x00\xb0\x00\x00\x00" + length.to_bytes(2, "big"))
        if sw != 0x9000 or len(certificate) != length:
            raise ValueError(f"READ BINARY answered {sw:04X} with {len(certificate)} bytes")
        return certificate
    except (CardConnectionException, NoCardException) as error:
        raise CardRemovedError(f"the card left {reader_name!r}: {error}") from error
    finally:
        with contextlib.suppress(CardConnectionException):
            connection.disconnect()
