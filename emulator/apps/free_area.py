"""Free-area applications (空き領域, docs/decisions.md "The free storage area").

Their declarations (mynacard.personalize.free_area) are installed into the card store, from
the profile when the state is made or later by `mynacard freearea install`; the card builds
them from the store, where their EF contents, PIN values and counters live and change.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..apdu import INS
from ..files import (
    ALWAYS,
    NEVER,
    Access,
    AesKey,
    Application,
    CardObject,
    CounterEF,
    Pin,
    RecordEF,
    RsaKey,
    TransparentEF,
    any_of,
    decode_records,
    encode_records,
    key_access,
)
from ..personalize.fields import ProfileError, document
from ..personalize.free_area import (
    FILLER,
    CounterSpec,
    FreeAppSpec,
    RecordSpec,
    RsaKeySpec,
    TransparentSpec,
    app_from,
    read_app,
)
from ..store import (
    FreeAppRecord,
    FreeAreaStatus,
    PinRecord,
    StateError,
    free_pin_prefix,
    install_free_app,
)


def pin_state_name(app: str, fid: int) -> str:
    """How the store and `mynacard status` name a free-area PIN, e.g. "taxi:0011"."""
    return f"{free_pin_prefix(app)}{fid:04X}"


def key_state_name(app: str, number: int) -> str:
    """How the store names an AES key's retry counter, e.g. "taxi:key1"."""
    return f"{free_pin_prefix(app)}key{number}"


def access(rules: Iterable[str]) -> Access:
    """The Access for declared rules: always, never, or any of pin:<FID> / key:<id>."""
    references = []
    for rule in rules:
        if rule == "always":
            return ALWAYS
        if rule == "never":
            return NEVER
        kind, _, reference = rule.partition(":")
        references.append(int(reference, 16) if kind == "pin" else key_access(int(reference)))
    return any_of(*references)


def record(spec: FreeAppSpec) -> FreeAppRecord:
    """What installing `spec` stores: initial EF contents, PINs and key counters."""
    files: dict[int, bytes] = {}
    for file in spec.files:
        if isinstance(file, TransparentSpec):
            files[file.fid] = file.content + bytes((FILLER,)) * (file.size - len(file.content))
        elif isinstance(file, RecordSpec):
            files[file.fid] = encode_records(list(file.records))
        elif isinstance(file, CounterSpec):
            files[file.fid] = encode_records([v.to_bytes(file.width, "big") for v in file.values])
    pins = [
        PinRecord(
            pin_state_name(spec.name, pin.fid),
            pin.value.encode("ascii"),
            pin.tries,
            pin.tries,
            pin.value_format,
        )
        for pin in spec.pins
    ]
    pins += [
        PinRecord(key_state_name(spec.name, key.number), b"", key.tries, key.tries, "")
        for key in spec.keys
        if key.tries is not None
    ]
    return FreeAppRecord(spec.name, spec.aid, spec.size, spec.definition(), files, tuple(pins))


def build(spec: FreeAppSpec, files: Mapping[int, bytes]) -> Application:
    """The application `spec` declares, its EFs holding `files` (content by FID)."""
    objects: list[CardObject] = []
    for file in spec.files:
        rules = {operation: access(r) for operation, r in file.access.items()}
        if isinstance(file, TransparentSpec):
            objects.append(TransparentEF(file.fid, files[file.fid], rules["read"], rules["update"]))
        elif isinstance(file, RecordSpec):
            objects.append(
                RecordEF(
                    file.fid,
                    decode_records(files[file.fid]),
                    read=rules["read"],
                    update=rules["update"],
                    append=rules["append"],
                    record_size=file.record_size,
                    max_records=file.max_records,
                )
            )
        elif isinstance(file, CounterSpec):
            objects.append(
                CounterEF(
                    file.fid,
                    decode_records(files[file.fid]),
                    width=file.width,
                    maximum=file.maximum,
                    read=rules["read"],
                    update=rules["update"],
                    decrease=rules["decrease"],
                    increase=rules["increase"],
                )
            )
        elif isinstance(file, RsaKeySpec):
            objects.append(RsaKey(file.fid, file.key, rules["use"], internal_authenticate=True))
    objects += [
        Pin(
            pin.fid,
            pin_state_name(spec.name, pin.fid),
            None,
            pin.tries,
            pin.value_format,
            INS.CHANGE_REFERENCE_DATA,
        )
        for pin in spec.pins
    ]
    keys = {
        key.number: AesKey(
            key.number,
            key.value,
            None if key.tries is None else key_state_name(spec.name, key.number),
        )
        for key in spec.keys
    }
    label = spec.description or spec.name
    return Application(spec.aid, label, {obj.fid: obj for obj in objects}, keys=keys)


def _state_error(where: str, problem: str) -> Exception:
    return StateError(f"free-area application in the card state: {where}: {problem}")


def stored_spec(app: FreeAppRecord) -> FreeAppSpec:
    """The declaration the store keeps for `app`; StateError if it no longer reads."""
    return read_app(json.loads(app.definition), _state_error, app.name)


def installed(apps: Iterable[FreeAppRecord]) -> list[Application]:
    """The applications of the store's free area, with their current EF contents;
    StateError if the store lost the content of one of their EFs."""
    applications = []
    for app in apps:
        spec = stored_spec(app)
        lost = [f"{f.fid:04X}" for f in spec.files if not isinstance(f, RsaKeySpec)]
        lost = [fid for fid in lost if int(fid, 16) not in app.files]
        if lost:
            raise _state_error(app.name, f"no stored content for EF {', '.join(lost)}")
        applications.append(build(spec, app.files))
    return applications


def check_stored(apps: list[FreeAppRecord]) -> list[PinRecord]:
    """StateError unless the applications build from the store; the PINs and key counters
    the store must hold for them (store.FreeAreaCheck)."""
    installed(apps)
    return [pin for app in apps for pin in record(stored_spec(app)).pins]


def load_app_file(path: Path) -> FreeAppSpec:
    """Read an application declaration file for `mynacard freearea install`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return app_from(document(data, str(path), "app"))


def install(state_dir: Path, path: Path) -> tuple[FreeAppSpec, FreeAreaStatus]:
    """The issuer installs the application declared in `path` (the card must not be live)."""
    spec = load_app_file(path)
    return spec, install_free_app(state_dir, record(spec))
