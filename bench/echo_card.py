"""A do-nothing vpcd card (9000 to every APDU): the transport baseline for benchmarks.

It uses the same client as ``mynacard serve`` (mynacard.vpcd, with TCP_QUICKACK re-armed
before every read), so the time it measures is pyscard -> pcscd -> vpcd -> TCP and back,
without any card logic.

    python bench/echo_card.py --reader 1
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from mynacard.vpcd import VPCD_HOST, VpcdClient, reader_name, reader_port

ECHO_ATR = bytes.fromhex("3B80800101")  # T=1, no historical bytes, valid TCK
OK = b"\x90\x00"


class EchoCard:
    """Answers 9000 to every C-APDU."""

    atr = ECHO_ATR

    def power_on(self) -> bytes:
        return self.atr

    def power_off(self) -> None:
        pass

    def reset(self) -> bytes:
        return self.atr

    def transmit(self, capdu: bytes) -> bytes:
        return OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reader", type=int, default=0, metavar="N", help="vpcd reader number")
    parser.add_argument("--host", default=VPCD_HOST, help="vpcd host (default 127.0.0.1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="echo_card: %(message)s")
    port = reader_port(args.reader)
    print(f"echo card on reader {reader_name(port)!r} via vpcd {args.host}:{port}", flush=True)
    VpcdClient(EchoCard(), args.host, port).run_until_signalled()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
