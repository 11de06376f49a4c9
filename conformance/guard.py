"""The PIN-budget guard: nothing that passes it can lock a card that is not disposable.

It sits between the bench and a non-disposable target and decides, command by command,
from its own reading of the traffic (it trusts neither the model nor the state machine):

- only the instructions the bench needs pass (no unknown INS can reach a real card);
- VERIFY with no data (the retry query) always passes: it costs no try;
- before any VERIFY with data the counter is read with the retry query (the caller's, if
  it came right before, else the guard sends its own), except for the correct PIN once a
  9000 has confirmed it; an unconfirmed correct PIN needs >= 3 tries left (if the user
  gave a wrong one, 2 are still left);
- a wrong value needs the user's correct PIN (confirmed by a 9000), budget left
  (`budget` wrong tries per key per run) and >= 3 tries left, so at least 2 remain; after
  it only the retry query, SELECT, reset and the correct PIN pass until the counter is
  restored;
- CHANGE REFERENCE DATA / CHANGE KEY pass only with the current value (no real change).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .apdu import INS, SW, Apdu, MalformedApdu, select_aid, select_ef, sw_of, verify
from .spec import CATALOGUE, ISD_AID, AppSpec, PinSpec
from .targets import Target

MIN_TRIES_LEFT = 2

ALLOWED = frozenset(
    {
        (0x00, INS.SELECT),
        (0x00, INS.READ_BINARY),
        (0x00, INS.READ_RECORD),
        (0x00, INS.VERIFY),
        (0x00, INS.CHANGE_REFERENCE_DATA),
        (0x00, INS.GET_CHALLENGE),
        (0x00, INS.INTERNAL_AUTHENTICATE),
        (0x00, INS.GET_DATA),
        (0x00, INS.GET_RESPONSE),
        (0x80, INS.COMPUTE_SIGNATURE),
        (0x80, INS.CHANGE_KEY),
    }
)
PIN_INS = frozenset({INS.VERIFY, INS.CHANGE_REFERENCE_DATA, INS.CHANGE_KEY})

PinKey = tuple[bytes, int]


class GuardRefusal(Exception):
    """The guard did not send a command; the message says why."""


@dataclass
class _Unknown:
    """Selection the guard cannot be sure of (an odd answer, an SFI access, ...)."""


UNSURE = _Unknown()


@dataclass
class PinGuard:
    """Wraps `target`; `pins` are correct values by PIN name, `budget` wrong tries per key."""

    target: Target
    pins: dict[str, str] = field(default_factory=dict)
    budget: int = 0
    wrong_tries: dict[PinKey, int] = field(default_factory=dict)
    confirmed: set[PinKey] = field(default_factory=set)
    disproved: set[PinKey] = field(default_factory=set)
    refusals: int = 0
    _app: AppSpec | _Unknown | None = None
    _current: int | _Unknown | None = None
    _last_query: tuple[PinKey, int] | None = None
    _owed: PinKey | None = None

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def disposable(self) -> bool:
        return False

    def correct_value(self, key: PinKey) -> bytes | None:
        spec = _pin_spec(key)
        if spec is None or key in self.disproved or spec.name not in self.pins:
            return None
        return self.pins[spec.name].encode()

    def may_try_wrong(self, key: PinKey) -> bool:
        """Whether a wrong try on `key` could pass (budget and a confirmed correct PIN)."""
        return key in self.confirmed and self.wrong_tries.get(key, 0) < self.budget

    # -- the Target interface -----------------------------------------------------------

    def transmit(self, command: bytes) -> bytes:
        try:
            apdu = Apdu.parse(command)
        except MalformedApdu as error:
            raise self._refuse(f"malformed APDU ({error})") from None
        if (apdu.cla, apdu.ins) not in ALLOWED:
            raise self._refuse(f"CLA {apdu.cla:02X} INS {apdu.ins:02X} is not on the allowed list")
        if self._owed is not None and not self._may_pass_while_owed(apdu):
            raise self._refuse("a wrong try must be followed by the correct PIN first")
        if apdu.ins in PIN_INS:
            return self._pin_command(apdu, command)
        response = self.target.transmit(command)
        self._track(apdu, response)
        self._last_query = None
        return response

    def reset(self) -> bytes:
        self._app, self._current, self._last_query = None, None, None
        return self.target.reset()

    def power_cycle(self) -> bytes | None:
        self._app, self._current, self._last_query = None, None, None
        return self.target.power_cycle()

    def fresh(self) -> None:
        self.settle()
        self._app, self._current, self._last_query = None, None, None
        self.target.fresh()

    def close(self) -> None:
        self.settle()
        self.target.close()

    # -- rules --------------------------------------------------------------------------

    def _refuse(self, why: str) -> GuardRefusal:
        self.refusals += 1
        return GuardRefusal(why)

    def _may_pass_while_owed(self, apdu: Apdu) -> bool:
        if apdu.ins == INS.SELECT:
            return True
        return apdu.ins == INS.VERIFY and apdu.p1 == 0 and apdu.le is None

    def _pin_key(self, apdu: Apdu) -> PinKey | None:
        """The key a VERIFY/CHANGE names, when the guard is sure of it."""
        app = self._app
        if not isinstance(app, AppSpec):
            return None
        if apdu.p2 == 0x80:
            fid = self._current
            if not isinstance(fid, int):
                return None
        elif apdu.p2 & 0xE0 == 0x80:
            fid = apdu.p2 & 0x1F
        else:
            return None
        return (app.aid, fid) if app.pin(fid) is not None else None

    def _pin_command(self, apdu: Apdu, command: bytes) -> bytes:
        is_query = (
            apdu.ins == INS.VERIFY and not apdu.data and apdu.le is None and len(command) == 4
        )
        if apdu.extended or ((apdu.cla, apdu.ins) == (0x00, INS.VERIFY) and apdu.p1 != 0):
            raise self._refuse("VERIFY must be a short APDU with P1 = 00")
        key = self._pin_key(apdu)
        if is_query:
            response = self.target.transmit(command)
            sw = sw_of(response)
            if key is not None and sw & 0xFFF0 == SW.VERIFY_FAILED:
                self._last_query = (key, sw & 0x0F)
            else:
                self._last_query = None
            return response
        self._last_query, last = None, self._last_query
        if key is None:
            raise self._refuse("cannot tell which PIN this command names")
        correct = self.correct_value(key)
        if apdu.ins != INS.VERIFY:
            if correct is None or apdu.data != correct or key not in self.confirmed:
                raise self._refuse("CHANGE passes only with the current (confirmed) value")
            return self.target.transmit(command)
        if apdu.le is not None or not apdu.data:
            raise self._refuse("VERIFY with data must be case 3")
        if self._owed is not None and (key != self._owed or apdu.data != correct):
            raise self._refuse("a wrong try must be followed by the correct PIN first")
        is_correct = correct is not None and apdu.data == correct
        if is_correct and key in self.confirmed:
            return self._verify_correct(key, command)  # restores the counter, costs nothing
        if is_correct or (correct is not None and key in self.confirmed):
            remaining = last[1] if last is not None and last[0] == key else self._count(apdu.p2)
        else:
            remaining = 0
        if is_correct:
            if remaining <= MIN_TRIES_LEFT:
                raise self._refuse(f"only {remaining} tries left for an unconfirmed PIN")
            return self._verify_correct(key, command)
        if correct is None or key not in self.confirmed:
            raise self._refuse("no confirmed correct PIN to restore the counter with")
        if self.wrong_tries.get(key, 0) >= self.budget:
            raise self._refuse(f"the wrong-PIN budget ({self.budget}) of this key is spent")
        if remaining - 1 < MIN_TRIES_LEFT:
            raise self._refuse(f"a wrong try now would leave {remaining - 1} tries")
        self.wrong_tries[key] = self.wrong_tries.get(key, 0) + 1
        self._owed = key
        return self.target.transmit(command)

    def _count(self, p2: int) -> int:
        """The guard's own retry query (00 20 00 P2): the tries left, 0 if unreadable."""
        sw = sw_of(self.target.transmit(bytes((0x00, INS.VERIFY, 0x00, p2))))
        return sw & 0x0F if sw & 0xFFF0 == SW.VERIFY_FAILED else 0

    def _verify_correct(self, key: PinKey, command: bytes) -> bytes:
        response = self.target.transmit(command)
        if sw_of(response) == SW.OK:
            self.confirmed.add(key)
            if self._owed == key:
                self._owed = None
        else:
            self.disproved.add(key)
        return response

    def _track(self, apdu: Apdu, response: bytes) -> None:
        """Follow the selection as the card reports it; anything unclear makes it UNSURE."""
        ok = sw_of(response) == SW.OK
        if apdu.ins == INS.SELECT and apdu.p1 == 0x04:
            if not ok:
                self._app, self._current = UNSURE, UNSURE
                return
            matches = [a for a in CATALOGUE if a.aid.startswith(apdu.data)]
            if ISD_AID.startswith(apdu.data) and apdu.data:
                self._app, self._current = (None, None) if not matches else (UNSURE, UNSURE)
                return
            self._app = matches[0] if len(matches) == 1 else UNSURE
            self._current = None
        elif apdu.ins == INS.SELECT and apdu.p1 == 0x02:
            fid = int.from_bytes(apdu.data, "big") if len(apdu.data) == 2 else None
            self._current = fid if ok and fid is not None else UNSURE
        elif apdu.ins == INS.SELECT:
            if ok and apdu.data == b"":
                return
            self._current = UNSURE
        elif (apdu.ins == INS.READ_BINARY and apdu.p1 & 0x80) or (
            apdu.ins in (INS.READ_RECORD, INS.COMPUTE_SIGNATURE, INS.INTERNAL_AUTHENTICATE)
            and apdu.p2 & 0xF8
            and apdu.p2 != 0x80
        ):
            self._current = UNSURE  # an SFI reference may have made another EF current

    # -- restoring ----------------------------------------------------------------------

    def settle(self) -> None:
        """If a wrong try is still owed its correct PIN, restore the counter now."""
        key = self._owed
        if key is None:
            return
        aid, fid = key
        correct = self.correct_value(key)
        self.reset()
        for command in (select_aid(aid), select_ef(fid), verify(b"")):
            self.transmit(command)
        if correct is not None:
            self.transmit(verify(correct))
        self.reset()


def _pin_spec(key: PinKey) -> PinSpec | None:
    aid, fid = key
    app = next((a for a in CATALOGUE if a.aid == aid), None)
    return app.pin(fid) if app is not None else None
