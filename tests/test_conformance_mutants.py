"""Mutation testing of the bench: deliberately broken emulators must fail it.

Each mutant breaks one spec rule; the bench runs with its default example budget (as
`mynacard conformance` does) and must report a deviation whose minimal transcript fails on
the mutant and replays green on the real emulator.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mynacard import commands, open_card
from mynacard.apdu import INS, CommandApdu
from mynacard.commands.files import binary_file, read_binary
from mynacard.commands.select import select
from mynacard.conformance.bench import Bench
from mynacard.conformance.profile import read_profile
from mynacard.conformance.replay import replay
from mynacard.conformance.runner import RunConfig, make_link, run_bench
from mynacard.conformance.targets import CardLike, EmulatorTarget
from mynacard.files import ALWAYS
from mynacard.layers import CardInterface, Layer
from mynacard.session import Context, Handler
from mynacard.store import CardStore, PinState

PROFILE = "default"
JPKI_AID = bytes.fromhex("D392F000260100000001")
FULL_NAMES = {
    bytes.fromhex(aid)
    for aid in (
        "D392F000260100000001",
        "D3921000310001010408",
        "D3921000310001010402",
        "D3921000310001010401",
        "D3921000310001010100",
        "A0000001510000",
    )
}


class Rewritten(Layer):
    """A card whose answers pass through `rewrite(command, answer)`."""

    def __init__(self, card: CardInterface, rewrite: Callable[[bytes, bytes], bytes]) -> None:
        super().__init__(card)
        self.rewrite = rewrite

    def transmit(self, capdu: bytes) -> bytes:
        return self.rewrite(capdu, self.inner.transmit(capdu))


class NoDecrement(CardStore):
    """A store that never lowers a counter."""

    def set_remaining(self, pin: PinState, remaining: int) -> None:
        if remaining >= pin.remaining:
            super().set_remaining(pin, remaining)


def counter_not_decremented(state: Path) -> CardLike:
    return open_card(PROFILE, state, store_type=NoDecrement)


class CountersResetByPowerCycle(Layer):
    """Full counters again whenever the card is powered on after a power-off."""

    def __init__(self, inner: CardInterface, store: CardStore) -> None:
        super().__init__(inner)
        self.store = store
        self.was_off = False

    def power_off(self) -> None:
        self.was_off = True
        super().power_off()

    def power_on(self) -> bytes:
        if self.was_off:
            for pin in self.store.pins.values():
                self.store.set_remaining(pin, pin.max_tries)
        self.was_off = False
        return super().power_on()


def counter_reset_by_power_cycle(state: Path) -> CardLike:
    opened: list[CardStore] = []

    class Remembered(CardStore):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            opened.append(self)

    card = open_card(PROFILE, state, store_type=Remembered)
    return CountersResetByPowerCycle(card, opened[0])


def with_handler(cla: int, ins: int, handler: Handler) -> dict[int, dict[int, Handler]]:
    """The card's dispatch table with one handler replaced."""
    table = {c: dict(t) for c, t in commands.DISPATCH.items()}
    table[cla][ins] = handler
    return table


def read_sign_cert_freely(ctx: Context, apdu: CommandApdu) -> bytes:
    ef, _ = binary_file(ctx, apdu)
    if ctx.app.aid == JPKI_AID and ef.fid == 0x0001:
        ef.read = ALWAYS
    return read_binary(ctx, apdu)


def sign_cert_readable_without_pin(state: Path) -> CardLike:
    handlers = with_handler(0x00, INS.READ_BINARY, read_sign_cert_freely)
    return open_card(PROFILE, state, handlers=handlers)


def select_keeping_verified(ctx: Context, apdu: CommandApdu) -> bytes:
    before, kept = ctx.session.app, set(ctx.session.verified)
    answer = select(ctx, apdu)
    if ctx.session.app not in (None, before):
        ctx.session.verified |= kept
    return answer


def verified_state_kept_after_changing_application(state: Path) -> CardLike:
    handlers = with_handler(0x00, INS.SELECT, select_keeping_verified)
    return open_card(PROFILE, state, handlers=handlers)


def answers_6983_instead_of_6984(state: Path) -> CardLike:
    return Rewritten(
        open_card(PROFILE, state),
        lambda command, answer: answer[:-2] + b"\x69\x83" if answer[-2:] == b"\x69\x84" else answer,
    )


def read_past_end_answers_filler(state: Path) -> CardLike:
    def filler(command: bytes, answer: bytes) -> bytes:
        if command[1] == 0xB0 and answer == b"\x6b\x00":
            return b"\xff" * (command[-1] or 256) + b"\x90\x00"
        return answer

    return Rewritten(open_card(PROFILE, state), filler)


def prefix_select_missing(state: Path) -> CardLike:
    def exact_names_only(command: bytes, answer: bytes) -> bytes:
        name = command[5 : 5 + command[4]] if len(command) > 5 else b""
        if command[1:3] == b"\xa4\x04" and answer[-2:] == b"\x90\x00" and name not in FULL_NAMES:
            return b"\x6a\x82"
        return answer

    return Rewritten(open_card(PROFILE, state), exact_names_only)


MUTANTS = {
    "counter-not-decremented": counter_not_decremented,
    "counter-reset-by-power-cycle": counter_reset_by_power_cycle,
    "sign-cert-readable-without-pin": sign_cert_readable_without_pin,
    "verified-state-kept-after-changing-application": (
        verified_state_kept_after_changing_application
    ),
    "6983-instead-of-6984": answers_6983_instead_of_6984,
    "read-past-end-answers-9000-with-filler": read_past_end_answers_filler,
    "prefix-select-missing": prefix_select_missing,
}


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_mutant_is_caught_within_the_default_budget(mutant: str) -> None:
    target = EmulatorTarget(PROFILE, opener=MUTANTS[mutant])
    bench = Bench(make_link(target, read_profile(PROFILE), {}, 0))
    try:
        result = run_bench(bench, RunConfig(seed=2024))  # the CLI's default budget
        assert result.deviations, f"{mutant} was not caught in {result.stats.examples} examples"
        transcript = result.deviations[0].transcript
        print(f"\n{mutant}: {result.deviations[0]} ({len(transcript)} exchanges)")
        target.fresh()
        assert not replay(transcript, target).ok, "the minimal transcript fails on the mutant"
    finally:
        target.close()
    real = EmulatorTarget(PROFILE)
    try:
        assert replay(transcript, real).ok, "and replays green on the real emulator"
    finally:
        real.close()
    assert len(transcript) <= 12, "minimized"


@pytest.mark.slow
@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_mutant_catch_rate_over_seeds(mutant: str) -> None:
    """Soak: the catch rate over 10 seeds (opt in with -m slow)."""
    caught = 0
    for seed in range(10):
        target = EmulatorTarget(PROFILE, opener=MUTANTS[mutant])
        try:
            bench = Bench(make_link(target, read_profile(PROFILE), {}, 0))
            caught += bool(run_bench(bench, RunConfig(seed=seed)).deviations)
        finally:
            target.close()
    print(f"\n{mutant}: caught with {caught}/10 seeds")
    assert caught >= 8
