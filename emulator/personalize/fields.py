"""One typed reader for the fields of a TOML file (profiles, free-area declarations).

Every field error is a FieldError whose message reads `<file>: <field path>: expected
<what>[, got <value>]`, e.g. `profiles/x.toml: free_area.apps[0].files[1].fid: expected a
4-digit hex FID 0001 to 001E, got 'zz'`. An absent field reads as None, its default if any.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from collections.abc import Callable, Collection, Sequence
from typing import TypeGuard, TypeVar

_T = TypeVar("_T")


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the offending field."""


class FieldError(ProfileError):
    """A field that is absent or wrong; `problem` is `expected <what>[, got <value>]`."""

    def __init__(self, file: str, path: str, expected: str, got: str | None = None) -> None:
        self.file = file
        self.path = path
        self.problem = f"expected {expected}" + ("" if got is None else f", got {got}")
        super().__init__(f"{file}: {path}: {self.problem}")


def document(data: bytes, file: str, path: str = "") -> Table:
    """The TOML document in `data` as a table; ProfileError if not UTF-8 or not TOML."""
    try:
        return Table(tomllib.loads(data.decode("utf-8")), file, path)
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{file}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{file}: invalid TOML: {exc}") from None


def _exactly(value: object, kind: type[_T]) -> TypeGuard[_T]:
    """Of type `kind` itself: a bool is no integer, a date-time no date."""
    return type(value) is kind


def _count(low: int, high: int | None, unit: str = "item") -> str:
    """E.g. "16 bytes", "1 to 16 bytes", "at most 8 items", "at least 1 item"."""
    if high is None:
        text, last = f"at least {low}", low
    elif low == high:
        text, last = str(low), low
    else:
        text, last = (f"{low} to {high}", high) if low else (f"at most {high}", high)
    return f"{text} {unit}{'' if last == 1 else 's'}"


def _show(value: object) -> str:
    """A value as messages quote it."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return "a table" if isinstance(value, dict) else repr(value)


class Field:
    """The value at `path` in `file` (None: absent), read as one type."""

    def __init__(self, value: object, file: str, path: str) -> None:
        self.value = value
        self.file = file
        self.path = path

    def fail(self, expected: str, got: str | None = None) -> FieldError:
        """The error for this field; the caller raises it."""
        return FieldError(self.file, self.path, expected, got)

    def _read(self, kind: type[_T], expected: str, default: _T | None) -> _T:
        value = default if self.value is None else self.value
        if not _exactly(value, kind):
            raise self.fail(expected, _show(value))
        return value

    def text(
        self,
        default: str | None = None,
        *,
        pattern: str | re.Pattern[str] | None = None,
        expected: str = "a string",
    ) -> str:
        """A string, all of it matching `pattern` if given (`expected` describes it)."""
        value = self._read(str, expected, default)
        if pattern is not None and not re.fullmatch(pattern, value):
            raise self.fail(expected, _show(value))
        return value

    def integer(self, low: int, high: int, default: int | None = None) -> int:
        """An integer from `low` to `high`."""
        expected = f"an integer {low} to {high}"
        value = self._read(int, expected, default)
        if not low <= value <= high:
            raise self.fail(expected, _show(value))
        return value

    def boolean(self, default: bool | None = None) -> bool:
        """true or false."""
        return self._read(bool, "true or false", default)

    def date(self) -> dt.date:
        """A local date (not a date-time)."""
        return self._read(dt.date, "a date (YYYY-MM-DD)", None)

    def hex(self, low: int, high: int, default: str | None = None) -> bytes:
        """`low` to `high` bytes as hex digits, which spaces and colons may separate."""
        expected = f"{_count(low, high, 'byte')} in hex"
        text = self._read(str, expected, default)
        try:
            value = bytes.fromhex(re.sub(r"[\s:]", "", text))
        except ValueError:
            raise self.fail(expected, _show(text)) from None
        if not low <= len(value) <= high:
            raise self.fail(expected, _show(text))
        return value

    def choice(
        self,
        allowed: Sequence[_T],
        default: _T | None = None,
        *,
        spell: Callable[[_T], str] = _show,
    ) -> _T:
        """One of `allowed` (of one type), as `spell` writes them in messages."""
        value = default if self.value is None else self.value
        if _exactly(value, type(allowed[0])):
            if value in allowed:
                return value
            got = spell(value)
        else:
            got = _show(value)
        *others, last = [spell(option) for option in allowed]
        raise self.fail(f"{', '.join(others)} or {last}" if others else last, got)

    def table(self, known: Collection[str] | None = None, *, optional: bool = False) -> Table:
        """A table (absent and `optional`: empty) with no fields but `known`, if given."""
        value = self._read(dict, "a table", {} if optional else None)
        table = Table(value, self.file, self.path)
        if known is not None:
            for key in value:
                if key not in known:
                    raise table[key].fail(f"one of the fields {', '.join(known)}")
        return table

    def items(
        self, low: int = 0, high: int | None = None, default: list[object] | None = None
    ) -> list[Field]:
        """An array of `low` to `high` values, each a field `path[n]`."""
        expected = "an array" if (low, high) == (0, None) else f"an array of {_count(low, high)}"
        value = self._read(list, expected, default)
        if len(value) < low or (high is not None and len(value) > high):
            raise self.fail(expected, _show(value))
        return [Field(item, self.file, f"{self.path}[{n}]") for n, item in enumerate(value)]

    def tables(self, known: Collection[str] | None = None) -> list[Table]:
        """An array of tables ([[...]]; absent: none)."""
        return [item.table(known) for item in self.items(default=[])]


class Table(Field):
    """A table field: its fields by key."""

    value: dict[str, object]

    def __init__(self, value: dict[str, object], file: str, path: str) -> None:
        super().__init__(value, file, path)

    def __getitem__(self, key: str) -> Field:
        return Field(self.value.get(key), self.file, f"{self.path}.{key}" if self.path else key)

    def __contains__(self, key: str) -> bool:
        return key in self.value
