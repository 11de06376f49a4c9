"""What a power-on session holds (selection, verified keys, challenge), and the context a
command handler works in: the session, the card's applications, its quirks and its store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .apdu import SW, CommandApdu, StatusError
from .files import Application, CardObject
from .personalize.profile import Quirks
from .store import CardStore, PinState


@dataclass(slots=True)
class SecureChannel:
    """A secure-messaging session of the text AP (docs/secure-messaging.md): the AES-128
    key SET SESSION KEY delivered, the counter the next CLA 08 command must use, and
    whether a wrong counter broke it (then every SM command answers 69FC)."""

    key: bytes = field(repr=False)
    counter: int = 1
    broken: bool = False


@dataclass(slots=True)
class Session:
    """Security state and selection; all of it ends on reset, power-off and (for the
    verified keys and the challenge) on a change of application; the secure-messaging
    session on any SELECT of an application."""

    app: Application | None = None
    ef: CardObject | None = None
    verified: set[int] = field(default_factory=set)  # PIN FIDs, key_access() of AES keys
    challenge: bytes = b""  # the last GET CHALLENGE, until EXTERNAL AUTHENTICATE uses it
    channel: SecureChannel | None = None  # open by SET SESSION KEY until an AP is selected

    def clear(self) -> None:
        self.app = None
        self.ef = None
        self.verified.clear()
        self.challenge = b""
        self.channel = None

    def enter(self, app: Application, *, keep_security: bool) -> None:
        """Make `app` current with no current EF; its security state starts over unless
        `keep_security` (the same application selected again, without the quirk). A
        secure-messaging session ends either way."""
        self.channel = None
        if not keep_security:
            self.verified.clear()
            self.challenge = b""
        self.app = app
        self.ef = None

    def object_by_sfi(self, sfi: int) -> CardObject:
        """The object named by a short file identifier in the current application (6A82)."""
        obj = self.app.objects.get(sfi) if self.app is not None and sfi else None
        if obj is None:
            raise StatusError(SW.FILE_NOT_FOUND)
        return obj


@dataclass(slots=True)
class Context:
    """Everything a command handler may use: one object, passed with the APDU."""

    session: Session
    applications: tuple[Application, ...]
    quirks: Quirks
    store: CardStore
    pins: dict[bytes, dict[int, PinState]]  # by AID, then PIN FID
    form: str = "card"  # the profile's form: "card" or a smartphone (profile.FORMS)
    card_objects: dict[int, bytes] = field(default_factory=dict)  # MF-level GET DATA, by tag

    @property
    def app(self) -> Application:
        """The current application (only called where one must be selected)."""
        assert self.session.app is not None
        return self.session.app

    def blocked(self) -> StatusError:
        """The status word of a blocked PIN or key (the `blocked_sw` quirk)."""
        return StatusError(self.quirks.blocked_sw)

    def save(self, fid: int, content: bytes) -> None:
        """Store an EF's new content durably; only then may the card answer 9000."""
        self.store.save_file(self.app.aid, fid, content)


Handler = Callable[[Context, CommandApdu], bytes]

OK = b"\x90\x00"


def sw(value: int) -> bytes:
    """A response of a status word alone."""
    return value.to_bytes(2, "big")
