"""Personalisation: TOML card profiles, derived PINs and a test JPKI certificate hierarchy."""

from emulator.personalize.generate import new_profile
from emulator.personalize.profile import (
    KNOWN_ATRS,
    PIN_MAX_TRIES,
    PIN_NAMES,
    Holder,
    JpkiCredentials,
    Profile,
    ProfileError,
    Quirks,
    derived_pins,
    load_profile,
    profile_as_json,
    shipped_profile_names,
)

__all__ = [
    "KNOWN_ATRS",
    "PIN_MAX_TRIES",
    "PIN_NAMES",
    "Holder",
    "JpkiCredentials",
    "Profile",
    "ProfileError",
    "Quirks",
    "derived_pins",
    "load_profile",
    "new_profile",
    "profile_as_json",
    "shipped_profile_names",
]
