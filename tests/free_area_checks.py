"""Client-side flows of the free-area example applications, as terminals would run them.

Written from the free-area design in docs/free-area.md (ISO 7816-4 commands), not from
mynacard/apps;
each takes `send` (C-APDU bytes -> R-APDU bytes), so they run in process and through pcscd.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cardtest import Send, apdu, ok, read_ef, select, sw
from cryptography.hazmat.primitives import cmac, hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from juki_common_checks import parse_simple_tlv

from mynacard.personalize.free_area import FreeAppSpec
from mynacard.personalize.profile import Profile

# A test application with one EF of each kind and every kind of access rule.
TEST_AREA = """
[free_area]
capacity = 2048

[[free_area.apps]]
name = "bench"
aid = "F0010203040506"
description = "test application"

[[free_area.apps.files]]
fid = "0001"
type = "transparent"
size = 40
content = "00112233"
update = "always"

[[free_area.apps.files]]
fid = "0002"
type = "record"
record_size = 8
max_records = 4
records = ["0102"]
update = "always"
append = "always"

[[free_area.apps.files]]
fid = "0003"
type = "counter"
width = 2
maximum = 500
values = [10, 0]
update = "always"
decrease = "always"
increase = "always"

[[free_area.apps.files]]
fid = "0004"
type = "transparent"
size = 8
read = "pin:0011"
update = ["pin:0011", "key:1"]

[[free_area.apps.pins]]
fid = "0011"
value = "123456"
format = "[0-9]{6}"
tries = 2

[[free_area.apps.keys]]
id = 1
aes = "000102030405060708090A0B0C0D0E0F"
"""
TEST_AID = bytes.fromhex("F0010203040506")
TEST_KEY = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
SIZE = 40  # of EF 0001

LIBRARY_AID = bytes.fromhex("F04C49425241525901")
TAXI_AID = bytes.fromhex("F0544158490001")
ENTRY_AID = bytes.fromhex("F0454E5452590001")


def read_records(send: Send, sfi: int) -> list[bytes]:
    """Every record of the EF with this SFI, READ RECORD 1, 2, … until 6A83."""
    records = []
    while True:
        response = send(bytes((0x00, 0xB2, len(records) + 1, sfi << 3 | 0x04, 0x00)))
        if sw(response) == "6A83":
            return records
        records.append(ok(response))


def cmac_of(key: bytes, challenge: bytes) -> bytes:
    code = cmac.CMAC(AES(key))
    code.update(challenge)
    return code.finalize()


def external_authenticate(send: Send, number: int, key: bytes, challenge_length: int = 16) -> str:
    """GET CHALLENGE, then EXTERNAL AUTHENTICATE 00 82 00 (80|number) with AES-CMAC."""
    challenge = ok(send(bytes((0x00, 0x84, 0x00, 0x00, challenge_length))))
    assert len(challenge) == challenge_length
    return sw(send(apdu(f"008200{0x80 | number:02X}", cmac_of(key, challenge))))


def counter_step(send: Send, ins: int, amount: int, sfi: int = 2, record: int = 1) -> bytes:
    """DECREASE (30) / INCREASE (32) a counter record by `amount` (1 byte), Le 00."""
    return send(bytes((0x00, ins, record, sfi << 3 | 0x04, 0x01, amount, 0x00)))


def tickets(send: Send) -> int:
    """The taxi tickets left: counter EF 0002, record 1, read freely."""
    return int.from_bytes(ok(send(bytes.fromhex("00B2011400"))), "big")


@dataclass(frozen=True)
class Ride:
    tickets_left: int
    log_entry: bytes


def taxi_ride(send: Send, meter_key: bytes, fare: int, when: str) -> Ride:
    """A taxi meter: SELECT, authenticate with key 1, take one ticket, log the ride."""
    select(send, TAXI_AID)
    assert external_authenticate(send, 1, meter_key) == "9000"
    left = int.from_bytes(ok(counter_step(send, 0x30, 1)), "big")
    entry = when.encode("ascii") + fare.to_bytes(4, "big")  # YYYYMMDDhhmm + fare in yen
    ok(send(apdu("00E20018", entry)))  # APPEND RECORD to SFI 3
    return Ride(left, entry)


def taxi_grant(send: Send) -> dict[int, bytes]:
    """The taxi application's EF 0001 (free): 01 municipality, 02 grant, 03 valid until."""
    select(send, TAXI_AID)
    return dict(parse_simple_tlv(read_ef(send, 0x0001).rstrip(b"\xff")))


def library_patron(send: Send) -> dict[int, bytes]:
    """A library gate: SELECT and read EF 0001 with no PIN (01 municipality, 02 patron)."""
    select(send, LIBRARY_AID)
    return dict(parse_simple_tlv(read_ef(send, 0x0001).rstrip(b"\xff")))


def library_log_visit(send: Send, key: bytes, entry: bytes) -> str:
    """The library terminal authenticates with key 1 and appends a visit record to EF 0002."""
    select(send, LIBRARY_AID)
    assert external_authenticate(send, 1, key) == "9000"
    return sw(send(apdu("00E20010", entry)))


def enter_building(send: Send, public_key: rsa.RSAPublicKey) -> dict[int, bytes]:
    """A gate: read the employee record, then challenge key EF 0002 (SFI 2, P2 82)."""
    select(send, ENTRY_AID)
    employee = dict(parse_simple_tlv(read_ef(send, 0x0001).rstrip(b"\xff")))
    challenge = os.urandom(16)
    signature = ok(send(apdu("00880082", challenge, 0)))
    public_key.verify(signature, challenge, padding.PKCS1v15(), hashes.SHA256())
    return employee


def app_key(profile: Profile, app: str, number: int) -> bytes:
    spec = next(a for a in profile.free_area.apps if a.name == app)
    return next(k for k in spec.keys if k.number == number).value


def app_spec(profile: Profile, app: str) -> FreeAppSpec:
    return next(a for a in profile.free_area.apps if a.name == app)
