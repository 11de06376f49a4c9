"""Mutation testing of the bench: deliberately broken emulators must fail it.

Each mutant breaks one spec rule; the bench runs with its default example budget (as
`mynacard conformance` does) and must report a deviation whose minimal transcript fails on
the mutant and replays green on the real emulator.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mynacard import Card, open_card
from mynacard.conformance.bench import Bench
from mynacard.conformance.profile import read_profile
from mynacard.conformance.replay import replay
from mynacard.conformance.runner import RunConfig, make_link, run_bench
from mynacard.conformance.targets import CardLike, EmulatorTarget
from mynacard.files import ALWAYS

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


class Rewritten:
    """A card whose answers pass through `rewrite(command, answer)`."""

    def __init__(self, card: Card, rewrite: Callable[[bytes, bytes], bytes]) -> None:
        self.card = card
        self.rewrite = rewrite

    def transmit(self, command: bytes) -> bytes:
        return self.rewrite(command, self.card.transmit(command))

    def power_on(self) -> bytes:
        return self.card.power_on()

    def power_off(self) -> None:
        self.card.power_off()

    def reset(self) -> bytes:
        return self.card.reset()

    def close(self) -> None:
        self.card.close()


def counter_not_decremented(state: Path) -> CardLike:
    card = open_card(PROFILE, state)
    store = card._store
    write = store.set_remaining
    store.set_remaining = lambda pin, n: None if n < pin.remaining else write(pin, n)  # type: ignore[method-assign]
    return card


def counter_reset_by_power_cycle(state: Path) -> CardLike:
    card = open_card(PROFILE, state)
    power_on, power_off = card.power_on, card.power_off
    was_off = [False]

    def off() -> None:
        was_off[0] = True
        power_off()

    def on() -> bytes:
        if was_off[0]:
            for pin in card._store.pins.values():
                card._store.set_remaining(pin, pin.max_tries)
        was_off[0] = False
        return power_on()

    card.power_off, card.power_on = off, on  # type: ignore[method-assign]
    return card


def sign_cert_readable_without_pin(state: Path) -> CardLike:
    card = open_card(PROFILE, state)
    jpki = next(app for app in card._applications if app.aid == JPKI_AID)
    jpki.objects[0x0001].read = ALWAYS  # type: ignore[union-attr]
    return card


def verified_state_kept_after_changing_application(state: Path) -> CardLike:
    card = open_card(PROFILE, state)
    select = card._select_application

    def keep_verified(apdu: object) -> bytes:
        before, kept = card._app, set(card._verified)
        answer = select(apdu)  # type: ignore[arg-type]
        if card._app is not None and card._app is not before:
            card._verified |= kept
        return answer

    card._select_application = keep_verified  # type: ignore[method-assign]
    return card


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
