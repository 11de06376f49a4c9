"""The command handlers, grouped by what they act on, and the table that routes an APDU's
class and instruction to one of them (`DISPATCH`, by CLA then INS)."""

from __future__ import annotations

from collections.abc import Mapping

from ..apdu import INS
from ..session import Handler
from . import card_data, files, free_area, keys, pins, secure_messaging, select

ISO: dict[int, Handler] = {  # CLA 00
    INS.SELECT: select.select,
    INS.READ_BINARY: files.read_binary,
    INS.UPDATE_BINARY: files.update_binary,
    INS.READ_RECORD: files.read_record,
    INS.UPDATE_RECORD: files.update_record,
    INS.APPEND_RECORD: files.append_record,
    INS.VERIFY: pins.verify,
    INS.CHANGE_REFERENCE_DATA: pins.change_reference_data,
    INS.INTERNAL_AUTHENTICATE: keys.internal_authenticate,
    INS.DECREASE: free_area.decrease,
    INS.INCREASE: free_area.increase,  # CLA 80 INS 32 is CHANGE KEY
    INS.GET_CHALLENGE: free_area.get_challenge,
    INS.EXTERNAL_AUTHENTICATE: free_area.external_authenticate,
    INS.GET_DATA: card_data.get_data,
    INS.GET_RESPONSE: card_data.get_response,
}

PROPRIETARY: dict[int, Handler] = {  # CLA 80
    INS.COMPUTE_SIGNATURE: keys.compute_signature,
    INS.CHANGE_KEY: pins.change_key,
    INS.SET_SESSION_KEY: secure_messaging.set_session_key,
    INS.LAST_COMMAND: card_data.last_command,
}

DISPATCH: Mapping[int, Mapping[int, Handler]] = {0x00: ISO, 0x80: PROPRIETARY}
