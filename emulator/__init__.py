"""mynacard's emulator: a software My Number Card answering APDUs as the real card does."""

from .card import Card, open_card
from .store import StateError, StateLockedError

__all__ = ["Card", "StateError", "StateLockedError", "open_card"]
