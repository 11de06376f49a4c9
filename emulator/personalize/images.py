"""Card-face images of the 券面事項確認AP, made at personalisation (`profile new`).

Text fields are 1-bit PNGs rendered with a real Japanese font; the face photo is a synthetic
greyscale face in a JPEG 2000 (JP2) file (docs/card-spec.md §5, SOL data.rs). Sizes follow the two
measured ones (security code 24×12, My Number 72×12, i.e. about 150 dpi); the name, address
and photo sizes are chosen at that scale (docs/card.md, "The national applications").
"""

from __future__ import annotations

import io
import random
import shutil
import subprocess
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont, features

NAME_IMAGE_WIDTH = 336
NAME_FONT_SIZE = 24
ADDRESS_IMAGE_WIDTH = 336
ADDRESS_FONT_SIZE = 18
SECURITY_CODE_SIZE = (24, 12)  # measured (docs/card-spec.md §5)
MY_NUMBER_SIZE = (72, 12)  # measured (docs/card-spec.md §5)
PHOTO_SIZE = (120, 150)

# Fonts tried first (Debian fonts-ipaexfont-gothic, then other common Japanese fonts).
FONT_CANDIDATES = (
    Path("/usr/share/fonts/opentype/ipaexfont-gothic/ipaexg.ttf"),
    Path("/usr/share/fonts/truetype/fonts-japanese-gothic.ttf"),
    Path("/usr/share/fonts/opentype/ipafont-gothic/ipag.ttf"),
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"),
    Path("/usr/share/fonts/truetype/vlgothic/VL-Gothic-Regular.ttf"),
)
_PROBE = "氏名住所東京都"
_NOT_A_CHARACTER = "\U0010fffd"  # private use: every font draws its missing-glyph box for it


class ImageError(ValueError):
    """An image that cannot be made (no Japanese font, a glyph the font lacks, no JPEG 2000)."""


def find_japanese_font() -> Path:
    """A font file that draws Japanese: a known candidate, else fontconfig's choice."""
    for path in FONT_CANDIDATES:
        if path.is_file() and _draws_japanese(path):
            return path
    if shutil.which("fc-match"):
        result = subprocess.run(
            ["fc-match", "--format=%{file}", ":lang=ja"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
        chosen = Path(result.stdout)
        if result.returncode == 0 and result.stdout and _draws_japanese(chosen):
            return chosen
    raise ImageError(
        "no Japanese font found: install Debian's fonts-ipaexfont-gothic (setup.sh does)"
    )


def _draws_japanese(path: Path) -> bool:
    try:
        font = ImageFont.truetype(str(path), NAME_FONT_SIZE)
    except OSError:  # not a font FreeType can open
        return False
    return not missing_glyphs(font, _PROBE)


def missing_glyphs(font: ImageFont.FreeTypeFont, text: str) -> list[str]:
    """The characters of `text` that `font` would draw as its missing-glyph box."""
    missing_box = bytes(font.getmask(_NOT_A_CHARACTER))
    return sorted(
        {char for char in text if not char.isspace() and bytes(font.getmask(char)) == missing_box}
    )


def _font(path: Path, size: int, text: str) -> ImageFont.FreeTypeFont:
    font = ImageFont.truetype(str(path), size)
    missing = missing_glyphs(font, text)
    if missing:
        raise ImageError(f"{path.name} has no glyph for {''.join(missing)!r}")
    return font


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Lines no wider than `width`, broken after U+3000 where possible, else anywhere."""
    lines: list[str] = []
    line = ""
    for word in text.replace("\u3000", "\u3000\n").split("\n"):
        if font.getlength(line + word) <= width:
            line += word
            continue
        if line:
            lines.append(line)
            line = ""
        for char in word:
            if line and font.getlength(line + char) > width:
                lines.append(line)
                line = ""
            line += char
    return [*lines, line] if line else lines


def _canvas(size: tuple[int, int]) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """A white 1-bit image and a pen that draws glyphs unsmoothed (FreeType mono mode)."""
    image = Image.new("1", size, 1)
    draw = ImageDraw.Draw(image)
    draw.fontmode = "1"
    return image, draw


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def render_text(text: str, font_path: Path, size: int, width: int, max_lines: int = 2) -> bytes:
    """`text` in black on white as a 1-bit PNG `width` pixels wide.

    Long text is wrapped; if it needs more than `max_lines` lines the font shrinks (to no
    less than half `size`) as a card printer does for long names.
    """
    font = _font(font_path, size, text)
    lines = _wrap(text, font, width)
    smallest = size // 2
    while len(lines) > max_lines and size > smallest:
        size -= 1
        font = ImageFont.truetype(str(font_path), size)
        lines = _wrap(text, font, width)
    line_height = size + size // 6
    image, draw = _canvas((width, line_height * len(lines)))
    for number, line in enumerate(lines):
        draw.text((0, number * line_height + size // 12), line, font=font, fill=0)
    return _png(image)


def render_digits(digits: str, font_path: Path, box: tuple[int, int]) -> bytes:
    """`digits` at a fixed pitch across a `box`-sized 1-bit PNG, as large as they fit."""
    width, height = box
    pitch = width // len(digits)
    size = height
    font = _font(font_path, size, digits)
    while size > 4 and any(_ink(font, d)[0] > pitch or _ink(font, d)[1] > height for d in digits):
        size -= 1
        font = ImageFont.truetype(str(font_path), size)
    image, draw = _canvas(box)
    for position, digit in enumerate(digits):
        left, top, right, bottom = font.getbbox(digit)
        x = position * pitch + (pitch - (right - left)) // 2 - left
        y = (height - (bottom - top)) // 2 - top
        draw.text((x, y), digit, font=font, fill=0)
    return _png(image)


def _ink(font: ImageFont.FreeTypeFont, text: str) -> tuple[int, int]:
    """Width and height of the ink of `text`."""
    left, top, right, bottom = font.getbbox(text)
    return int(right - left), int(bottom - top)


def synthetic_face(rng: random.Random, size: tuple[int, int] = PHOTO_SIZE) -> bytes:
    """A made-up greyscale head-and-shoulders portrait as a JP2 file (JPEG 2000)."""
    if not features.check("jpg_2000"):
        raise ImageError("this Pillow cannot write JPEG 2000 (it was built without OpenJPEG)")
    width, height = size
    image = Image.new("L", size)
    background = rng.randint(215, 240)
    image.putdata([background - y * 20 // height for y in range(height) for _ in range(width)])
    draw = ImageDraw.Draw(image)
    cx, cy = width // 2 + rng.randint(-3, 3), height * 2 // 5
    skin, hair, clothes = rng.randint(135, 175), rng.randint(25, 70), rng.randint(45, 110)
    head_w, head_h = rng.randint(29, 34), rng.randint(37, 42)
    draw.ellipse((cx - 58, height - 40, cx + 58, height + 60), fill=clothes)  # shoulders
    draw.rectangle((cx - 12, cy + head_h - 14, cx + 12, height - 32), fill=skin - 20)  # neck
    hair_drop = rng.choice((6, 10, 30))  # short, medium, long hair behind the head
    draw.rounded_rectangle(
        (cx - head_w - 5, cy - head_h - 6, cx + head_w + 5, cy + hair_drop), 24, fill=hair
    )
    for side in (-1, 1):  # ears
        draw.ellipse((cx + side * head_w - 6, cy - 6, cx + side * head_w + 6, cy + 12), fill=skin)
    draw.ellipse((cx - head_w, cy - head_h, cx + head_w, cy + head_h), fill=skin)
    fringe = rng.randint(head_h // 3, head_h // 2)
    draw.chord((cx - head_w, cy - head_h, cx + head_w, cy + fringe), 180, 360, fill=hair)
    eye_y, eye_dx = cy + 4, rng.randint(11, 14)
    for side in (-1, 1):
        ex = cx + side * eye_dx
        draw.line((ex - 7, eye_y - 8, ex + 6, eye_y - 9), fill=hair, width=2)  # eyebrow
        draw.ellipse((ex - 6, eye_y - 3, ex + 6, eye_y + 3), fill=225)
        draw.ellipse((ex - 3, eye_y - 3, ex + 3, eye_y + 3), fill=30)
    draw.line((cx, eye_y + 3, cx - 3, eye_y + 15), fill=skin - 40, width=1)  # nose
    draw.arc((cx - 5, eye_y + 11, cx + 3, eye_y + 18), 0, 180, fill=skin - 40)
    mouth_w, mouth_y = rng.randint(8, 12), eye_y + 24
    draw.arc((cx - mouth_w, mouth_y - 5, cx + mouth_w, mouth_y + 4), 20, 160, fill=80, width=2)
    noise = Image.frombytes("L", size, rng.randbytes(width * height))
    portrait = Image.blend(image.filter(ImageFilter.GaussianBlur(1.0)), noise, 0.06)
    buffer = io.BytesIO()
    portrait.save(buffer, "JPEG2000", irreversible=True, quality_mode="rates", quality_layers=[6])
    return buffer.getvalue()
