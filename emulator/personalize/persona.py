"""Made-up card holders: names, addresses, numbers and dates for test profiles."""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from mynacard.personalize.mynumber import my_number_check_digit
from mynacard.personalize.profile import Holder

JST = timezone(timedelta(hours=9), "JST")
ADULT_AGE = 18  # from this age at issue the card runs to the 10th birthday, else the 5th
SIGN_CERT_MIN_AGE = 15  # no signature certificate for younger holders

_FULL_WIDTH_DIGITS = str.maketrans("0123456789", "０１２３４５６７８９")


@dataclass(frozen=True)
class Place:
    """A municipality, with the romaji its CRL distribution point is named by."""

    prefecture: str
    prefecture_romaji: str
    municipality: str
    municipality_romaji: str
    towns: tuple[str, ...]


PLACES = (
    Place(
        "東京都", "Tokyo-to", "千代田区", "Chiyoda-ku", ("霞が関", "丸の内", "永田町", "神田駿河台")
    ),
    Place("東京都", "Tokyo-to", "世田谷区", "Setagaya-ku", ("三軒茶屋", "北沢", "玉川")),
    Place("茨城県", "Ibaraki-ken", "つくば市", "Tsukuba-shi", ("千現", "竹園", "吾妻")),
    Place("大阪府", "Osaka-fu", "豊中市", "Toyonaka-shi", ("曽根東町", "新千里東町")),
    Place("北海道", "Hokkaido", "函館市", "Hakodate-shi", ("五稜郭町", "本町")),
    Place("愛知県", "Aichi-ken", "岡崎市", "Okazaki-shi", ("康生通西", "羽根町")),
    Place("京都府", "Kyoto-fu", "宇治市", "Uji-shi", ("琵琶台", "広野町")),
    Place("宮城県", "Miyagi-ken", "石巻市", "Ishinomaki-shi", ("穀町", "中央")),
    Place("長野県", "Nagano-ken", "松本市", "Matsumoto-shi", ("丸の内", "中央")),
    Place("福岡県", "Fukuoka-ken", "久留米市", "Kurume-shi", ("城南町", "東町")),
    Place("沖縄県", "Okinawa-ken", "那覇市", "Naha-shi", ("泉崎", "久茂地")),
)
FAMILY_NAMES = (
    "佐藤", "鈴木", "高橋", "田中", "伊藤", "渡辺", "山本", "中村", "小林", "加藤",
    "吉田", "山田", "佐々木", "山口", "松本", "井上", "木村", "斎藤", "清水", "森",
)  # fmt: skip
GIVEN_NAMES = {
    "1": ("太郎", "健太", "翔太", "大輔", "浩二", "誠", "拓也", "直樹", "陽斗", "蓮"),
    "2": ("花子", "美咲", "陽子", "由美", "恵", "愛", "さくら", "結衣", "真由美", "葵"),
}


@dataclass(frozen=True)
class Persona:
    """A made-up holder and the numbers and dates of their card."""

    holder: Holder
    place: Place
    my_number: str
    security_code: str
    resident_code: str
    issued_at: datetime  # JST
    card_expiry: date
    cert_expiry: date  # the certificates end at 23:59:59 JST on this day
    pin: str  # one 4-digit PIN for auth, text, juki and common (docs/decisions.md #14)
    sign_password: str


def make_persona(rng: random.Random, issued_at: datetime, holder_age: int | None) -> Persona:
    """A persona issued a card at `issued_at`, aged `holder_age` then (random adult if None)."""
    age = rng.randint(20, 79) if holder_age is None else holder_age
    sex = rng.choice("12")
    place = rng.choice(PLACES)
    birth_date = _birth_date_for_age(rng, issued_at.date(), age)
    holder = Holder(
        name=f"{rng.choice(FAMILY_NAMES)}\u3000{rng.choice(GIVEN_NAMES[sex])}",
        address=_address(rng, place),
        birth_date=birth_date,
        sex=sex,
    )
    first_eleven = _digits(rng, 11)
    return Persona(
        holder=holder,
        place=place,
        my_number=f"{first_eleven}{my_number_check_digit(first_eleven)}",
        security_code=_digits(rng, 4),
        resident_code=_digits(rng, 11),
        issued_at=issued_at,
        card_expiry=nth_birthday_after(birth_date, issued_at.date(), 10 if age >= ADULT_AGE else 5),
        cert_expiry=nth_birthday_after(birth_date, issued_at.date(), 5),
        pin=_digits(rng, 4),
        sign_password=_sign_password(rng),
    )


def nth_birthday_after(birth_date: date, day: date, n: int) -> date:
    """The n-th birthday strictly after `day` (29 February counts as 28 February)."""
    first_year = day.year if _birthday_in(birth_date, day.year) > day else day.year + 1
    return _birthday_in(birth_date, first_year + n - 1)


def full_width_digits(text: str) -> str:
    """`text` with ASCII digits replaced by full-width ones (０-９)."""
    return text.translate(_FULL_WIDTH_DIGITS)


def _birthday_in(birth_date: date, year: int) -> date:
    if (birth_date.month, birth_date.day) == (2, 29):
        try:
            return date(year, 2, 29)
        except ValueError:
            return date(year, 2, 28)
    return birth_date.replace(year=year)


def _birth_date_for_age(rng: random.Random, day: date, age: int) -> date:
    """A birth date that makes the holder exactly `age` on `day`."""
    latest = _birthday_in(day, day.year - age)
    earliest = _birthday_in(day, day.year - age - 1) + timedelta(days=1)
    return earliest + timedelta(days=rng.randrange((latest - earliest).days + 1))


def _address(rng: random.Random, place: Place) -> str:
    town = rng.choice(place.towns)
    block, lot, house = rng.randint(1, 9), rng.randint(1, 30), rng.randint(1, 20)
    rest = f"{block}丁目{lot}番{house}号" if rng.random() < 0.5 else f"{lot}番地{house}"
    return f"{place.prefecture}{place.municipality}{town}{full_width_digits(rest)}"


def _digits(rng: random.Random, count: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(count))


def _sign_password(rng: random.Random) -> str:
    """Eight characters of A-Z 0-9 with at least one letter and one digit (issuance rule)."""
    alphabet = string.ascii_uppercase + string.digits
    while True:
        password = "".join(rng.choice(alphabet) for _ in range(8))
        if any(c.isdigit() for c in password) and any(c.isalpha() for c in password):
            return password
