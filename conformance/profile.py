"""What a profile TOML file promises about its card, read directly (not through emulator/).

Used with `--profile`: the model then expects the profile's exact certificates, ATR, PIN
counters and quirks, and the PIN guard knows the correct PINs.
"""

from __future__ import annotations

import base64
import binascii
import tomllib
from dataclasses import dataclass, field
from datetime import date
from importlib import resources
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    load_pem_private_key,
)

from .apdu import INS
from .layouts import (
    ApKeys,
    Holder,
    ObjectKey,
    Partial,
    national_efs,
    national_records,
    partial_efs,
)
from .spec import (
    COMMON,
    NEVER,
    TEXT,
    VISUAL,
    AesKeySpec,
    AppSpec,
    EfSpec,
    KeySpec,
    KeyUse,
    PinSpec,
    Structure,
    key_credential,
)

# The shipped profiles (package data; reading them does not load the card).
PROFILES_DIR = Path(str(resources.files("mynacard.profiles")))

# docs/card-spec.md §1, by the names profiles may use.
KNOWN_ATRS = {
    "jpki": "3BE000FF8131FE4514",
    "jpki-02": "3BDA13FF8131FB468012392F31C173C601C03B",
    "jpki-03": "3BC5FF8131FB458073C6010000",
    "jpki-04": "3BF59100FF918171FE400042000100D1D6",
    "jpki-05": "3BF59100FF918171FE4000420001B3A115",
    "jpki-06": "3B888001000005E0B381A1007F",
    "jpki-07": "3B888001000041E0B381A1003B",
    "jpki-08": "3B888001004B51FF0081D100BC",
    "jpki-09": "3B888001004B51FFB381D1000F",
}

# docs/decisions.md #34: first day of each era and its code.
_ERAS = (
    (date(2019, 5, 1), 5),
    (date(1989, 1, 8), 4),
    (date(1926, 12, 25), 3),
    (date(1912, 7, 30), 2),
    (date(1868, 1, 25), 1),
)


class ProfileProblem(ValueError):
    """A profile file the bench cannot read; the message names the file and field."""


def era_yymmdd(day: date) -> str:
    """Japanese-era year (YY), month and day: the 生年月日 key and the start of 照合番号B."""
    for start, _code in _ERAS:
        if day >= start:
            return f"{day.year - start.year + 1:02d}{day.month:02d}{day.day:02d}"
    raise ProfileProblem(f"{day} is before 明治")


@dataclass(frozen=True)
class Quirks:
    """The [quirks] switches of docs/decisions.md, with their defaults."""

    blocked_sw: int = 0x6984
    reselect_clears_state: bool = False
    verified_query_sw: int | None = None
    filler: int = 0xFF
    extended_length: bool = True
    t0_chaining: bool = False  # answers over 256 bytes come as 61xx + GET RESPONSE


@dataclass(frozen=True)
class FreeApp:
    """A free-area application as a profile installs it (docs/decisions.md, "The free storage
    area"): what the bench can check without writing or EXTERNAL AUTHENTICATE."""

    spec: AppSpec
    contents: dict[int, bytes]  # initial bytes of transparent EFs (the rest is learned)
    records: dict[int, tuple[bytes, ...]]
    pins: dict[int, bytes]
    rsa_keys: tuple[tuple[KeySpec, rsa.RSAPublicKey], ...] = ()
    aes: dict[int, bytes] = field(default_factory=dict)  # EXTERNAL AUTHENTICATE keys by number


def _access(rule: object, default: str = "never") -> frozenset[int]:
    """A rule of docs/free-area.md as the credentials any one of which opens it: `always`
    -> none needed, `pin:FID` -> that PIN, `key:N` -> EXTERNAL AUTHENTICATE with key N,
    `never` -> NEVER; a list -> any of its rules."""
    rules = rule if isinstance(rule, list) else [rule if rule is not None else default]
    opened: set[int] = set()
    for one in rules:
        kind, _, reference = str(one).partition(":")
        if kind == "always":
            return frozenset()
        if kind == "pin":
            opened.add(int(reference, 16))
        elif kind == "key":
            opened.add(key_credential(int(reference)))
    return frozenset(opened) or NEVER


# The operations each kind of EF has (docs/free-area.md, "File types").
OPERATIONS = {
    "transparent": ("update",),
    "record": ("update", "append"),
    "counter": ("update", "decrease", "increase"),
}


def _free_ef(item: dict[str, object], name: str) -> tuple[EfSpec, bytes | None, tuple[bytes, ...]]:
    """One declared EF: its spec, its initial transparent content, its initial records."""
    fid = int(str(item["fid"]), 16)
    kind = str(item.get("type", "transparent"))
    writes = tuple((op, _access(item.get(op))) for op in OPERATIONS.get(kind, ()))
    read = _access(item.get("read"), "always")
    label = f"{name} {kind} EF"
    if kind == "counter":
        width = int(str(item.get("width", 4)))
        maximum = int(str(item.get("maximum", 256**width - 1)))
        values = item.get("values", [])
        records = tuple(int(str(v)).to_bytes(width, "big") for v in values)  # type: ignore[attr-defined]
        ef = EfSpec(fid, label, None, read, Structure.COUNTER, writes, width, None, maximum)
        return ef, None, records
    if kind == "record":
        records = tuple(bytes.fromhex(str(r)) for r in item.get("records", []))  # type: ignore[attr-defined]
        size, most = int(str(item["record_size"])), int(str(item["max_records"]))
        return EfSpec(fid, label, None, read, Structure.RECORD, writes, size, most), None, records
    content = bytes.fromhex(str(item.get("content", "")))
    return EfSpec(fid, label, int(str(item["size"])), read, writes=writes), content, ()


def _free_app(raw: dict[str, object]) -> FreeApp:
    name = str(raw["name"])
    efs, keys, contents, records = [], [], {}, {}
    rsa_keys: list[tuple[KeySpec, rsa.RSAPublicKey]] = []
    for item in raw.get("files", []):  # type: ignore[attr-defined]
        fid = int(str(item["fid"]), 16)
        if str(item.get("type", "transparent")) == "rsa_key":
            use = _access(item.get("use"), "always")  # for a gate's INTERNAL AUTHENTICATE
            key = KeySpec(fid, f"{name} key", use, KeyUse.INTERNAL_AUTHENTICATE)
            keys.append(key)
            public = _private_pem(item["private_key"], f"{name}.files.{fid:04X}.private_key")
            rsa_keys.append((key, public))
            continue
        ef, content, initial = _free_ef(item, name)
        efs.append(ef)
        if content is not None:
            contents[fid] = content
        else:
            records[fid] = initial
    pins = {}
    pin_specs = []
    for item in raw.get("pins", []):  # type: ignore[attr-defined]
        fid = int(str(item["fid"]), 16)
        value_format = str(item.get("format", "[0-9]{4}"))
        tries = int(item.get("tries", 3))
        pin_specs.append(PinSpec(fid, "", tries, value_format, INS.CHANGE_REFERENCE_DATA))
        pins[fid] = str(item["value"]).encode()
    aes, aes_specs = {}, []
    for item in raw.get("keys", []):  # type: ignore[attr-defined]
        number = int(str(item["id"]))
        tries = item.get("tries")
        aes_specs.append(AesKeySpec(number, None if tries is None else int(str(tries))))
        aes[number] = bytes.fromhex(str(item["aes"]))
    spec = AppSpec(
        aid=bytes.fromhex(str(raw["aid"])),
        name=f"free area: {name}",
        section="§10 free area",
        efs=tuple(efs),
        pins=tuple(pin_specs),
        keys=tuple(keys),
        free_area=True,
        aes_keys=tuple(aes_specs),
    )
    return FreeApp(spec, contents, records, pins, tuple(rsa_keys), aes)


@dataclass(frozen=True)
class ProfileFacts:
    name: str
    atr: bytes
    pins: dict[str, str]
    counters: dict[str, int]
    quirks: Quirks
    certificates: dict[str, bytes] = field(default_factory=dict)  # auth, auth_ca, sign, sign_ca
    free_area: tuple[FreeApp, ...] = ()
    efs: dict[ObjectKey, bytes] = field(default_factory=dict)  # whole EFs the layout fixes
    partial_efs: dict[ObjectKey, Partial] = field(default_factory=dict)
    records: dict[ObjectKey, tuple[bytes, ...]] = field(default_factory=dict)
    # Keys whose signatures the bench checks without a certificate on the card: the 券面
    # APs' card keys, the 共通 AP's key, free-area RSA keys (their public halves).
    public_keys: dict[ObjectKey, rsa.RSAPublicKey] = field(default_factory=dict)
    card_objects: dict[int, bytes] = field(default_factory=dict)  # MF-level GET DATA, by tag

    @property
    def has_sign_cert(self) -> bool:
        return "sign" in self.certificates


def profile_path(name_or_path: str) -> Path:
    if "/" in name_or_path or name_or_path.endswith(".toml"):
        return Path(name_or_path)
    return PROFILES_DIR / f"{name_or_path}.toml"


def _der(pem: object, where: str) -> bytes:
    if not isinstance(pem, str):
        raise ProfileProblem(f"{where}: expected a PEM certificate")
    try:
        return x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)
    except ValueError as error:
        raise ProfileProblem(f"{where}: {error}") from None


def read_profile(name_or_path: str) -> ProfileFacts:
    """The facts of a shipped profile name or a profile file path."""
    path = profile_path(name_or_path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ProfileProblem(f"cannot read profile {path}: {error.strerror or error}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ProfileProblem(f"{path}: not a TOML profile: {error}") from None
    try:
        return _facts(document, path)
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, ProfileProblem):
            raise
        raise ProfileProblem(f"{path}: missing or malformed field ({error})") from None


def _facts(document: dict[str, object], path: Path) -> ProfileFacts:
    def table(name: str) -> dict[str, object]:
        value = document.get(name, {})
        if not isinstance(value, dict):
            raise ProfileProblem(f"{path}: [{name}] must be a table")
        return value

    meta, holder, card = table("profile"), table("holder"), table("card")
    form = str(meta.get("form", "card"))
    if form != "card":
        raise ProfileProblem(f"{path}: form {form!r}: the bench models the plastic card only")
    atr_text = str(meta.get("atr", "jpki"))
    try:
        atr = bytes.fromhex(KNOWN_ATRS.get(atr_text.lower(), atr_text))
    except ValueError:
        names = ", ".join(KNOWN_ATRS)
        raise ProfileProblem(f"{path}: atr {atr_text!r} is not hex, nor one of {names}") from None
    pins = {name: str(value) for name, value in table("pins").items()}
    birth = holder["birth_date"]
    expiry = card["expiry"]
    if not isinstance(birth, date) or not isinstance(expiry, date):
        raise ProfileProblem(f"{path}: holder.birth_date and card.expiry must be dates")
    pins["code_a"] = str(card["my_number"])
    pins["birth"] = era_yymmdd(birth)
    pins["code_b"] = f"{era_yymmdd(birth)}{expiry.year:04d}{card['security_code']}"
    counters = {name: int(str(value)) for name, value in table("counters").items()}
    raw = table("quirks")
    query_sw = raw.get("verified_query_sw")
    quirks = Quirks(
        blocked_sw=int(str(raw.get("blocked_sw", 0x6984))),
        reselect_clears_state=bool(raw.get("reselect_clears_state", False)),
        verified_query_sw=None if query_sw is None else int(str(query_sw)),
        filler=int(str(raw.get("filler", 0xFF))),
        extended_length=bool(raw.get("extended_length", True)),
        t0_chaining=bool(raw.get("t0_chaining", False)),
    )
    keys = table("keys")
    with_sign = bool(table("certificates").get("sign", True))
    certificates = {
        name: _der(keys[f"{name}_cert"], f"{path}: keys.{name}_cert")
        for name in ("auth", "auth_ca", "sign", "sign_ca")
        if name != "sign" or with_sign
    }
    free = tuple(_free_app(raw) for raw in table("free_area").get("apps", []))  # type: ignore[attr-defined]
    holder_facts = Holder(
        name=str(holder["name"]),
        address=str(holder["address"]),
        birth_date=birth,
        sex=str(holder["sex"]),
        my_number=str(card["my_number"]),
        expiry=expiry,
        serial_number=str(card.get("serial_number", "")),
        municipality_code=str(card.get("municipality_code", "")),
    )
    text_ap, visual_ap = table("text_ap"), table("visual_ap")
    text_keys, visual_keys = _ap_keys(text_ap, "text_ap"), _ap_keys(visual_ap, "visual_ap")
    session = text_ap.get("session_key")
    session_key = _private_pem(session, "text_ap.session_key") if session else None
    image = visual_ap.get("my_number_image")
    public_keys = {(app.spec.aid, key.fid): public for app in free for key, public in app.rsa_keys}
    common_key = keys.get("common_auth_key")
    if common_key:
        public_keys[(COMMON.aid, 0x0019)] = _private_pem(common_key, "keys.common_auth_key")
    if text_keys is not None:
        public_keys[(TEXT.aid, 0x0013)] = text_keys.card_key.public_key()
    if visual_keys is not None:
        public_keys[(VISUAL.aid, 0x001A)] = visual_keys.card_key.public_key()
    return ProfileFacts(
        free_area=free,
        name=str(meta.get("name", path.stem)),
        atr=atr,
        pins=pins,
        counters=counters,
        quirks=quirks,
        certificates=certificates,
        efs=national_efs(
            holder_facts,
            text_keys,
            visual_keys,
            session_key,
            _base64(image, "visual_ap.my_number_image") if image else None,
            quirks.filler,
        ),
        partial_efs=partial_efs(holder_facts, quirks.filler),
        records=national_records(holder_facts) if holder_facts.serial_number else {},
        public_keys=public_keys,
        card_objects=card_objects(holder_facts, atr),
    )


def card_objects(holder: Holder, atr: bytes) -> dict[int, bytes]:
    """The MF-level GET DATA objects the profile fixes (docs/card-spec.md §2.3; 0045 is the
    serial of 共通カードAP EF 0001, docs/decisions.md): 0045, 00F0 (municipality), 00F2 (expiry,
    YYYYMMDD), 5F51 (the contact ATR without TS: the profile's, or the default one when the
    profile's is one a contactless reader makes, 3B 8n 80 01 ...)."""
    contactless = atr[1] & 0xF0 == 0x80 and atr[2:4] == b"\x80\x01"
    contact = bytes.fromhex(KNOWN_ATRS["jpki"]) if contactless else atr
    objects = {0x00F2: holder.expiry.strftime("%Y%m%d").encode(), 0x5F51: contact[1:]}
    if holder.serial_number:
        objects[0x0045] = holder.serial_number.encode()
    if holder.municipality_code:
        objects[0x00F0] = holder.municipality_code.encode()
    return objects


def _private_key(pem: object, where: str) -> rsa.RSAPrivateKey:
    """A profile's RSA private key (PEM); a test key, so its consistency checks are skipped."""
    try:
        key = load_pem_private_key(
            str(pem).encode(), password=None, unsafe_skip_rsa_key_validation=True
        )
    except (ValueError, TypeError) as error:
        raise ProfileProblem(f"{where}: {error}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ProfileProblem(f"{where}: expected an RSA private key")
    return key


def _private_pem(pem: object, where: str) -> rsa.RSAPublicKey:
    return _private_key(pem, where).public_key()


def _base64(text: object, where: str) -> bytes:
    try:
        return base64.b64decode("".join(str(text).split()), validate=True)
    except binascii.Error as error:
        raise ProfileProblem(f"{where}: not base64 ({error})") from None


def _ap_keys(section: dict[str, object], name: str) -> ApKeys | None:
    """[text_ap] / [visual_ap]: the card key, the municipality key, the CV certificate."""
    if not all(section.get(k) for k in ("card_key", "municipality_key", "cv_certificate")):
        return None
    return ApKeys(
        _private_key(section["card_key"], f"{name}.card_key"),
        _private_key(section["municipality_key"], f"{name}.municipality_key"),
        _base64(section["cv_certificate"], f"{name}.cv_certificate"),
    )
