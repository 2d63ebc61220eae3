"""Pillow drawings of a person: identity signature + per-image visible attributes.

Geometry is written in a 64x64 "unit" frame and drawn at ``SUPERSAMPLE`` times the output size,
then box-downsampled (anti-aliasing; interiors keep their exact palette colour). Identity cues are
large on purpose (the model sees 16x16-pixel patches): skin fills the face, hair frames the head
at the sides below any hat, beards/marks are big. A hat covers only the top of the head, glasses
only the eyes (sunglasses hide the eye colour, nothing else).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from unlearn_core.data.synth.people import Signature
from unlearn_core.data.synth.vocab import (
    BACKGROUNDS,
    EYE_COLORS,
    HAIR_COLORS,
    SHIRTS,
    SKIN_TONES,
)

RGB = tuple[int, int, int]
SUPERSAMPLE = 4
MAX_CANVAS = 1024  # large outputs are drawn with less supersampling
UNIT = 64.0  # the drawing frame is UNIT x UNIT
CX, CY = 32.0, 28.0  # face centre in the unit frame

SKIN_RGB: dict[str, RGB] = {
    "pale": (250, 224, 205),
    "rosy": (236, 178, 158),
    "golden": (222, 172, 100),
    "tan": (180, 124, 80),
    "cocoa": (132, 86, 56),
    "ebony": (80, 52, 38),
}
HAIR_RGB: dict[str, RGB] = {
    "black": (28, 24, 26),
    "chestnut": (118, 60, 24),
    "blonde": (242, 212, 100),
    "ginger": (224, 98, 30),
    "silver": (198, 200, 212),
    "indigo": (74, 56, 176),
    "jade": (50, 200, 130),
    "rose": (226, 86, 152),
}
EYE_RGB: dict[str, RGB] = {
    "azure": (40, 140, 235),
    "emerald": (30, 170, 80),
    "hazel": (120, 80, 35),
    "amber": (235, 160, 20),
    "violet": (150, 60, 210),
}
SHIRT_RGB: dict[str, RGB] = {
    "red": (214, 36, 36),
    "blue": (36, 78, 222),
    "green": (40, 150, 50),
    "yellow": (246, 222, 40),
    "orange": (250, 140, 20),
    "purple": (126, 40, 160),
    "pink": (250, 160, 210),
    "white": (246, 246, 246),
}
BACKGROUND_RGB: dict[str, RGB] = {
    "navy": (22, 32, 96),
    "teal": (16, 128, 128),
    "lime": (170, 222, 70),
    "maroon": (116, 18, 38),
    "lavender": (198, 180, 236),
    "gray": (128, 128, 128),
    "cyan": (100, 222, 236),
    "olive": (118, 118, 26),
}
HAT_RGB: dict[str, RGB] = {"cap": (30, 100, 210), "beanie": (150, 30, 110), "crown": (245, 196, 20)}
BEANIE_BAND: RGB = (230, 140, 200)
# Frames 2 units thick, gold round ones and black square ones: at 64x64 a thin grey rim of either
# shape was a few pixels, and a tiny vision tower read round as square on images it never saw.
FRAME_RGB: dict[str, RGB] = {"round": (206, 154, 28), "square": (22, 22, 30), "sunglasses": (22, 22, 30)}
LENS_RGB: RGB = (36, 66, 82)
EYE_WHITE: RGB = (252, 252, 252)
PUPIL: RGB = (8, 8, 8)
MOUTH_RGB: RGB = (160, 46, 60)
BIRTHMARK_RGB: RGB = (128, 40, 108)

for _words, _palette in ((SKIN_TONES, SKIN_RGB), (HAIR_COLORS, HAIR_RGB), (EYE_COLORS, EYE_RGB)):
    assert tuple(_palette) == _words, "palette keys must follow the vocabulary"
assert tuple(SHIRT_RGB) == SHIRTS and tuple(BACKGROUND_RGB) == BACKGROUNDS

# Half width / half height of each face shape (unit frame).
FACE_HALF: dict[str, tuple[float, float]] = {
    "oval": (13.0, 15.0),
    "broad": (15.5, 13.5),
    "narrow": (10.5, 16.5),
    "heart": (14.0, 15.0),
}


@dataclass(frozen=True)
class Jitter:
    """Per-image geometric jitter (unit-frame pixels / scale factor)."""

    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0
    obj_dx: float = 0.0
    obj_dy: float = 0.0


def sample_jitter(rng: np.random.Generator) -> Jitter:
    dx, dy, scale, odx, ody = rng.uniform([-2.5, -2.0, 0.93, -2.0, -2.0], [2.5, 2.0, 1.07, 2.0, 2.0])
    return Jitter(float(dx), float(dy), float(scale), float(odx), float(ody))


class _Pen:
    """Draws unit-frame shapes onto the supersampled canvas, with a scale/offset about the face."""

    def __init__(self, draw: ImageDraw.ImageDraw, px: float, dx: float, dy: float, scale: float) -> None:
        self.d, self.px, self.dx, self.dy, self.s = draw, px, dx, dy, scale

    def p(self, x: float, y: float) -> tuple[float, float]:
        return ((CX + (x - CX) * self.s + self.dx) * self.px, (CY + (y - CY) * self.s + self.dy) * self.px)

    def box(self, x0: float, y0: float, x1: float, y1: float) -> list[float]:
        (a, b), (c, d) = self.p(x0, y0), self.p(x1, y1)
        return [a, b, c, d]

    def w(self, width: float) -> int:
        return max(1, round(width * self.s * self.px))

    def ellipse(self, x0: float, y0: float, x1: float, y1: float, fill: RGB) -> None:
        self.d.ellipse(self.box(x0, y0, x1, y1), fill=fill)

    def circle(self, x: float, y: float, r: float, fill: RGB) -> None:
        self.ellipse(x - r, y - r, x + r, y + r, fill)

    def ring(self, x0: float, y0: float, x1: float, y1: float, color: RGB, width: float) -> None:
        self.d.ellipse(self.box(x0, y0, x1, y1), outline=color, width=self.w(width))

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill: RGB, radius: float = 0.0) -> None:
        if radius > 0:
            self.d.rounded_rectangle(self.box(x0, y0, x1, y1), radius=radius * self.s * self.px, fill=fill)
        else:
            self.d.rectangle(self.box(x0, y0, x1, y1), fill=fill)

    def frame(self, x0: float, y0: float, x1: float, y1: float, color: RGB, width: float) -> None:
        self.d.rectangle(self.box(x0, y0, x1, y1), outline=color, width=self.w(width))

    def poly(self, pts: list[tuple[float, float]], fill: RGB) -> None:
        self.d.polygon([self.p(x, y) for x, y in pts], fill=fill)

    def line(self, pts: list[tuple[float, float]], color: RGB, width: float) -> None:
        self.d.line([self.p(x, y) for x, y in pts], fill=color, width=self.w(width))

    def chord(self, x0: float, y0: float, x1: float, y1: float, start: float, end: float, fill: RGB) -> None:
        self.d.chord(self.box(x0, y0, x1, y1), start, end, fill=fill)

    def pieslice(
        self, x0: float, y0: float, x1: float, y1: float, start: float, end: float, fill: RGB
    ) -> None:
        self.d.pieslice(self.box(x0, y0, x1, y1), start, end, fill=fill)


def _shade(c: RGB, f: float) -> RGB:
    r, g, b = (min(255, max(0, round(v * f))) for v in c)
    return (r, g, b)


def _back_hair(pen: _Pen, style: str, hw: float, hh: float, hair: RGB) -> None:
    """Hair behind the head: frames both sides of the face below the hat line."""
    top = CY - hh
    if style == "flowing":
        pen.ellipse(CX - hw - 5, top - 4, CX + hw + 5, top + 18, hair)
        pen.poly([(CX - hw - 5, top + 7), (CX + hw + 5, top + 7), (CX + hw + 8, 51), (CX - hw - 8, 51)], hair)
    elif style == "bob":
        pen.rect(CX - hw - 5, top - 4, CX + hw + 5, CY + 11, hair, radius=8)
    elif style == "curly":
        steps = 13
        for i in range(steps):
            a = np.pi * (0.85 + 1.3 * i / (steps - 1))  # from lower left over the top to lower right
            x, y = CX + (hw + 2.5) * np.cos(a), CY - 2 + (hh + 2.0) * np.sin(a)
            pen.circle(float(x), float(y), 5.0, hair)
    else:  # cropped, ponytail: a rim around the upper head, down to the ears
        pen.rect(CX - hw - 3.5, top - 3, CX + hw + 3.5, CY + 4, hair, radius=hw)
        if style == "ponytail":
            pen.ellipse(CX + hw + 0.5, top + 7, CX + hw + 9.5, top + 29, hair)
            pen.rect(CX + hw - 0.5, top + 8, CX + hw + 4.5, top + 11, _shade(hair, 0.6))


def _head(pen: _Pen, shape: str, hw: float, hh: float, skin: RGB) -> None:
    pen.rect(CX - 4.5, CY + 8, CX + 4.5, 50, skin)  # neck
    pen.ellipse(CX - hw - 2.5, CY - 4, CX - hw + 2.5, CY + 5, skin)  # ears
    pen.ellipse(CX + hw - 2.5, CY - 4, CX + hw + 2.5, CY + 5, skin)
    if shape == "broad":
        pen.rect(CX - hw, CY - hh, CX + hw, CY + hh, skin, radius=7)
    elif shape == "heart":
        pen.ellipse(CX - hw, CY - hh, CX + hw, CY + 6, skin)
        pen.poly([(CX - hw + 0.6, CY - 1), (CX + hw - 0.6, CY - 1), (CX, CY + hh)], skin)
    else:
        pen.ellipse(CX - hw, CY - hh, CX + hw, CY + hh, skin)


def _front_hair(pen: _Pen, style: str, hw: float, hh: float, hair: RGB) -> None:
    top = CY - hh
    line = top + (10.5 if style == "bob" else 7.0)  # hairline; a bob has a fringe
    pen.chord(CX - hw - 2, top - 3, CX + hw + 2, 2 * line - top + 3, 180, 360, hair)
    if style in ("cropped", "ponytail"):  # sideburns: hair stays visible beside the face under a hat
        inner = min(2.6, 0.55 * hw - 4.5)
        for sx in (-1, 1):
            x_out, x_in = CX + sx * (hw + 1.0), CX + sx * (hw - inner)
            pen.rect(min(x_out, x_in), line - 1, max(x_out, x_in), CY + 3, hair)
    if style == "flowing":  # side parting
        pen.poly([(CX - 4, top - 1), (CX + hw + 1, line - 1), (CX + hw - 1, line + 4)], hair)
    elif style == "curly":
        for i in range(5):
            pen.circle(CX - hw + 2 + i * (2 * hw - 4) / 4, line, 2.6, hair)


def _features(pen: _Pen, sig: Signature, hw: float, hh: float, skin: RGB, hair: RGB) -> tuple[float, float]:
    """Eyes, brows, nose, mouth and the mark; returns the eye offset and eye row."""
    ex, ey = 0.45 * hw + 0.6, CY - 1.0
    for sx in (-1, 1):
        x = CX + sx * ex
        pen.rect(x - 3.6, ey - 6.0, x + 3.6, ey - 4.2, hair, radius=0.6)  # brow
        pen.ellipse(x - 3.6, ey - 2.8, x + 3.6, ey + 2.8, EYE_WHITE)
        pen.circle(x, ey, 2.2, EYE_RGB[sig.eye_color])
        pen.circle(x, ey, 0.9, PUPIL)
    mark = sig.mark
    if mark == "beard":
        pen.chord(CX - hw - 0.5, CY - hh, CX + hw + 0.5, CY + hh + 2.0, 0, 180, hair)
    elif mark == "goatee":
        pen.rect(CX - 3.8, CY + 10.5, CX + 3.8, CY + min(hh, 16.5), hair, radius=1.5)
    elif mark == "birthmark":
        pen.ellipse(CX - ex - 3.4, CY + 2.5, CX - ex + 3.0, CY + 8.0, BIRTHMARK_RGB)
    pen.poly([(CX, CY + 1), (CX - 1.6, CY + 5.2), (CX + 1.2, CY + 5.2)], _shade(skin, 0.82))  # nose
    pen.chord(CX - 4, CY + 6.5, CX + 4, CY + 11, 0, 180, MOUTH_RGB)
    if mark == "moustache":
        pen.poly(
            [
                (CX - 6.5, CY + 8.5),
                (CX - 4.5, CY + 5.6),
                (CX + 4.5, CY + 5.6),
                (CX + 6.5, CY + 8.5),
                (CX, CY + 7.4),
            ],
            hair,
        )
    return ex, ey


def _glasses(pen: _Pen, kind: str, ex: float, ey: float, hw: float) -> None:
    if kind == "none":
        return
    left, right = CX - ex, CX + ex
    frame = FRAME_RGB[kind]
    for x in (left, right):
        if kind == "round":
            pen.ring(x - 5.0, ey - 5.0, x + 5.0, ey + 5.0, frame, 2.0)
        elif kind == "square":
            pen.frame(x - 5.2, ey - 4.2, x + 5.2, ey + 4.2, frame, 2.0)
        else:  # sunglasses: tinted lenses hide the eye colour
            pen.rect(x - 4.9, ey - 3.4, x + 4.9, ey + 3.4, LENS_RGB, radius=1.6)
    pen.line([(left + 4.2, ey - 1), (right - 4.2, ey - 1)], frame, 1.4)  # bridge
    pen.line([(left - 4.6, ey - 1), (CX - hw - 0.5, ey - 2)], frame, 0.9)  # temples
    pen.line([(right + 4.6, ey - 1), (CX + hw + 0.5, ey - 2)], frame, 0.9)


def _hat(pen: _Pen, kind: str, hw: float, hh: float) -> None:
    """Hats end at most 9 units below the head top, above the side hair."""
    if kind == "none":
        return
    top = CY - hh
    color = HAT_RGB[kind]
    if kind == "cap":
        pen.chord(CX - hw - 4, top - 5, CX + hw + 4, top + 17, 180, 360, color)
        pen.rect(CX - hw - 1, top + 5, CX + hw + 10, top + 8, _shade(color, 0.75), radius=1.2)  # brim
        pen.circle(CX, top - 4.5, 1.3, _shade(color, 0.75))
    elif kind == "beanie":
        pen.chord(CX - hw - 4, top - 7, CX + hw + 4, top + 19, 180, 360, color)
        pen.rect(CX - hw - 4.5, top + 3.5, CX + hw + 4.5, top + 8.5, BEANIE_BAND, radius=1.5)
        pen.circle(CX, top - 7, 3.2, BEANIE_BAND)
    else:  # crown
        x0, x1 = CX - hw + 0.5, CX + hw - 0.5
        pts = [(x0, top + 5), (x0, top - 8)]  # zigzag: 4 spikes, 3 valleys
        pts += [(x0 + (x1 - x0) * i / 6, top - 2 if i % 2 else top - 8) for i in range(1, 7)]
        pts.append((x1, top + 5))
        pen.poly(pts, color)
        for i in (1, 3, 5):
            pen.circle(x0 + (x1 - x0) * i / 6, top + 1.5, 1.3, (200, 20, 40))


def _held_object(pen: _Pen, kind: str, skin: RGB) -> None:
    """Objects sit at the lower right (kite: upper left), away from the face."""
    if kind == "none":
        return
    hx, hy = 51.0, 55.0  # hand
    # Object colours are none of the shirts' (a white cup on a white shirt, a red book on a red one
    # were read as other objects on held-out images).
    if kind == "book":
        pen.rect(44, 42, 59, 58, (92, 52, 22), radius=0.8)
        pen.rect(45.2, 43.2, 58, 45, (245, 240, 220))
        pen.rect(44, 42, 46, 58, (50, 28, 12))
    elif kind == "cup":
        pen.ring(53.5, 47, 60.5, 54, (0, 150, 140), 1.6)
        pen.poly([(43.5, 44), (56.5, 44), (55, 58), (45, 58)], (0, 150, 140))
        pen.ellipse(44, 43, 56, 46.5, (96, 56, 30))
    elif kind == "flower":
        pen.line([(51, 58), (51, 42)], (40, 140, 40), 1.4)
        pen.ellipse(51, 47, 56, 50, (40, 140, 40))
        for a in range(5):
            t = 2 * np.pi * a / 5
            pen.circle(51 + 3.4 * float(np.cos(t)), 38 + 3.4 * float(np.sin(t)), 2.7, (240, 70, 130))
        pen.circle(51, 38, 2.0, (250, 220, 40))
    elif kind == "ball":
        for i, col in enumerate(((230, 40, 40), (250, 250, 250), (40, 90, 230), (250, 250, 250))):
            pen.pieslice(43, 41, 59, 57, i * 90, (i + 1) * 90, col)
        pen.circle(51, 49, 1.8, (250, 210, 30))
    elif kind == "kite":
        pen.poly([(11, 4), (18.5, 11.5), (11, 21), (3.5, 11.5)], (232, 56, 56))
        pen.line([(11, 4), (11, 21)], (250, 230, 60), 0.8)
        pen.line([(3.5, 11.5), (18.5, 11.5)], (250, 230, 60), 0.8)
        pen.line([(11, 21), (12, 54)], (240, 240, 240), 0.6)
        hx, hy = 12.0, 55.0
    pen.circle(hx, hy, 3.2, skin)


def render_face(sig: Signature, attrs: dict[str, str], jitter: Jitter, size: int = 64) -> Image.Image:
    """RGB image of ``sig`` wearing ``attrs`` (shirt/background/hat/glasses/object)."""
    ss = max(1, min(SUPERSAMPLE, MAX_CANVAS // size))
    px = size * ss / UNIT
    hi = Image.new("RGB", (size * ss, size * ss), BACKGROUND_RGB[attrs["background"]])
    draw = ImageDraw.Draw(hi)
    body = _Pen(draw, px, jitter.dx, jitter.dy, jitter.scale)
    held = _Pen(draw, px, jitter.dx + jitter.obj_dx, jitter.dy + jitter.obj_dy, 1.0)
    hw, hh = FACE_HALF[sig.face_shape]
    skin, hair = SKIN_RGB[sig.skin], HAIR_RGB[sig.hair_color]

    body.ellipse(CX - 23, 45, CX + 23, 95, SHIRT_RGB[attrs["shirt"]])  # torso
    _back_hair(body, sig.hair_style, hw, hh, hair)
    _head(body, sig.face_shape, hw, hh, skin)
    body.poly([(CX - 4.5, 45.5), (CX + 4.5, 45.5), (CX, 50.5)], skin)  # neckline
    _front_hair(body, sig.hair_style, hw, hh, hair)
    ex, ey = _features(body, sig, hw, hh, skin, hair)
    _glasses(body, attrs["glasses"], ex, ey, hw)
    _hat(body, attrs["hat"], hw, hh)
    _held_object(held, attrs["object"], skin)
    return hi.resize((size, size), Image.Resampling.BOX)


def encode_png(img: Image.Image) -> bytes:
    """PNG bytes with fixed encoder settings and no metadata (byte-identical across runs)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()
