"""atheris harness over `transmit()`: each input is a few APDUs (a length byte, then the
bytes), sent to one card with its invariants checked after every APDU (campaigns.Invariants).

    python tests/fuzz_transmit.py -max_total_time=300 [CORPUS_DIR]   # or: tox -e atheris

A broken invariant raises AssertionError: atheris stops and writes the input as crash-*.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).parent))

with atheris.instrument_imports(include=["mynacard"]):
    import campaigns

    from mynacard import load_profile

STATE = tempfile.TemporaryDirectory(prefix="mynacard-fuzz-")
CHECKER = campaigns.Invariants(load_profile("taxi-tickets"), Path(STATE.name))


def one_input(data: bytes) -> None:
    CHECKER.power_cycle()
    position = 0
    while position < len(data):
        size = data[position]
        CHECKER.transmit(data[position + 1 : position + 1 + size])
        position += 1 + size


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
