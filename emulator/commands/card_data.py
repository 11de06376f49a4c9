"""GET DATA and GET RESPONSE, as the card answers them itself."""

from __future__ import annotations

from ..apdu import SW, CommandApdu, StatusError
from ..session import Context


def get_data(ctx: Context, apdu: CommandApdu) -> bytes:
    """No GET DATA objects are emulated (the MF-level ones are optional,
    docs/card-spec.md §2.3)."""
    raise StatusError(SW.REFERENCE_DATA_NOT_FOUND)


def get_response(ctx: Context, apdu: CommandApdu) -> bytes:
    """Answers come whole (T=1); with the t0_chaining quirk the T0Chaining layer answers."""
    raise StatusError(SW.CONDITIONS_NOT_SATISFIED)
