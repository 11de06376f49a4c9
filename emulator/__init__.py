"""mynacard: a software My Number Card for PC/SC, and a conformance bench for it.

The public names are loaded on first use, so ``import mynacard.conformance`` (or the pytest
plugin) does not load the card.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

if TYPE_CHECKING:
    from .card import Card, open_card
    from .personalize.profile import Profile, ProfileError, load_profile, shipped_profile_names
    from .store import StateError, StateLockedError

_PUBLIC = {
    "Card": ".card",
    "open_card": ".card",
    "Profile": ".personalize.profile",
    "ProfileError": ".personalize.profile",
    "load_profile": ".personalize.profile",
    "shipped_profile_names": ".personalize.profile",
    "StateError": ".store",
    "StateLockedError": ".store",
}

__all__ = [
    "Card",
    "Profile",
    "ProfileError",
    "StateError",
    "StateLockedError",
    "__version__",
    "load_profile",
    "open_card",
    "shipped_profile_names",
]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'mynacard' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
