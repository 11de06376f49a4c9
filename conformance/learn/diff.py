"""Where a learned machine and the expected one differ, each place with a shortest input
sequence that shows it (breadth first over pairs of states)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from .learning import Machine
from .mapper import agrees


@dataclass(frozen=True)
class Difference:
    """After `inputs[:-1]` the machines are in `learned_state` / `expected_state`; the last
    input makes them answer differently."""

    inputs: tuple[str, ...]
    learned_state: str
    expected_state: str
    learned: str
    expected: str

    @property
    def letter(self) -> str:
        return self.inputs[-1]


@dataclass
class Comparison:
    """The differing transitions (one per expected state and letter, shortest first) and
    the states that do not pair one to one."""

    differences: list[Difference]
    split: dict[str, set[str]]  # learned state -> the expected states it stands for (>1)
    merged: dict[str, set[str]]  # expected state -> the learned states it stands for (>1)

    @property
    def equal(self) -> bool:
        return not self.differences and not self.split and not self.merged


def state_names(machine: Machine, letters: list[str]) -> dict[Any, str]:
    """`s0`, `s1`, ... in breadth-first order over `letters` from the initial state: the
    same machine learned twice gets the same names."""
    names = {machine.initial_state: "s0"}
    queue = deque([machine.initial_state])
    while queue:
        state = queue.popleft()
        for letter in letters:
            following = state.transitions[letter]
            if following not in names:
                names[following] = f"s{len(names)}"
                queue.append(following)
    return names


def compare(learned: Machine, expected: Machine, letters: list[str]) -> Comparison:
    """Walk both machines together from their initial states."""
    learned_names, expected_names = state_names(learned, letters), state_names(expected, letters)
    start = (learned.initial_state, expected.initial_state)
    paths: dict[tuple[Any, Any], tuple[str, ...]] = {start: ()}
    queue = deque([start])
    differences: list[Difference] = []
    seen: set[tuple[str, str]] = set()
    while queue:
        pair = queue.popleft()
        mine, theirs = pair
        for letter in letters:
            got, wanted = mine.output_fun[letter], theirs.output_fun[letter]
            inputs = (*paths[pair], letter)
            if not agrees(got, wanted):
                where = (expected_names[theirs], letter)
                if where not in seen:
                    seen.add(where)
                    differences.append(
                        Difference(inputs, learned_names[mine], where[0], got, wanted)
                    )
                continue  # past a differing answer the two states say nothing of each other
            following = (mine.transitions[letter], theirs.transitions[letter])
            if following not in paths:
                paths[following] = inputs
                queue.append(following)
    split: dict[str, set[str]] = {}
    merged: dict[str, set[str]] = {}
    for mine, theirs in paths:
        split.setdefault(learned_names[mine], set()).add(expected_names[theirs])
        merged.setdefault(expected_names[theirs], set()).add(learned_names[mine])
    return Comparison(
        differences,
        {state: found for state, found in split.items() if len(found) > 1},
        {state: found for state, found in merged.items() if len(found) > 1},
    )
