"""Re-run a transcript against a target, line by line, through the PIN guard if needed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .guard import GuardRefusal, PinGuard
from .model import cmac
from .targets import Target, TargetError
from .transcript import Action, Exchange, Recorder


@dataclass
class ReplayResult:
    matched: int
    total: int
    line: int = 0  # 1-based index of the first exchange that did not match
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.matched == self.total


def replay(
    exchanges: Sequence[Exchange],
    target: Target,
    *,
    pins: dict[str, str] | None = None,
    budget: int = 0,
    recorder: Recorder | None = None,
) -> ReplayResult:
    """Send every exchange to `target` and compare the answers with the patterns.

    A target that is not disposable gets the PIN guard (`pins`, `budget`): a transcript
    with wrong PINs in it cannot lock a real card.
    """
    port: Target | PinGuard = target
    if not target.disposable:
        port = PinGuard(target, pins=dict(pins or {}), budget=budget)
    challenge = b""  # the card's last GET CHALLENGE answer, for `cmac:` lines
    for number, exchange in enumerate(exchanges, 1):
        command = exchange.command
        if exchange.cmac_key:
            command = command[:5] + cmac(exchange.cmac_key, challenge)
        try:
            if exchange.action is Action.RESET:
                answer: bytes | None = port.reset()
            elif exchange.action is Action.POWER:
                answer = port.power_cycle()
            elif exchange.action is Action.RESTART:
                restart = getattr(port, "restart", None)
                answer = restart() if callable(restart) else None
            else:
                answer = port.transmit(command)
                if command[1:2] == b"\x84" and answer[-2:] == b"\x90\x00":
                    challenge = answer[:-2]
        except (GuardRefusal, TargetError) as error:
            return ReplayResult(number - 1, len(exchanges), number, f"not sent: {error}")
        if answer is None:
            return ReplayResult(number - 1, len(exchanges), number, "the target cannot do this")
        if recorder is not None:
            recorder.add(Exchange(exchange.action, command, type(exchange.expected).exact(answer)))
        if not exchange.expected.matches(answer):
            got = answer.hex().upper() or "(nothing)"
            return ReplayResult(
                number - 1, len(exchanges), number, f"expected {exchange.expected}, got {got}"
            )
    if isinstance(port, PinGuard):
        port.settle()
    return ReplayResult(len(exchanges), len(exchanges))
