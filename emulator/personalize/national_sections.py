"""`profile new`: the [text_ap] and [visual_ap] sections (keys, CV certificates, images)."""

from __future__ import annotations

import base64
import random
import secrets

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from mynacard.personalize.cvc import (
    CVC_ROOTS,
    ApKind,
    cvc_root_private_key,
    issue_cvc,
    municipality_key_id,
)
from mynacard.personalize.images import (
    ADDRESS_FONT_SIZE,
    ADDRESS_IMAGE_WIDTH,
    MY_NUMBER_SIZE,
    NAME_FONT_SIZE,
    NAME_IMAGE_WIDTH,
    SECURITY_CODE_SIZE,
    ImageError,
    find_japanese_font,
    render_digits,
    render_text,
    synthetic_face,
)
from mynacard.personalize.persona import Persona
from mynacard.personalize.profile import ProfileError
from mynacard.personalize.rsakeys import new_rsa_key


def national_sections(seed: int | None, persona: Persona, municipality_code: str) -> list[str]:
    """The [text_ap] and [visual_ap] sections of a new profile, as TOML lines.

    Seeded: every key and the face follow from the seed, and the municipality keys from
    `municipality_code` (seeded profiles of one town share them, as real cards do). The CV
    certificates always come from the fixed test roots (`cvc.CVC_ROOTS`).
    """

    def key(label: str) -> rsa.RSAPrivateKey:
        return new_rsa_key(None if seed is None else label)

    face_rng = secrets.SystemRandom() if seed is None else random.Random(f"mynacard/{seed}/face")
    holder = persona.holder
    try:
        font = find_japanese_font()
        images = {
            "name_image": render_text(holder.name, font, NAME_FONT_SIZE, NAME_IMAGE_WIDTH),
            "address_image": render_text(
                holder.address, font, ADDRESS_FONT_SIZE, ADDRESS_IMAGE_WIDTH, max_lines=3
            ),
            "photo": synthetic_face(face_rng),
            "security_code_image": render_digits(persona.security_code, font, SECURITY_CODE_SIZE),
            "my_number_image": render_digits(persona.my_number, font, MY_NUMBER_SIZE),
        }
    except ImageError as exc:
        raise ProfileError(f"card-face images: {exc}") from None

    lines = ["", "[text_ap]", "# 券面事項入力補助AP (docs/card.md, 'The national applications')."]
    lines += _ap_keys(
        "text",
        card_key=key(f"mynacard/{seed}/text-card-key"),
        municipality_key=key(f"mynacard/municipality/{municipality_code}/text"),
        municipality_code=municipality_code,
    )
    session_key = key(f"mynacard/{seed}/text-session-key")
    lines += [
        "# EF 0006's key pair: the card publishes the public half; SET SESSION KEY brings",
        "# a secure-messaging key encrypted to it (docs/secure-messaging.md).",
        f"session_key = '''\n{_private_pem(session_key)}'''",
        "",
        "[visual_ap]",
        "# 券面事項確認AP (docs/card.md, 'The national applications').",
    ]
    lines += _ap_keys(
        "visual",
        card_key=key(f"mynacard/{seed}/visual-card-key"),
        municipality_key=key(f"mynacard/municipality/{municipality_code}/visual"),
        municipality_code=municipality_code,
    )
    lines.append("# Card-face images, rendered from [holder] and [card] by `profile new`.")
    lines += [f"{name} = '''\n{_base64_lines(data)}'''" for name, data in images.items()]
    return lines


def _ap_keys(
    kind: ApKind,
    *,
    card_key: rsa.RSAPrivateKey,
    municipality_key: rsa.RSAPrivateKey,
    municipality_code: str,
) -> list[str]:
    root = CVC_ROOTS[kind]
    certificate = issue_cvc(
        root.key_id,
        cvc_root_private_key(kind),
        municipality_key_id(municipality_code, kind),
        municipality_key.public_key(),
    )
    return [
        "# The AP's own key: signs challenges (80 2A 00 00) with no PIN.",
        f"card_key = '''\n{_private_pem(card_key)}'''",
        "# The municipality's key (not on the card): signs the AP's records; EF 0004 certifies it.",
        f"municipality_key = '''\n{_private_pem(municipality_key)}'''",
        "# EF 0004: its CV certificate from the test root (base64).",
        f"cv_certificate = '''\n{_base64_lines(certificate)}'''",
    ]


def _private_pem(key: rsa.RSAPrivateKey) -> str:
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    return pem.decode("ascii")


def _base64_lines(data: bytes) -> str:
    """`data` as base64 in lines of 76 characters, ending with a newline."""
    text = base64.b64encode(data).decode("ascii")
    return "".join(text[i : i + 76] + "\n" for i in range(0, len(text), 76))
