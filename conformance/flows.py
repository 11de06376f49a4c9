"""The client flows of docs/card-spec.md §12 as APDU scripts, and their golden transcripts.

Each flow is what one anchor client sends (OpenSC, the myna CLI, JSA-style reads).
`record_flow` runs a flow against a target and writes each answer as a pattern that keeps
what every card with the default profile's PINs answers and masks what is card-specific
(certificate bodies, signatures, personal data).  The shipped transcripts in
`conformance/golden/` are made with

    python -m mynacard.conformance.flows conformance/golden

against the emulator with the `default` profile, and must replay green on it.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .apdu import INS, Apdu, read_binary, select_aid, select_ef, verify
from .model import SHA256_DIGEST_INFO
from .spec import JPKI, TEXT, VISUAL
from .targets import Target
from .transcript import Action, Exchange, Pattern, format_transcript

GOLDEN_DIR = Path(str(resources.files("mynacard.conformance") / "golden"))

# The default profile's PINs (profiles/default.toml) and derived 照合番号A (its My Number).
AUTH_PIN = b"1234"
SIGN_PIN = b"ABC123"
TEXT_PIN = b"1234"


@dataclass(frozen=True)
class Step:
    """One command and how much of its answer is the same on every card: `keep` bytes of
    data (None: all of it), the rest masked with its length (`exact_length`) or not."""

    command: bytes
    keep: int | None = None
    exact_length: bool = True
    note: str = ""


Flow = Callable[[Callable[[Step], bytes]], Iterator[Step]]


def _sign_input(message: bytes) -> bytes:
    return SHA256_DIGEST_INFO + hashlib.sha256(message).digest()


def _sign(data: bytes) -> bytes:
    return Apdu(0x80, INS.COMPUTE_SIGNATURE, 0x00, 0x80, data, le=256).encode()


def _read_certificate(send: Callable[[Step], bytes], fid: int, probe: int, chunk: int) -> None:
    """SELECT, a `probe`-byte header read (30 82 hh ll), then `chunk`-byte reads to the end
    of the DER, as OpenSC (probe 4, chunk 256) and the myna CLI (probe 7) do."""
    send(Step(select_ef(fid)))
    header = send(Step(read_binary(0, probe), keep=2, note="30 82 + DER length"))
    size = int.from_bytes(header[2:4], "big") + 4
    offset = probe if probe == 7 else 0
    while offset < size:
        length = min(chunk, size - offset)
        send(Step(read_binary(offset, length), keep=0))
        offset += length


def opensc(send: Callable[[Step], bytes]) -> Iterator[Step]:
    """OpenSC's jpki driver: bind, PIN counters, certificates, both keys' signatures, logout."""
    yield Step(select_aid(JPKI.aid), note="card-jpki.c match by AID")
    for fid in (0x0018, 0x001B):
        yield Step(select_ef(fid))
        yield Step(verify(b""), note="GET_INFO: tries left")
    for fid in (0x000A, 0x000B, 0x0002):
        _read_certificate(send, fid, probe=4, chunk=256)
    yield Step(select_ef(0x0001))
    yield Step(read_binary(0, 4), note="private certificate without the PIN")
    yield Step(select_ef(0x001B))
    yield Step(verify(SIGN_PIN))
    _read_certificate(send, 0x0001, probe=4, chunk=256)
    message = "PKCS#11 で署名".encode()
    for pin_ef, pin, key_ef in ((0x0018, AUTH_PIN, 0x0017), (0x001B, SIGN_PIN, 0x001A)):
        yield Step(select_ef(pin_ef))
        yield Step(verify(pin))
        yield Step(select_ef(key_ef))
        yield Step(_sign(_sign_input(message)), keep=0, note="RSA-2048 signature")
    yield Step(select_aid(JPKI.aid), note="logout = re-SELECT of the AP")


def myna(send: Callable[[Step], bytes]) -> Iterator[Step]:
    """The myna CLI: pin status, jpki cert, text basic-info and mynumber, jpki pkey sign.

    `pin status`, `jpki cert -t auth`, `text basic-info`, `text mynumber -p`,
    `jpki pkey sign -t auth`, in that order."""
    for app, fids in ((TEXT, (0x0011, 0x0014, 0x0015)), (VISUAL, (0x0013, 0x0012))):
        yield Step(select_aid(app.aid))
        for fid in fids:
            yield Step(select_ef(fid))
            yield Step(verify(b""), note="pin status")
    yield Step(select_aid(JPKI.aid))
    for fid in (0x0018, 0x001B):
        yield Step(select_ef(fid))
        yield Step(verify(b""), note="pin status")
    yield Step(select_aid(JPKI.aid))
    yield Step(select_ef(0x0006))
    yield Step(read_binary(0, 0x20), note="token label JPKIAPICCTOKEN2")
    _read_certificate(send, 0x000A, probe=7, chunk=256)
    yield Step(select_aid(TEXT.aid))
    yield Step(select_ef(0x0005))
    yield Step(read_binary(0, 256), keep=4, note="AP basic info: FF 40 + length")
    yield Step(select_ef(0x0011))
    yield Step(verify(TEXT_PIN))
    yield Step(select_ef(0x0001))
    yield Step(read_binary(0, 17), keep=3, note="FF 10 0C + My Number + filler")
    yield Step(select_aid(JPKI.aid))
    yield Step(select_ef(0x0018))
    yield Step(verify(AUTH_PIN))
    yield Step(select_ef(0x0017))
    yield Step(_sign(_sign_input(b"myna pkey sign")), keep=0, note="RSA-2048 signature")


def jsa(send: Callable[[Step], bytes]) -> Iterator[Step]:
    """JSA-style reads: VERIFY and READ BINARY by SFI, extended Le 65536."""
    yield Step(select_aid(TEXT.aid))
    yield Step(verify(b"", 0x80 | 0x11), note="VERIFY by SFI: tries left")
    yield Step(verify(TEXT_PIN, 0x80 | 0x11))
    for sfi in (0x01, 0x02):
        command = Apdu(0x00, INS.READ_BINARY, 0x80 | sfi, 0x00, le=65536, extended=True)
        yield Step(command.encode(), keep=3 if sfi == 1 else 2, exact_length=sfi == 1)
    yield Step(select_aid(JPKI.aid))
    command = Apdu(0x00, INS.READ_BINARY, 0x80 | 0x0A, 0x00, le=65536, extended=True)
    yield Step(command.encode(), keep=2, note="the whole auth certificate EF in one read")


FLOWS: dict[str, Flow] = {"opensc": opensc, "myna": myna, "jsa": jsa}


def _pattern(step: Step, answer: bytes) -> Pattern:
    data, sw = answer[:-2], answer[-2:].hex().upper()
    if step.keep is None or not data:
        return Pattern.exact(answer)
    kept = data[: step.keep].hex().upper()
    rest = len(data) - step.keep
    masked = f"[{rest}]" if step.exact_length else "[*]"
    return Pattern(" ".join(part for part in (kept, masked if rest else "", sw) if part))


def record_flow(flow: Flow, target: Target) -> list[Exchange]:
    """Run `flow` on `target` (after a reset) and return its golden transcript."""
    exchanges = [Exchange(Action.RESET, b"", Pattern.exact(target.reset()))]

    def send(step: Step) -> bytes:
        answer = target.transmit(step.command)
        exchanges.append(Exchange(Action.APDU, step.command, _pattern(step, answer), step.note))
        return answer

    for step in flow(send):
        send(step)
    return exchanges


def write_golden(directory: Path, target: Target) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, flow in FLOWS.items():
        path = directory / f"{name}.apdu"
        comments = [
            f"docs/card-spec.md §12 client flow: {name} ({(flow.__doc__ or '').splitlines()[0]})",
            "recorded on the emulator with the default profile; card-specific bytes masked",
            f"replay: mynacard replay {path.name} --target emulator --profile default",
        ]
        path.write_text(format_transcript(record_flow(flow, target), comments), encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    from .targets import EmulatorTarget

    target = EmulatorTarget("default")
    try:
        for path in write_golden(Path(argv[0]) if argv else GOLDEN_DIR, target):
            print(path)
    finally:
        target.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
