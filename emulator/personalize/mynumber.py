"""The My Number (個人番号) check digit."""

from __future__ import annotations


def my_number_check_digit(first_eleven: str) -> int:
    """Check digit for the first 11 digits of a My Number (the official mod-11 rule)."""
    if len(first_eleven) != 11 or not (first_eleven.isascii() and first_eleven.isdigit()):
        raise ValueError("a My Number check digit needs exactly 11 digits")
    total = 0
    for n, digit in enumerate(reversed(first_eleven), start=1):
        weight = n + 1 if n <= 6 else n - 5
        total += int(digit) * weight
    remainder = total % 11
    return 0 if remainder <= 1 else 11 - remainder
