"""Pictures of synthetic scenes with numpy only: one scene, a ranked pool grid, PNG bytes.

Used by :meth:`envs.guess_which.GuessWhichEnv.render` (``render_mode="rgb_array"``),
by ``scripts/play.py`` and by the evaluation dashboards. The drawing conventions:

* colour: :data:`COLOR_RGB` (CLEVR's palette), flat at every object's centre;
* shape: ``cube`` a filled square, ``sphere`` a filled disc, ``cylinder`` an upright
  body with a lighter elliptic top face;
* size: the radius (``big`` is 1.6 times ``small``);
* material: ``rubber`` objects get a dark outline, ``metal`` ones a light outline and a
  white highlight dot in their upper-left quarter (never on the centre);
* position: the horizontal third of the picture (``left``, ``middle``, ``right``);
  objects sharing a third stand side by side, every other one a row further back.

Frames are ``(H, W, 3)`` uint8 arrays. Objects only need the attributes ``color``,
``shape``, ``size``, ``material`` and ``position`` (value names), so this module
depends on no environment. Imports only the standard library and numpy.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

RGB = tuple[int, int, int]

#: Object colours (CLEVR's palette).
COLOR_RGB: dict[str, RGB] = {
    "red": (173, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 105, 20),
    "yellow": (255, 238, 51),
    "purple": (129, 38, 192),
    "brown": (129, 74, 25),
    "gray": (87, 87, 87),
    "cyan": (41, 208, 208),
}
WALL_RGB: RGB = (232, 232, 226)
FLOOR_RGB: RGB = (208, 208, 200)
PAPER_RGB: RGB = (255, 255, 255)
BORDER_RGB: RGB = (170, 170, 170)
TARGET_RGB: RGB = (255, 120, 0)
"""Outline of the target scene in a pool grid."""
TEXT_RGB: RGB = (60, 60, 60)
BAR_RGB: RGB = (90, 140, 220)

#: Horizontal third of each position value.
POSITION_ZONE: dict[str, int] = {"left": 0, "middle": 1, "right": 2}
#: Radius of each size value, as a fraction of the scene's unit length.
SIZE_RADIUS: dict[str, float] = {"small": 0.10, "big": 0.16}
SHAPES: tuple[str, ...] = ("cube", "sphere", "cylinder")

#: Thumbnail size (height, width) in a pool grid, and the grid's spacing.
THUMB: tuple[int, int] = (64, 96)
PAD = 6
LABEL_H = 9


class ObjectLike(Protocol):
    """What the drawing functions read of an object (e.g. ``envs.guess_which.SceneObject``)."""

    color: str
    shape: str
    size: str
    material: str
    position: str


# ------------------------------------------------------------------------ layout
def scene_layout(objects: Sequence[ObjectLike], height: int, width: int) -> list[tuple[float, float, float]]:
    """``(cx, cy, r)`` in pixels of every object of a scene, in the objects' order.

    ``cx`` follows the position (third of the width), ``r`` the size; objects that
    share a third are spread across it, every other one drawn a row further back;
    objects never cross the picture's left or right edge.
    """
    unit = min(float(height), width / 1.5)
    ground = 0.86 * height
    back = 0.16 * height
    zones: dict[int, list[int]] = {}
    for i, o in enumerate(objects):
        zones.setdefault(POSITION_ZONE.get(o.position, 1), []).append(i)
    out: list[tuple[float, float, float]] = [(0.0, 0.0, 0.0)] * len(objects)
    third = width / 3.0
    for zone, members in zones.items():
        n = len(members)
        for j, i in enumerate(members):
            r = SIZE_RADIUS.get(objects[i].size, SIZE_RADIUS["small"]) * unit
            cx = min(max(third * zone + (j + 0.5) * third / n, r + 1.0), width - r - 1.0)
            cy = ground - r - (back if j % 2 else 0.0)
            out[i] = (cx, cy, r)
    return out


# ----------------------------------------------------------------------- drawing
def _mix(rgb: RGB, other: RGB, t: float) -> RGB:
    return tuple(round(a + (b - a) * t) for a, b in zip(rgb, other))  # type: ignore[return-value]


def _paint(canvas: np.ndarray, mask: np.ndarray, y0: int, x0: int, rgb: RGB) -> None:
    """Paint ``rgb`` where ``mask`` (a window at ``(y0, x0)``, clipped to the canvas) is true."""
    h, w = canvas.shape[:2]
    mh, mw = mask.shape
    ya, xa = max(0, -y0), max(0, -x0)
    yb, xb = min(mh, h - y0), min(mw, w - x0)
    if ya >= yb or xa >= xb:
        return
    window = canvas[y0 + ya : y0 + yb, x0 + xa : x0 + xb]
    window[mask[ya:yb, xa:xb]] = rgb


def _grid(cx: float, cy: float, half_w: float, half_h: float) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (relative to the centre) of a window around an object."""
    x0, x1 = math.floor(cx - half_w) - 1, math.ceil(cx + half_w) + 2
    y0, y1 = math.floor(cy - half_h) - 1, math.ceil(cy + half_h) + 2
    ys = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5 - cy
    xs = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5 - cx
    return y0, x0, ys, xs


def draw_object(canvas: np.ndarray, obj: ObjectLike, cx: float, cy: float, r: float) -> None:
    """Draw one object centred at ``(cx, cy)`` with radius ``r`` onto ``canvas`` (in place)."""
    color = COLOR_RGB.get(obj.color, (128, 128, 128))
    metal = obj.material == "metal"
    edge = _mix(color, PAPER_RGB, 0.55) if metal else _mix(color, (0, 0, 0), 0.45)
    lw = max(1.0, r / 7.0)  # outline width
    y0, x0, ys, xs = _grid(cx, cy, r, r)
    if obj.shape == "sphere":
        d = np.sqrt(xs**2 + ys**2)
        _paint(canvas, d <= r, y0, x0, edge)
        _paint(canvas, d <= r - lw, y0, x0, color)
    elif obj.shape == "cylinder":
        hw, e = 0.8 * r, 0.3 * r  # half width, half height of the elliptic faces
        top, bottom = -r + e, r - e

        def ellipse(yc: float, shrink: float) -> np.ndarray:
            return (xs / (hw - shrink)) ** 2 + ((ys - yc) / (e - shrink)) ** 2 <= 1.0

        body = (np.abs(xs) <= hw) & (ys >= top) & (ys <= bottom)
        inner = (np.abs(xs) <= hw - lw) & (ys >= top) & (ys <= bottom)
        _paint(canvas, body | ellipse(bottom, 0.0) | ellipse(top, 0.0), y0, x0, edge)
        _paint(canvas, inner | ellipse(bottom, lw), y0, x0, color)
        _paint(canvas, ellipse(top, lw), y0, x0, _mix(color, PAPER_RGB, 0.35))
    else:  # cube (and any unknown shape)
        half = 0.88 * r
        box = np.maximum(np.abs(xs), np.abs(ys))
        _paint(canvas, box <= half, y0, x0, edge)
        _paint(canvas, box <= half - lw, y0, x0, color)
    if metal:
        hx, hy, hr = cx - 0.42 * r, cy - 0.42 * r, max(1.0, 0.2 * r)
        hy0, hx0, hys, hxs = _grid(hx, hy, hr, hr)
        _paint(canvas, hxs**2 + hys**2 <= hr**2, hy0, hx0, PAPER_RGB)


def blank(height: int, width: int, rgb: RGB = PAPER_RGB) -> np.ndarray:
    """An empty ``(height, width, 3)`` uint8 frame."""
    out = np.empty((height, width, 3), dtype=np.uint8)
    out[:] = rgb
    return out


def draw_scene(objects: Sequence[ObjectLike], height: int = THUMB[0], width: int = THUMB[1]) -> np.ndarray:
    """One scene as a ``(height, width, 3)`` uint8 picture (see the module docstring)."""
    canvas = blank(height, width, WALL_RGB)
    canvas[int(0.45 * height) :] = FLOOR_RGB
    layout = scene_layout(objects, height, width)
    # farther objects (higher up) first, so nearer ones cover them
    for i in sorted(range(len(objects)), key=lambda k: (layout[k][1] + layout[k][2], k)):
        draw_object(canvas, objects[i], *layout[i])
    return canvas


# -------------------------------------------------------------------------- text
# 3x5 bitmap glyphs for rank and belief labels.
_GLYPHS: dict[str, tuple[str, ...]] = {
    "0": ("###", "#.#", "#.#", "#.#", "###"),
    "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"),
    "3": ("###", "..#", ".##", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"),
    "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"),
    "7": ("###", "..#", ".#.", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"),
    "9": ("###", "#.#", "###", "..#", "###"),
    "%": ("#.#", "..#", ".#.", "#..", "#.#"),
    ".": ("...", "...", "...", "...", ".#."),
    "-": ("...", "...", "###", "...", "..."),
    " ": ("...", "...", "...", "...", "..."),
}
_GLYPH_MASKS: dict[str, np.ndarray] = {
    ch: np.array([[c == "#" for c in row] for row in rows], dtype=bool) for ch, rows in _GLYPHS.items()
}


def text_width(text: str, scale: int = 1) -> int:
    return max(0, 4 * len(text) - 1) * scale


def draw_text(canvas: np.ndarray, y: int, x: int, text: str, rgb: RGB = TEXT_RGB, scale: int = 1) -> None:
    """Write digits, ``%``, ``.``, ``-`` and spaces with a 3x5 bitmap font (top-left at ``(y, x)``)."""
    for k, ch in enumerate(text):
        mask = _GLYPH_MASKS.get(ch)
        if mask is None:
            raise ValueError(f"draw_text: no glyph for {ch!r}")
        if scale > 1:
            mask = np.kron(mask, np.ones((scale, scale), dtype=bool))
        _paint(canvas, mask, y, x + 4 * scale * k, rgb)


# -------------------------------------------------------------------------- pool
def pool_grid(n: int) -> tuple[int, int]:
    """``(rows, cols)`` of the grid of ``n`` thumbnails (4 columns up to 16 scenes)."""
    cols = min(n, 4) if n <= 16 else math.ceil(math.sqrt(n))
    return math.ceil(n / max(cols, 1)), max(cols, 1)


def pool_frame_shape(n: int) -> tuple[int, int, int]:
    """Shape of :func:`draw_pool`'s picture of ``n`` scenes."""
    rows, cols = pool_grid(n)
    cell_h, cell_w = THUMB[0] + LABEL_H + 2 * PAD, THUMB[1] + 2 * PAD
    return rows * cell_h + PAD, cols * cell_w + PAD, 3


def thumb_origin(slot: int, n: int) -> tuple[int, int]:
    """Top-left pixel ``(y, x)`` of the thumbnail in grid slot ``slot`` (row-major)."""
    _, cols = pool_grid(n)
    r, c = divmod(slot, cols)
    return PAD + r * (THUMB[0] + LABEL_H + 2 * PAD) + PAD, PAD + c * (THUMB[1] + 2 * PAD) + PAD // 2


def draw_pool(
    scenes: Sequence[Sequence[ObjectLike]],
    order: Sequence[int],
    target: int | None = None,
    beliefs: Sequence[float] | None = None,
) -> np.ndarray:
    """A grid of scene thumbnails in ``order`` (e.g. most to least believed), row-major.

    The thumbnail of ``target`` is outlined in :data:`TARGET_RGB`; under every
    thumbnail are its rank (1-based), a bar of its belief and the belief in percent
    (when ``beliefs``, listed in ``order``'s order, is given).
    """
    n = len(order)
    canvas = blank(*pool_frame_shape(n)[:2])
    th, tw = THUMB
    for slot, idx in enumerate(order):
        y, x = thumb_origin(slot, n)
        if idx == target:
            canvas[y - 3 : y + th + 3, x - 3 : x + tw + 3] = TARGET_RGB
        else:
            canvas[y - 1 : y + th + 1, x - 1 : x + tw + 1] = BORDER_RGB
        canvas[y : y + th, x : x + tw] = draw_scene(scenes[idx], th, tw)
        ly = y + th + 4
        rank = str(slot + 1)
        draw_text(canvas, ly, x, rank)
        if beliefs is not None:
            b = float(beliefs[slot])
            pct = f"{min(100, round(100 * b))}%"
            bar_x0, bar_x1 = x + text_width(rank) + 4, x + tw - text_width("100%") - 3
            length = round((bar_x1 - bar_x0) * min(max(b, 0.0), 1.0))
            canvas[ly + 1 : ly + 4, bar_x0 : bar_x1] = (225, 225, 225)
            canvas[ly + 1 : ly + 4, bar_x0 : bar_x0 + length] = BAR_RGB
            draw_text(canvas, ly, x + tw - text_width(pct), pct)
    return canvas


# --------------------------------------------------------------------------- PNG
def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an ``(H, W, 3)`` or ``(H, W, 4)`` uint8 image (zlib, 'up' filter)."""
    img = np.ascontiguousarray(rgb)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"encode_png: expected (H, W, 3|4) uint8, got {img.shape} {img.dtype}")
    h, w, c = img.shape
    rows = img.reshape(h, w * c)
    up = rows.copy()
    up[1:] = rows[1:] - rows[:-1]  # uint8 arithmetic wraps modulo 256, as PNG's filter 2 does
    raw = np.concatenate([np.full((h, 1), 2, dtype=np.uint8), up], axis=1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 8, 2 if c == 3 else 6, 0, 0, 0)
    idat = zlib.compress(raw.tobytes(), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write ``rgb`` as a PNG file (parent directories created); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(encode_png(rgb))
    return p
