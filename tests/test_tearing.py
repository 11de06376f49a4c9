"""Tearing: the power is cut before each durable write of a state-changing command (and
after the last); after a restart the state is what it was before the command, what it is
after it, or (for a PIN or key check) one try spent. A try is never free: the card answers
only after the decremented counter is on disk, and compares only then."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers.algorithms import AES

from mynacard import open_card
from mynacard.layers import CardInterface
from mynacard.personalize.profile import PROFILES_DIR
from mynacard.store import CardStore, PinState, read_pin_status


class PowerLoss(BaseException):
    """The power is gone: nothing after this point happens."""


class CutBeforeWrite(CardStore):
    """A store whose `cut_at`-th write (counted from arming) never happens."""

    cut_at = 0  # 0: never
    writes = 0

    def _write(self, write: Callable[[], None]) -> None:
        CutBeforeWrite.writes += 1
        if CutBeforeWrite.writes == CutBeforeWrite.cut_at:
            raise PowerLoss
        write()

    def set_remaining(self, pin: PinState, remaining: int) -> None:
        self._write(lambda: super(CutBeforeWrite, self).set_remaining(pin, remaining))

    def set_value(self, pin: PinState, value: bytes) -> None:
        self._write(lambda: super(CutBeforeWrite, self).set_value(pin, value))

    def save_file(self, aid: bytes, fid: int, content: bytes) -> None:
        self._write(lambda: super(CutBeforeWrite, self).save_file(aid, fid, content))


JPKI = "00A4040C0AD392F000260100000001"
AUTH_PIN = "00A4020C020018"
TAXI = "00A4040C07F0544158490001"
TAXI_KEYS = {
    k["id"]: bytes.fromhex(k["aes"])
    for k in tomllib.loads((PROFILES_DIR / "taxi-tickets.toml").read_text(encoding="utf-8"))[
        "free_area"
    ]["apps"][0]["keys"]
}


def send(card: CardInterface, *commands: str) -> bytes:
    answer = b""
    for command in commands:
        answer = card.transmit(bytes.fromhex(command))
    return answer


def authenticate(card: CardInterface, key: int, right: bool = True) -> bytes:
    challenge = card.transmit(bytes.fromhex("0084000010"))[:-2]
    code = cmac.CMAC(AES(TAXI_KEYS[key]))
    code.update(challenge)
    mac = code.finalize() if right else bytes(16)
    return card.transmit(bytes.fromhex(f"008200{0x80 | key:02X}10") + mac)


# Each case: profile, the steps before the command, the command (returns its answer), and
# a reader of the data it changes (after the restart; b"" where only counters change).
Steps = Callable[[CardInterface], Any]
Case = tuple[str, Steps, Callable[[CardInterface], bytes], Callable[[CardInterface], bytes]]


def nothing(card: CardInterface) -> bytes:
    return b""


def taxi_counter(card: CardInterface) -> bytes:
    return send(card, TAXI, "00B2011400")


def taxi_records(card: CardInterface) -> bytes:
    return send(card, TAXI, "002000910435353630", "00B2011C00")


CASES: dict[str, Case] = {
    "verify-wrong": ("default", lambda c: send(c, JPKI, AUTH_PIN),
                     lambda c: send(c, "002000800439393939"), nothing),
    "verify-right": ("default", lambda c: send(c, JPKI, AUTH_PIN, "002000800439393939"),
                     lambda c: send(c, "002000800431323334"), nothing),
    "change-pin": ("default", lambda c: send(c, JPKI, AUTH_PIN, "002000800431323334"),
                   lambda c: send(c, "002401800435363738"),
                   lambda c: send(c, JPKI, AUTH_PIN, "002000800435363738")),
    "ext-auth-wrong": ("taxi-tickets", lambda c: send(c, TAXI),
                       lambda c: authenticate(c, 1, False), nothing),
    "ext-auth-right": ("taxi-tickets", lambda c: (send(c, TAXI), authenticate(c, 1, False)),
                       lambda c: authenticate(c, 1), nothing),
    "decrease": ("taxi-tickets", lambda c: (send(c, TAXI), authenticate(c, 1)),
                 lambda c: send(c, "003001140101"), taxi_counter),
    "append-record": ("taxi-tickets", lambda c: (send(c, TAXI), authenticate(c, 1)),
                      lambda c: send(c, "00E200180400112233"), taxi_records),
}  # fmt: skip


def run(case: Case, state: Path, cut_at: int | None) -> bytes | None:
    """The steps, then (unless `cut_at` is None) the command with the power cut before its
    `cut_at`-th write (0: never); the command's answer, None if the power was cut."""
    profile, steps, command, _ = case
    CutBeforeWrite.cut_at, CutBeforeWrite.writes = 0, 0
    card = open_card(profile, state, store_type=CutBeforeWrite)
    try:
        steps(card)
        if cut_at is None:
            return None
        CutBeforeWrite.cut_at, CutBeforeWrite.writes = cut_at, 0
        return command(card)
    except PowerLoss:
        return None
    finally:
        card.close()
        CutBeforeWrite.cut_at = 0


def restarted(case: Case, state: Path) -> tuple[dict[str, int], bytes]:
    """The counters and the changed data after a restart from `state`."""
    counters = {pin.name: pin.remaining for pin in read_pin_status(state)}
    with open_card(case[0], state) as card:
        return counters, case[3](card)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_cut_point_leaves_before_after_or_a_spent_try(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    run(case, tmp_path / "before", cut_at=None)
    assert run(case, tmp_path / "after", cut_at=0) is not None
    writes = CutBeforeWrite.writes
    assert writes >= 1, "a state-changing command writes"
    before, after = restarted(case, tmp_path / "before"), restarted(case, tmp_path / "after")
    assert before != after or name == "verify-right"
    checks_a_secret = name.startswith(("verify", "ext-auth"))
    for cut_at in range(1, writes + 1):
        state = tmp_path / f"cut{cut_at}"
        assert run(case, state, cut_at) is None, "no answer before every write is done"
        counters, data = restarted(case, state)
        if not checks_a_secret:
            assert (counters, data) in (before, after), cut_at
            continue
        spent = sum(before[0].values()) - 1
        if cut_at == 1:  # cut before the decrement: nothing compared, nothing changed
            assert (counters, data) == before
        else:  # the decrement is on disk: the try is spent (restored only by a full run)
            assert sum(counters.values()) == spent, cut_at


def test_the_decrement_comes_before_the_comparison(tmp_path: Path) -> None:
    """A right and a wrong VERIFY make the same first write: the decrement."""
    first: list[int] = []

    class Recording(CardStore):
        def set_remaining(self, pin: PinState, remaining: int) -> None:
            first.append(remaining)
            super().set_remaining(pin, remaining)

    for value in ("31323334", "39393939"):
        first.clear()
        with open_card("default", tmp_path / value, store_type=Recording) as card:
            send(card, JPKI, AUTH_PIN, "0020008004" + value)
        assert first[0] == 2, value
