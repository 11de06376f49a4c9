"""AALpy's KV algorithm over a system under learning, with its query cache, and the cost."""

from __future__ import annotations

import random
import time
import warnings
from dataclasses import dataclass
from typing import TypeAlias

from aalpy.automata import MealyMachine
from aalpy.base import SUL
from aalpy.learning_algs import run_KV
from aalpy.oracles import RandomWMethodEqOracle

Machine: TypeAlias = MealyMachine

WALKS_PER_STATE = 40
WALK_LENGTH = 12


@dataclass
class Learned:
    """A learned machine and what learning it cost."""

    machine: Machine
    letters: list[str]
    membership_queries: int
    equivalence_queries: int  # the oracle's test words
    rounds: int
    cached: int  # queries the cache answered
    seconds: float

    @property
    def states(self) -> int:
        return len(self.machine.states)

    @property
    def transitions(self) -> int:
        return len(self.machine.states) * len(self.letters)


def learn(sul: SUL, letters: list[str], *, seed: int = 0) -> Learned:
    """Learn `sul` over `letters`; the equivalence oracle's random walks follow `seed`."""
    random.seed(seed)  # AALpy's oracles draw from the random module
    oracle = RandomWMethodEqOracle(
        letters, sul, walks_per_state=WALKS_PER_STATE, walk_len=WALK_LENGTH
    )
    started = time.perf_counter()
    with warnings.catch_warnings():  # intermediate hypotheses may be non-canonical (KV)
        warnings.filterwarnings("ignore", "Automaton is non-canonical", UserWarning)
        machine, info = run_KV(
            letters,
            sul,
            oracle,
            "mealy",
            cache_and_non_det_check=True,
            return_data=True,
            print_level=0,
        )
    return Learned(
        machine=machine,
        letters=letters,
        membership_queries=int(info["queries_learning"]),
        equivalence_queries=int(info["queries_eq_oracle"]),
        rounds=int(info["learning_rounds"]),
        cached=int(info["cache_saved"]),
        seconds=time.perf_counter() - started,
    )
