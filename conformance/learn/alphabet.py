"""The abstract input alphabet of one application, and the APDUs behind each letter.

Letters: select the application; read one EF of each access class (SELECT EF, then READ
BINARY or READ RECORD); per PIN whose value is known the retry query, the right value and
a wrong one; sign with each signing key; INTERNAL AUTHENTICATE with each such key; GET
CHALLENGE; warm reset and power cycle.  On a target that is not disposable a wrong PIN is
followed at once by the right one (`restore`), so the counter is back before the next letter.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..apdu import INS, Apdu, select_aid, select_ef, verify
from ..model import SHA256_DIGEST_INFO
from ..spec import CATALOGUE, AppSpec, EfSpec, KeyUse, Structure
from ..transcript import Action

APP_NAMES = {"jpki": 0, "text": 1, "visual": 2, "juki": 3, "common": 4}
CHALLENGE = bytes(range(1, 17))  # the INTERNAL AUTHENTICATE challenge (any 16 bytes do)
DIGEST_INFO = SHA256_DIGEST_INFO + hashlib.sha256(b"mynacard learn").digest()

Step = tuple[Action, bytes]


class AlphabetError(ValueError):
    """An application name or PIN set the alphabet cannot be made from."""


@dataclass(frozen=True)
class Letter:
    """One abstract input: its name (AALpy's letter) and what it sends, in order."""

    name: str
    steps: tuple[Step, ...]


def find_app(name: str, catalogue: tuple[AppSpec, ...]) -> AppSpec:
    """`jpki`, `text`, `visual`, `juki`, `common` or `free:NAME` (a profile's free-area app)."""
    if name in APP_NAMES:
        return CATALOGUE[APP_NAMES[name]]
    kind, _, free = name.partition(":")
    if kind == "free" and free:
        for app in catalogue:
            if app.free_area and app.name == f"free area: {free}":
                return app
        names = [a.name.removeprefix("free area: ") for a in catalogue if a.free_area]
        raise AlphabetError(
            f"--app {name}: the profile installs no free-area application {free!r} "
            f"(it has: {', '.join(names) or 'none'})"
        )
    raise AlphabetError(f"--app {name}: expected jpki, text, visual, juki, common or free:NAME")


def _apdu(command: bytes) -> Step:
    return (Action.APDU, command)


def _ef_classes(app: AppSpec) -> list[EfSpec]:
    """One EF per access class (read rule and structure), the first of each."""
    seen: dict[tuple[frozenset[int], Structure], EfSpec] = {}
    for ef in app.efs:
        seen.setdefault((ef.read, ef.structure), ef)
    return list(seen.values())


def _read(ef: EfSpec) -> Letter:
    if ef.structure is Structure.TRANSPARENT:
        command = Apdu(0x00, INS.READ_BINARY, 0, 0, le=16).encode()
    else:
        command = Apdu(0x00, INS.READ_RECORD, 1, 0x04, le=256).encode()
    return Letter(f"read {ef.fid:04X}", (_apdu(select_ef(ef.fid)), _apdu(command)))


def wrong_value(right: bytes) -> bytes:
    """A value of the same length and alphabet that is not `right`: its last character
    another digit or letter."""
    last = right[-1]
    letter = ord("A") <= last <= ord("Z")
    swapped = ord("A") + (last - ord("A") + 1) % 26 if letter else last ^ 1  # digits stay digits
    return right[:-1] + bytes((swapped,))


def alphabet(app: AppSpec, pins: dict[int, bytes], *, restore: bool) -> list[Letter]:
    """The letters for `app`; `pins` are the known PIN values by FID (PINs without one get
    no letters); `restore`: a wrong VERIFY is followed by the right one."""
    letters = [Letter("select", (_apdu(select_aid(app.aid)),))]
    letters += [_read(ef) for ef in _ef_classes(app)]
    for pin in app.pins:
        right = pins.get(pin.fid)
        if right is None:
            continue
        label = pin.name or f"PIN {pin.fid:04X}"
        p2 = 0x80 | pin.fid
        query = _apdu(verify(b"", p2))
        wrong: tuple[Step, ...] = (_apdu(verify(wrong_value(right), p2)),)
        if restore:
            wrong = (query, *wrong, _apdu(verify(right, p2)))
        letters += [
            Letter(f"query {label}", (query,)),
            Letter(f"verify {label}", (_apdu(verify(right, p2)),)),
            Letter(f"wrong {label}", wrong),
        ]
    for key in app.keys:
        p2 = 0x80 | key.fid
        if key.how is KeyUse.SIGN:
            command = Apdu(0x80, INS.COMPUTE_SIGNATURE, 0x00, p2, DIGEST_INFO, le=256).encode()
            letters.append(Letter(f"sign {key.fid:04X}", (_apdu(command),)))
        else:
            command = Apdu(0x00, INS.INTERNAL_AUTHENTICATE, 0, p2, CHALLENGE, le=256).encode()
            letters.append(Letter(f"authenticate {key.fid:04X}", (_apdu(command),)))
    challenge = Apdu(0x00, INS.GET_CHALLENGE, 0, 0, le=8).encode()
    letters += [
        Letter("challenge", (_apdu(challenge),)),
        Letter("reset", ((Action.RESET, b""),)),
        Letter("power", ((Action.POWER, b""),)),
    ]
    return letters
