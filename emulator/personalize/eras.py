"""Japanese eras (和暦) as used by the card: 照合番号B, the visual AP birth key, sign-cert SAN."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class Era:
    code: int  # digit used in the sign certificate's 生年月日 "EYYYYMMDD"
    name: str
    start: date  # first day of 元年


# docs/decisions.md #34
ERAS = (
    Era(5, "令和", date(2019, 5, 1)),
    Era(4, "平成", date(1989, 1, 8)),
    Era(3, "昭和", date(1926, 12, 25)),
    Era(2, "大正", date(1912, 7, 30)),
    Era(1, "明治", date(1868, 1, 25)),
)
FIRST_ERA_DAY = ERAS[-1].start


def era_of(day: date) -> tuple[Era, int]:
    """The era of `day` and the year within it (元年 = 1); ValueError before 明治."""
    for era in ERAS:
        if day >= era.start:
            return era, day.year - era.start.year + 1
    raise ValueError(f"{day.isoformat()} is before {FIRST_ERA_DAY.isoformat()} (明治 1)")


def era_yymmdd(day: date) -> str:
    """Era year, month, day as six digits, e.g. 1980-02-17 (昭和55) -> "550217"."""
    _, year = era_of(day)
    if year > 99:
        raise ValueError(f"{day.isoformat()}: era year {year} does not fit two digits")
    return f"{year:02d}{day.month:02d}{day.day:02d}"


def era_coded_date(day: date) -> str:
    """Era code and Gregorian date, "EYYYYMMDD", as in the sign certificate (319800217)."""
    era, _ = era_of(day)
    return f"{era.code}{day.year:04d}{day.month:02d}{day.day:02d}"
