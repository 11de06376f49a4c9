"""Emulator cards with planted faults, for ``--target python:tests/planted_cards.py:NAME``
(tests of `mynacard learn` and of the fleet's shared example database)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from mynacard import load_profile, open_card
from mynacard.conformance.targets import CardLike

PROFILE = load_profile("default")


class Card:
    """The emulator on a scratch state; `restart()` opens it afresh."""

    disposable = True

    def __init__(self, name: str, profile: str = "default") -> None:
        self.name = name
        self.profile = load_profile(profile) if profile != "default" else PROFILE
        shm = Path("/dev/shm")  # the card syncs its state files: memory is much faster
        scratch = shm if shm.is_dir() else None
        self.root = Path(tempfile.mkdtemp(prefix="mynacard-planted-", dir=scratch))
        self.card: CardLike | None = None
        self.last = b""
        self.restart()

    def restart(self) -> None:
        if self.card is not None:
            self.card.close()
        shutil.rmtree(self.root / "state", ignore_errors=True)
        self.card = open_card(self.profile, self.root / "state")
        self.card.power_on()
        self.last = b""

    def answer(self, command: bytes, answer: bytes) -> bytes:
        """The planted fault: how `answer` is changed (here: not at all)."""
        return answer

    def transmit(self, command: bytes) -> bytes:
        assert self.card is not None
        answer = self.answer(command, self.card.transmit(command))
        self.last = command
        return answer

    def reset(self) -> bytes:
        assert self.card is not None
        self.last = b""
        return self.card.reset()

    def power_cycle(self) -> bytes:
        assert self.card is not None
        self.last = b""
        self.card.power_off()
        return self.card.power_on()

    def close(self) -> None:
        if self.card is not None:
            self.card.close()
        shutil.rmtree(self.root, ignore_errors=True)


class Blocked6983(Card):
    """A blocked PIN answers 6983 instead of 6984 (changes the state machine)."""

    def answer(self, command: bytes, answer: bytes) -> bytes:
        return answer[:-2] + b"\x69\x83" if answer[-2:] == b"\x69\x84" else answer


class VerifyAfterChallenge(Card):
    """VERIFY with a value right after a GET CHALLENGE that gave a challenge answers 6F00:
    the survey does not meet it, an example finds it after some tens of examples."""

    challenged = False

    def answer(self, command: bytes, answer: bytes) -> bytes:
        after_challenge, self.challenged = (
            self.challenged,
            command[1:2] == b"\x84" and answer[-2:] == b"\x90\x00",
        )
        if after_challenge and command[1:2] == b"\x20" and len(command) > 5:
            return b"\x6f\x00"
        return answer


def blocked_6983() -> Card:
    return Blocked6983("blocked PIN answers 6983")


def verify_after_challenge() -> Card:
    return VerifyAfterChallenge("VERIFY after GET CHALLENGE answers 6F00")


def not_disposable() -> Card:
    card = Card("the emulator, not disposable")
    card.disposable = False
    return card


def not_disposable_as(profile: str | None = None) -> Card:
    """The emulator personalised from the run's --profile (default without one), not
    disposable: the PIN guard stands between the bench and it."""
    card = Card(f"the emulator ({profile or 'default'}), not disposable", profile or "default")
    card.disposable = False
    return card
