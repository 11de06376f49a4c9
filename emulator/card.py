"""The card: power, selection, security state and the command dispatcher; `open_card`."""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from .apdu import INS, SW, CommandApdu, StatusError
from .apps import common, free_area, jpki, juki, text, visual
from .files import (
    MAX_PIN_LENGTH,
    Application,
    CardObject,
    CounterEF,
    Pin,
    RecordEF,
    RsaKey,
    TransparentEF,
    encode_records,
    key_access,
)
from .layers import CardInterface, T0Chaining, masked
from .personalize import profile as _profiles
from .personalize.profile import Profile, Quirks
from .store import CardStore, PinRecord, PinState, StateLockedError

__all__ = ["Card", "StateLockedError", "open_card"]

log = logging.getLogger(__name__)

_OK = b"\x90\x00"
# GlobalPlatform ISD: selecting it restores the power-on state (docs/card-spec.md §2.1).
ISD_AID = bytes.fromhex("A0000001510000")
_CMAC_LENGTH = 16
_CHALLENGE_LENGTHS = (8, 16)  # what EXTERNAL AUTHENTICATE accepts from GET CHALLENGE

Handler = Callable[[CommandApdu], bytes]


def _sw(sw: int) -> bytes:
    return sw.to_bytes(2, "big")


class Card:
    """A powered (or not) card holding applications, answering APDUs as bytes."""

    def __init__(
        self, applications: Sequence[Application], store: CardStore, atr: bytes, quirks: Quirks
    ) -> None:
        self.atr = atr
        self._applications = tuple(applications)
        self._store = store
        self._quirks = quirks
        self._powered = False
        self._app: Application | None = None
        self._ef: CardObject | None = None
        self._verified: set[int] = set()  # PIN FIDs and key_access() of authenticated keys
        self._challenge = b""  # the last GET CHALLENGE, until EXTERNAL AUTHENTICATE uses it
        self._pin_states: dict[int, dict[int, PinState]] = {
            id(app): {pin.fid: store.pins[pin.state_name] for pin in app.pins()}
            for app in self._applications
        }
        self._iso: dict[int, Handler] = {
            INS.SELECT: self._select,
            INS.READ_BINARY: self._read_binary,
            INS.VERIFY: self._verify,
            INS.CHANGE_REFERENCE_DATA: self._change_reference_data,
            INS.GET_CHALLENGE: self._get_challenge,
            INS.INTERNAL_AUTHENTICATE: self._internal_authenticate,
            INS.READ_RECORD: self._read_record,
            INS.GET_DATA: self._get_data,
            INS.GET_RESPONSE: self._get_response,
            INS.UPDATE_BINARY: self._update_binary,
            INS.UPDATE_RECORD: self._update_record,
            INS.APPEND_RECORD: self._append_record,
            INS.DECREASE: self._decrease,
            INS.INCREASE: self._increase,  # CLA 00; CLA 80 INS 32 is CHANGE KEY
            INS.EXTERNAL_AUTHENTICATE: self._external_authenticate,
        }
        self._proprietary: dict[int, Handler] = {
            INS.COMPUTE_SIGNATURE: self._compute_signature,
            INS.CHANGE_KEY: self._change_key,
            INS.SET_SESSION_KEY: self._set_session_key,
        }

    # -- power ------------------------------------------------------------------------------

    def power_on(self) -> bytes:
        """Power the card on (a cold reset) and return the ATR."""
        self._clear_session()
        self._powered = True
        return self.atr

    def reset(self) -> bytes:
        """Warm reset: security state and selection end; returns the ATR."""
        return self.power_on()

    def power_off(self) -> None:
        self._clear_session()
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

    def _clear_session(self) -> None:
        self._app = None
        self._ef = None
        self._verified.clear()
        self._challenge = b""

    # -- dispatch ---------------------------------------------------------------------------

    def transmit(self, capdu: bytes) -> bytes:
        """Process one command APDU and return the response APDU (data + SW)."""
        if not self._powered:
            self.power_on()
        try:
            apdu = CommandApdu.parse(capdu)
            cla = apdu.cla
            if cla == 0x00:
                handler = self._iso.get(apdu.ins)
            elif cla == 0x80:
                handler = self._proprietary.get(apdu.ins)
            else:
                return _sw(self._class_error(cla, apdu.ins))
            if handler is None:
                other = self._proprietary if cla == 0x00 else self._iso
                return _sw(SW.CLA_NOT_SUPPORTED if apdu.ins in other else SW.INS_NOT_SUPPORTED)
            if apdu.extended and not self._quirks.extended_length:
                return _sw(SW.WRONG_LENGTH)
            return handler(apdu)
        except StatusError as error:
            return _sw(error.sw)
        except Exception:
            log.exception("internal error on APDU %s", masked(capdu))
            return _sw(SW.NO_PRECISE_DIAGNOSIS)

    @staticmethod
    def _class_error(cla: int, ins: int) -> int:
        """The status word for a CLA other than 00 / 80 (docs/decisions.md #19, #20)."""
        if 0x40 <= cla <= 0x7F:
            return SW.LOGICAL_CHANNEL_NOT_SUPPORTED
        if cla >= 0xA0 or cla & 0x20:
            return SW.CLA_NOT_SUPPORTED
        if cla & 0x03:
            return SW.LOGICAL_CHANNEL_NOT_SUPPORTED
        if cla & 0x0C:
            return (
                SW.SECURE_MESSAGING_NOT_SUPPORTED
                if ins == INS.SELECT
                else SW.SM_DATA_OBJECT_MISSING
            )
        return SW.COMMAND_CHAINING_NOT_SUPPORTED

    # -- SELECT -----------------------------------------------------------------------------

    def _select(self, apdu: CommandApdu) -> bytes:
        p1 = apdu.p1
        if p1 == 0x04:
            return self._select_application(apdu)
        if p1 == 0x02:
            if apdu.p2 != 0x0C:
                raise StatusError(SW.INCORRECT_P1_P2)
            if len(apdu.data) != 2:
                raise StatusError(SW.WRONG_LENGTH)
            if self._app is None:
                raise StatusError(SW.FILE_NOT_FOUND)
            obj = self._app.objects.get(apdu.data[0] << 8 | apdu.data[1])
            if obj is None:
                raise StatusError(SW.FILE_NOT_FOUND)
            self._ef = obj
            return _OK
        if p1 == 0x00:
            # No MF: 3F00 is not found; otherwise refused until an application is selected,
            # and then accepted without changing anything (docs/card-spec.md §2.1).
            if apdu.data == b"\x3f\x00":
                raise StatusError(SW.FILE_NOT_FOUND)
            if self._app is None:
                raise StatusError(SW.INCORRECT_P1_P2)
            return _OK
        raise StatusError(SW.INCORRECT_P1_P2)

    def _select_application(self, apdu: CommandApdu) -> bytes:
        """SELECT by DF name (first match of a prefix). An unknown name is 6A82 whatever P2
        says, so no middleware probe with an odd P2 mistakes this card for another (the
        order of the checks is not known from a card: an assumption)."""
        name, p2 = apdu.data, apdu.p2
        if not name:
            raise StatusError(SW.FILE_NOT_FOUND)
        isd = ISD_AID.startswith(name)
        app = None if isd else next((a for a in self._applications if a.aid.startswith(name)), None)
        if app is None and not isd:
            raise StatusError(SW.FILE_NOT_FOUND)
        if p2 not in (0x00, 0x0C):
            raise StatusError(SW.INCORRECT_P1_P2)
        if app is None:  # the ISD: back to the power-on state
            self._clear_session()
            return b"\x6f\x09\x84\x07" + ISD_AID + _OK if p2 == 0x00 else _OK
        if app is not self._app or self._quirks.reselect_clears_state:
            self._verified.clear()
            self._challenge = b""
        self._app = app
        self._ef = None
        return app.fci() + _OK if p2 == 0x00 else _OK

    # -- READ BINARY / READ RECORD ----------------------------------------------------------

    def _object_by_sfi(self, sfi: int) -> CardObject:
        obj = self._app.objects.get(sfi) if self._app is not None and sfi else None
        if obj is None:
            raise StatusError(SW.FILE_NOT_FOUND)
        return obj

    def _binary_file(self, apdu: CommandApdu) -> tuple[TransparentEF, int]:
        """The EF and offset of READ/UPDATE BINARY: P1 bit 8 clear, a 15-bit offset in the
        current EF; P1 = 80|SFI, that EF (made current) and an 8-bit offset in P2."""
        p1 = apdu.p1
        ef: CardObject | None
        if p1 & 0x80:
            if p1 & 0x60:
                raise StatusError(SW.INCORRECT_P1_P2)
            ef = self._ef = self._object_by_sfi(p1 & 0x1F)
            offset = apdu.p2
        else:
            ef = self._ef
            if ef is None:
                raise StatusError(SW.NO_CURRENT_EF)
            offset = p1 << 8 | apdu.p2
        if not isinstance(ef, TransparentEF):
            raise StatusError(SW.COMMAND_INCOMPATIBLE_WITH_FILE)
        return ef, offset

    def _read_binary(self, apdu: CommandApdu) -> bytes:
        ef, offset = self._binary_file(apdu)
        le = apdu.le
        if le is None or apdu.data:
            raise StatusError(SW.WRONG_LENGTH)
        if not ef.read.granted(self._verified):
            raise StatusError(SW.SECURITY_STATUS_NOT_SATISFIED)
        data = ef.data
        if offset >= len(data):
            raise StatusError(SW.OFFSET_OUTSIDE_EF)
        return data[offset : offset + le] + _OK

    def _record_file(self, p2: int, mode: int) -> CardObject:
        """The EF of a record command: P2 = (SFI << 3) | mode names that EF (made current),
        P2 = mode the current EF. READ/UPDATE RECORD, DECREASE, INCREASE use mode 04 (record
        number in P1), APPEND RECORD 00; no record pointer is kept, so other modes are 6A86."""
        if p2 & 0x07 != mode:
            raise StatusError(SW.INCORRECT_P1_P2)
        if p2 >> 3:
            self._ef = self._object_by_sfi(p2 >> 3)
        elif self._ef is None:
            raise StatusError(SW.NO_CURRENT_EF)
        return self._ef

    def _read_record(self, apdu: CommandApdu) -> bytes:
        """READ RECORD P1 (P2 = 04: the current EF; (SFI << 3) | 04: that EF, made current)."""
        ef = self._record_file(apdu.p2, 0x04)
        if not isinstance(ef, RecordEF | CounterEF):
            raise StatusError(SW.COMMAND_INCOMPATIBLE_WITH_FILE)
        if apdu.le is None or apdu.data:
            raise StatusError(SW.WRONG_LENGTH)
        if not ef.read.granted(self._verified):
            raise StatusError(SW.SECURITY_STATUS_NOT_SATISFIED)
        number = apdu.p1
        if not 1 <= number <= len(ef.records):
            raise StatusError(SW.RECORD_NOT_FOUND)
        # An Le shorter than the record returns its first Le bytes, as READ BINARY does.
        return ef.records[number - 1][: apdu.le] + _OK

    # -- writes (free area; national EFs refuse them with 6982) -------------------------------

    def _save(self, fid: int, content: bytes) -> None:
        """Store an EF's new content durably; only then may the card answer 9000."""
        assert self._app is not None  # an EF is only current inside an application
        self._store.save_file(self._app.aid, fid, content)

    def _update_binary(self, apdu: CommandApdu) -> bytes:
        """UPDATE BINARY: offsets as READ BINARY; data past the end of the EF is 6A84."""
        ef, offset = self._binary_file(apdu)
        data = apdu.data
        if not data or apdu.le is not None:
            raise StatusError(SW.WRONG_LENGTH)
        if not ef.update.granted(self._verified):
            raise StatusError(SW.SECURITY_STATUS_NOT_SATISFIED)
        old = ef.data
        if offset >= len(old):
            raise StatusError(SW.OFFSET_OUTSIDE_EF)
        end = offset + len(data)
        if end > len(old):
            raise StatusError(SW.NOT_ENOUGH_MEMORY)
        new = old[:offset] + data + old[end:]
        self._save(ef.fid, new)
        ef.data = new
        return _OK

    def _update_record(self, apdu: CommandApdu) -> bytes:
        """UPDATE RECORD P1: replace that record; longer than the EF's records is 6700."""
        ef = self._record_file(apdu.p2, 0x04)
        if not isinstance(ef, RecordEF | CounterEF):
            raise StatusError(SW.COMMAND_INCOMPATIBLE_WITH_FILE)
        data = apdu.data
        if not data or apdu.le is not None:
            raise StatusError(SW.WRONG_LENGTH)
        if not ef.update.granted(self._verified):
            raise StatusError(SW.SECURITY_STATUS_NOT_SATISFIED)
        number = apdu.p1
        if not 1 <= number <= len(ef.records):
            raise StatusError(SW.RECORD_NOT_FOUND)
        if isinstance(ef, CounterEF):
            if len(data) != ef.width:
                raise StatusError(SW.WRONG_LENGTH)
            if int.from_bytes(data, "big") > ef.maximum:
                raise StatusError(SW.WRONG_DATA)
        elif len(data) > ef.record_size:
            raise StatusError(SW.WRONG_LENGTH)
        records = ef.records.copy()
        records[number - 1] = data
        self._save(ef.fid, encode_records(records))
        ef.records = records
        return _OK

    def _append_record(self, apdu: CommandApdu) -> bytes:
        """APPEND RECORD (P1 00): a new last record; a full EF is 6A84."""
        if apdu.p1 != 0x00:
            raise StatusError(SW.INCORRECT_P1_P2)
        ef = self._record_file(apdu.p2, 0x00)
        if not isinstance(ef, RecordEF):
            raise StatusError(SW.COMMAND_INCOMPATIBLE_WITH_FILE)
        data = apdu.data
        if not data or apdu.le is not None:
            raise StatusError(SW.WRONG_LENGTH)
        if not ef.append.granted(self._verified):
            raise StatusError(SW.SECURITY_STATUS_NOT_SATISFIED)
        if len(data) > ef.record_size:
            raise StatusError(SW.WRONG_LENGTH)
        if len(ef.records) >= ef.max_records:
            raise StatusError(SW.NOT_ENOUGH_MEMORY)
        records = [*ef.records, data]
        self._save(ef.fid, encode_records(records))
        ef.records = records
        return _OK

    def _step_counter(self, apdu: CommandApdu, decrease: bool) -> bytes:
        """DECREASE / INCREASE record P1 of a counter EF by the amount in the data field
        (1..width bytes, big-endian); the new value is returned when Le is present. Going
        below 0 or above the counter's maximum is 6985 and changes nothing."""
        ef = self._record_file(apdu.p2, 0x04)
        if not isinstance(ef, CounterEF):
            raise StatusError(SW.COMMAND_INCOMPATIBLE_WITH_FILE)
        amount = apdu.data
        if not 1 <= len(amount) <= ef.width:
            raise StatusError(SW.WRONG_LENGTH)
        if not (ef.decrease if decrease else ef.increase).granted(self._verified):
            raise StatusError(SW.SECURITY_STATUS_NOT_SATISFIED)
        number = apdu.p1
        if not 1 <= number <= len(ef.records):
            raise StatusError(SW.RECORD_NOT_FOUND)
        step = int.from_bytes(amount, "big")
        value = int.from_bytes(ef.records[number - 1], "big") + (-step if decrease else step)
        if not 0 <= value <= ef.maximum:
            raise StatusError(SW.CONDITIONS_NOT_SATISFIED)
        record = value.to_bytes(ef.width, "big")
        records = ef.records.copy()
        records[number - 1] = record
        self._save(ef.fid, encode_records(records))
        ef.records = records
        return (b"" if apdu.le is None else record[: apdu.le]) + _OK

    def _decrease(self, apdu: CommandApdu) -> bytes:
        return self._step_counter(apdu, decrease=True)

    def _increase(self, apdu: CommandApdu) -> bytes:
        return self._step_counter(apdu, decrease=False)

    # -- PINs -------------------------------------------------------------------------------

    def _pin(self, p2: int) -> tuple[Pin, PinState]:
        """The PIN named by P2: 80 = the current EF, 80|SFI = that key (docs/card-spec.md §2)."""
        if p2 & 0xE0 != 0x80:
            raise StatusError(SW.INCORRECT_P1_P2)
        if p2 == 0x80:
            obj = self._ef
            if not isinstance(obj, Pin):
                raise StatusError(SW.NO_CURRENT_EF)
        else:
            obj = self._app.objects.get(p2 & 0x1F) if self._app is not None else None
            if not isinstance(obj, Pin):
                raise StatusError(SW.REFERENCE_DATA_NOT_FOUND)
        assert self._app is not None
        return obj, self._pin_states[id(self._app)][obj.fid]

    def _blocked(self) -> StatusError:
        return StatusError(self._quirks.blocked_sw)

    def _verify(self, apdu: CommandApdu) -> bytes:
        if apdu.p1 != 0x00:
            raise StatusError(SW.INCORRECT_P1_P2)
        pin, state = self._pin(apdu.p2)
        value = apdu.data
        if apdu.le is not None or len(value) > MAX_PIN_LENGTH:
            raise StatusError(SW.WRONG_LENGTH)
        if not value:  # retry query: costs no try
            if pin.fid in self._verified and self._quirks.verified_query_sw is not None:
                return _sw(self._quirks.verified_query_sw)
            return _sw(SW.VERIFY_FAILED | state.remaining)
        if state.remaining == 0:
            raise self._blocked()
        if hmac.compare_digest(value, state.value):
            if state.remaining != state.max_tries:
                self._store.set_remaining(state, state.max_tries)
            self._verified.add(pin.fid)
            return _OK
        self._verified.discard(pin.fid)
        self._store.set_remaining(state, state.remaining - 1)  # durable before the answer
        return _sw(SW.VERIFY_FAILED | state.remaining)

    def _change(self, apdu: CommandApdu, p1: int) -> bytes:
        """CHANGE REFERENCE DATA (00 24 01 80) / CHANGE KEY (80 32 00 80) after VERIFY."""
        if apdu.p1 != p1:
            raise StatusError(SW.INCORRECT_P1_P2)
        pin, state = self._pin(apdu.p2)
        if pin.change_ins != apdu.ins:
            raise StatusError(SW.CONDITIONS_NOT_SATISFIED)
        if not apdu.data or apdu.le is not None or len(apdu.data) > MAX_PIN_LENGTH:
            raise StatusError(SW.WRONG_LENGTH)  # a value VERIFY could not send is no PIN
        if state.remaining == 0:
            raise self._blocked()
        if pin.fid not in self._verified:
            raise StatusError(SW.SECURITY_STATUS_NOT_SATISFIED)
        if not pin.accepts(apdu.data):
            raise StatusError(SW.WRONG_DATA)
        self._store.set_value(state, apdu.data)
        return _OK

    def _change_reference_data(self, apdu: CommandApdu) -> bytes:
        return self._change(apdu, 0x01)

    def _change_key(self, apdu: CommandApdu) -> bytes:
        return self._change(apdu, 0x00)

    # -- keys -------------------------------------------------------------------------------

    def _key(self, p2: int) -> RsaKey:
        """The key named by P2: 80 = the current EF, 80|SFI = that key EF, 00 = the AP's."""
        obj: CardObject | None
        if p2 == 0x80:
            obj = self._ef
        elif p2 == 0x00:
            app = self._app
            if app is None or app.default_key is None:
                raise StatusError(SW.INCORRECT_P1_P2)
            obj = app.objects[app.default_key]
        elif p2 & 0xE0 == 0x80:
            obj = self._object_by_sfi(p2 & 0x1F)
        else:
            raise StatusError(SW.INCORRECT_P1_P2)
        if not isinstance(obj, RsaKey):
            raise StatusError(SW.NO_CURRENT_EF)
        return obj

    def _compute_signature(self, apdu: CommandApdu) -> bytes:
        if apdu.extended:
            raise StatusError(SW.WRONG_LENGTH)
        if apdu.p1 > 0x05:
            raise StatusError(SW.INCORRECT_P1_P2)
        key = self._key(apdu.p2)
        if not key.use.granted(self._verified):
            raise StatusError(SW.SECURITY_STATUS_NOT_SATISFIED)
        return key.sign(apdu.p1, apdu.data) + _OK

    def _internal_authenticate(self, apdu: CommandApdu) -> bytes:
        """Only keys made for it answer; JPKI keys sign only with 80 2A (docs/decisions.md #32)."""
        if apdu.p1 != 0x00 or apdu.p2 == 0x00:
            raise StatusError(SW.INCORRECT_P1_P2)
        key = self._key(apdu.p2)
        if not key.use.granted(self._verified):
            raise StatusError(SW.SECURITY_STATUS_NOT_SATISFIED)
        if not key.internal_authenticate:
            raise StatusError(SW.CONDITIONS_NOT_SATISFIED)
        if apdu.extended or apdu.le is None:
            raise StatusError(SW.WRONG_LENGTH)
        return key.authenticate(apdu.data) + _OK

    def _external_authenticate(self, apdu: CommandApdu) -> bytes:
        """EXTERNAL AUTHENTICATE 00 82 00 (80|key): the host's AES-CMAC of the last 8- or
        16-byte challenge opens key:<n> until reset or application change (free area)."""
        if apdu.p1 != 0x00 or apdu.p2 & 0xE0 != 0x80:
            raise StatusError(SW.INCORRECT_P1_P2)
        key = self._app.keys.get(apdu.p2 & 0x1F) if self._app is not None else None
        if key is None:
            raise StatusError(SW.REFERENCE_DATA_NOT_FOUND)
        if len(apdu.data) != _CMAC_LENGTH or apdu.le is not None:
            raise StatusError(SW.WRONG_LENGTH)
        state = None if key.state_name is None else self._store.pins[key.state_name]
        if state is not None and state.remaining == 0:
            raise self._blocked()
        challenge, self._challenge = self._challenge, b""  # one answer per challenge
        if len(challenge) not in _CHALLENGE_LENGTHS:
            raise StatusError(SW.CONDITIONS_NOT_SATISFIED)
        opened = key_access(key.number)
        if hmac.compare_digest(apdu.data, key.mac(challenge)):
            if state is not None and state.remaining != state.max_tries:
                self._store.set_remaining(state, state.max_tries)
            self._verified.add(opened)
            return _OK
        self._verified.discard(opened)
        if state is None:
            raise StatusError(SW.AUTHENTICATION_FAILED)
        self._store.set_remaining(state, state.remaining - 1)  # durable before the answer
        return _sw(SW.VERIFY_FAILED | state.remaining)

    def _set_session_key(self, apdu: CommandApdu) -> bytes:
        """SET SESSION KEY (80 AE): each national AP refuses it as measured
        (docs/card-spec.md §2.4);
        the text AP wants its PIN first. Secure messaging is not emulated."""
        app = self._app
        if app is None:
            raise StatusError(SW.INS_NOT_SUPPORTED)
        if not app.session_key_use.granted(self._verified):
            raise StatusError(SW.SECURITY_STATUS_NOT_SATISFIED)
        raise StatusError(app.session_key_sw)

    # -- other ISO commands -----------------------------------------------------------------

    def _get_challenge(self, apdu: CommandApdu) -> bytes:
        if apdu.p1 or apdu.p2:
            raise StatusError(SW.INCORRECT_P1_P2)
        if apdu.extended:
            raise StatusError(SW.CONDITIONS_NOT_SATISFIED)
        if apdu.le is None or apdu.data:
            raise StatusError(SW.WRONG_LENGTH)
        self._challenge = os.urandom(apdu.le)
        return self._challenge + _OK

    def _get_data(self, apdu: CommandApdu) -> bytes:
        # No GET DATA objects are emulated (the MF-level ones are optional, docs/card-spec.md §2.3).
        raise StatusError(SW.REFERENCE_DATA_NOT_FOUND)

    def _get_response(self, apdu: CommandApdu) -> bytes:
        # Answers come whole (T=1); with the t0_chaining quirk the layer answers instead.
        raise StatusError(SW.CONDITIONS_NOT_SATISFIED)


def open_card(profile: str | Path | Profile, state_dir: str | Path) -> CardInterface:
    """Open the card personalised from `profile`, keeping its live state in `state_dir`.

    `profile` is a shipped profile name, a path to a profile file, or a loaded Profile.
    `state_dir` is created (0700) if missing; a live card holding it raises StateLockedError.
    The card comes inside the layers its profile asks for (T=0 chaining).
    """
    loaded = profile if isinstance(profile, Profile) else _profiles.load_profile(profile)
    applications = [
        jpki.build(loaded),
        text.build(loaded),
        visual.build(loaded),
        juki.build(loaded),
        common.build(loaded),
    ]
    store = CardStore.open(
        Path(state_dir),
        profile_id=loaded.fingerprint,
        profile_label=f"{loaded.name} ({loaded.path})",
        pins=[_personalised(pin, loaded) for app in applications for pin in app.pins()],
        free_capacity=loaded.free_area.capacity,
        free_apps=[free_area.record(spec) for spec in loaded.free_area.apps],
    )
    try:
        applications += free_area.installed(store.free_apps())
    except BaseException:
        store.close()
        raise
    card: CardInterface = Card(applications, store, loaded.atr, loaded.quirks)
    if loaded.quirks.t0_chaining:
        card = T0Chaining(card)
    return card


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
