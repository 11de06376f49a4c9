"""The card: power and dispatch by class and instruction to the command handlers
(commands/); `open_card` builds it from a profile and stacks the layers it asks for.

One APDU's path: vpcd.VpcdClient._serve -> [layers] -> Card.transmit -> CommandApdu.parse
-> commands.ISO / commands.PROPRIETARY (CLA 08 / 0C: commands.secure_messaging)
-> a handler(Context, CommandApdu) -> bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from . import commands
from .apdu import INS, SW, CommandApdu, StatusError
from .apps import common, free_area, jpki, juki, text, visual
from .commands import secure_messaging
from .commands.card_data import card_data_objects
from .files import Application, Pin
from .layers import CardInterface, T0Chaining, masked
from .personalize import profile as _profiles
from .personalize.profile import Profile, Quirks
from .session import Context, Handler, Session, sw
from .store import CardStore, PinRecord

__all__ = ["Card", "open_card"]

log = logging.getLogger(__name__)


class Card:
    """A powered (or not) card holding applications, answering APDUs as bytes.

    `handlers` routes CLA, then INS, to a command handler (`commands.DISPATCH`); `form` is
    the profile's ("card" or a smartphone), `card_objects` the MF-level GET DATA objects.
    """

    def __init__(
        self,
        applications: Sequence[Application],
        store: CardStore,
        atr: bytes,
        quirks: Quirks,
        handlers: Mapping[int, Mapping[int, Handler]] = commands.DISPATCH,
        *,
        form: str = "card",
        card_objects: Mapping[int, bytes] | None = None,
    ) -> None:
        self.atr = atr
        self._handlers = handlers
        self._store = store
        self._extended_length = quirks.extended_length
        self._powered = False
        self._session = Session()
        self._context = Context(
            session=self._session,
            applications=tuple(applications),
            quirks=quirks,
            store=store,
            pins={
                app.aid: {pin.fid: store.pins[pin.state_name] for pin in app.pins()}
                for app in applications
            },
            form=form,
            card_objects=dict(card_objects or {}),
        )

    # -- power ------------------------------------------------------------------------------

    def power_on(self) -> bytes:
        """Power the card on (a cold reset) and return the ATR."""
        self._session.clear()
        self._powered = True
        return self.atr

    def reset(self) -> bytes:
        """Warm reset: security state and selection end; returns the ATR."""
        return self.power_on()

    def power_off(self) -> None:
        self._session.clear()
        self._powered = False

    def close(self) -> None:
        """Power off and release the state directory."""
        self.power_off()
        self._store.close()

    def __enter__(self) -> Card:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- dispatch ---------------------------------------------------------------------------

    def transmit(self, capdu: bytes) -> bytes:
        """Process one command APDU and return the response APDU (data + SW)."""
        if not self._powered:
            self.power_on()
        try:
            apdu = CommandApdu.parse(capdu)
            table = self._handlers.get(apdu.cla)
            handler = secure_messaging.route(self._context, apdu, table)
            if handler is None:
                return sw(
                    class_error(apdu.cla, apdu.ins)
                    if table is None
                    else self._unknown_instruction(apdu)
                )
            if apdu.extended and not self._extended_length:
                return sw(SW.WRONG_LENGTH)
            return handler(self._context, apdu)
        except StatusError as error:
            return sw(error.sw)
        except Exception:
            log.exception("internal error on APDU %s", masked(capdu))
            return sw(SW.NO_PRECISE_DIAGNOSIS)

    def _unknown_instruction(self, apdu: CommandApdu) -> int:
        """6E00 for an INS known under another class (docs/decisions.md #20), else 6D00."""
        elsewhere = any(apdu.ins in t for c, t in self._handlers.items() if c != apdu.cla)
        return SW.CLA_NOT_SUPPORTED if elsewhere else SW.INS_NOT_SUPPORTED


def class_error(cla: int, ins: int) -> int:
    """The status word for a CLA other than 00 / 80 (docs/decisions.md #19, #20)."""
    if 0x40 <= cla <= 0x7F:
        return SW.LOGICAL_CHANNEL_NOT_SUPPORTED
    if cla >= 0xA0 or cla & 0x20:
        return SW.CLA_NOT_SUPPORTED
    if cla & 0x03:
        return SW.LOGICAL_CHANNEL_NOT_SUPPORTED
    if cla & 0x0C:
        return SW.SECURE_MESSAGING_NOT_SUPPORTED if ins == INS.SELECT else SW.SM_DATA_OBJECT_MISSING
    return SW.COMMAND_CHAINING_NOT_SUPPORTED


def open_card(
    profile: str | Path | Profile,
    state_dir: str | Path,
    *,
    store_type: type[CardStore] = CardStore,
    handlers: Mapping[int, Mapping[int, Handler]] = commands.DISPATCH,
    exclusive: bool = False,
) -> CardInterface:
    """Open the card personalised from `profile`, keeping its live state in `state_dir`.

    `profile` is a shipped profile name, a path to a profile file, or a loaded Profile.
    `state_dir` is created (0700) if missing; a live card holding it raises StateLockedError.
    The card comes inside the layers its profile asks for (T=0 chaining). `store_type` and
    `handlers` replace the durable store and the command handlers (fault injection and
    deliberately broken cards in tests). `exclusive` locks the state's database to this
    card while it is open (`CardStore.open`): for cards nobody else looks at, such as the
    conformance bench's scratch cards.
    """
    loaded = profile if isinstance(profile, Profile) else _profiles.load_profile(profile)
    phone = loaded.form != "card"  # a smartphone holds the JPKI-AP alone
    builders = [jpki] if phone else [jpki, text, visual, juki, common]
    applications = [builder.build(loaded) for builder in builders]
    store = store_type.open(
        Path(state_dir),
        profile_id=loaded.fingerprint,
        profile_label=f"{loaded.name} ({loaded.path})",
        pins=[_personalised(pin, loaded) for app in applications for pin in app.pins()],
        free_capacity=loaded.free_area.capacity,
        free_apps=[free_area.record(spec) for spec in loaded.free_area.apps],
        profile_source=_source(loaded),
        free_area=free_area.check_stored,
        exclusive=exclusive,
    )
    try:
        applications += free_area.installed(store.free_apps())
    except BaseException:
        store.close()
        raise
    card: CardInterface = Card(
        applications,
        store,
        loaded.atr,
        loaded.quirks,
        handlers,
        form=loaded.form,
        card_objects={} if phone else card_data_objects(loaded),
    )
    if loaded.quirks.t0_chaining:
        card = T0Chaining(card)
    return card


def _source(profile: Profile) -> str:
    """What `load_profile` takes to load `profile` again: a shipped name, or its path."""
    shipped = profile.path.parent == _profiles.PROFILES_DIR
    return profile.path.stem if shipped else str(profile.path.resolve())


def _personalised(pin: Pin, profile: Profile) -> PinRecord:
    """A national application's PIN as the profile sets it (no value if blocked at issuance)."""
    if pin.profile_name is None:
        return PinRecord(pin.state_name, b"", pin.max_tries, pin.max_tries, pin.value_format)
    return PinRecord(
        pin.state_name,
        profile.pins[pin.profile_name].encode(),
        profile.counters.get(pin.profile_name, pin.max_tries),
        pin.max_tries,
        pin.value_format,
    )
