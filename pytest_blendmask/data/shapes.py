"""Shape classes of the synthetic set, their exact rasterisation and their fills.

A shape is a closed region in continuous image coordinates. A pixel belongs to it when the
pixel's centre ``(x + 0.5, y + 0.5)`` lies inside; there is no anti-aliasing, so the pixels a
shape paints are exactly its mask and the annotations are exact by construction.

Sizes are circumscribed diameters: a shape of size ``2 * radius`` fits in a circle of that
diameter (a square of size s has side s / sqrt(2)). Colours are RGB; the BGR flip happens once,
when ``synthetic.generate_sample`` returns the image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross")
NUM_CLASSES = len(CLASS_NAMES)

MIN_DIAMETER = 12.0
# Largest size as a fraction of the shorter image side: large enough for the coarse FPN
# levels to matter, small enough that several objects still fit in one image.
MAX_DIAMETER_FRACTION = 0.45

TEXTURES: tuple[str, ...] = ("solid", "stripes", "checker", "noise")

_CIRCLE, _SQUARE, _TRIANGLE, _STAR, _RING, _CROSS = range(NUM_CLASSES)

# Class-specific proportion ranges (fraction of the radius). They vary the look within a
# class without making classes ambiguous: a fat star never becomes a pentagon, a thin ring
# never becomes a disc, a cross always has visible arms.
_STAR_INNER = (0.38, 0.55)
_RING_INNER = (0.45, 0.72)
_CROSS_ARM = (0.22, 0.38)


@dataclass(frozen=True)
class Shape:
    """Geometry of one object, in image pixels.

    Attributes:
        class_id: index into ``CLASS_NAMES``.
        cx, cy: centre in continuous image coordinates.
        radius: circumradius (half the size).
        angle: rotation in radians, counter-clockwise on screen.
        inner: star inner radius, ring hole radius or cross arm half-width as a fraction of
            ``radius``; 0 for circle, square and triangle, which have no such proportion.
    """

    class_id: int
    cx: float
    cy: float
    radius: float
    angle: float
    inner: float


@dataclass(frozen=True)
class Fill:
    """How a shape's pixels are coloured.

    Attributes:
        colour: main RGB colour, 0..255.
        texture: one of ``TEXTURES``.
        colour2: second RGB colour of stripes and checker (a darker shade of ``colour``, so the
            object still reads as one object); equal to ``colour`` for solid and noise.
        period: stripe period or checker cell size in pixels.
        angle: stripe or checker orientation in radians.
    """

    colour: tuple[float, float, float]
    texture: str
    colour2: tuple[float, float, float]
    period: float
    angle: float


def random_shape(rng: np.random.Generator, class_id: int, height: int, width: int) -> Shape:
    """Draw a shape of ``class_id`` with a log-uniform size, uniform centre and rotation.

    The size is log-uniform between ``MIN_DIAMETER`` and ``MAX_DIAMETER_FRACTION`` of the
    shorter side so small and large objects are equally common per octave. The centre may be
    anywhere in the image, so shapes near the border are cut off as in real photos.
    """
    max_diameter = max(MIN_DIAMETER, MAX_DIAMETER_FRACTION * min(height, width))
    diameter = math.exp(rng.uniform(math.log(MIN_DIAMETER), math.log(max_diameter)))
    inner_range = {_STAR: _STAR_INNER, _RING: _RING_INNER, _CROSS: _CROSS_ARM}.get(class_id)
    return Shape(
        class_id=class_id,
        cx=float(rng.uniform(0, width)),
        cy=float(rng.uniform(0, height)),
        radius=diameter / 2,
        angle=float(rng.uniform(0, 2 * math.pi)),
        inner=float(rng.uniform(*inner_range)) if inner_range else 0.0,
    )


def polygon(shape: Shape) -> np.ndarray | None:
    """Vertices (float64[V, 2], x then y, image coordinates) of polygonal classes.

    Returns None for circle and ring, which are rasterised from their radii instead.
    """
    r, c = shape.radius, shape.class_id
    if c == _SQUARE:
        ang = np.pi / 4 + np.arange(4) * np.pi / 2
        local = np.stack([np.cos(ang), np.sin(ang)], axis=1) * r
    elif c == _TRIANGLE:
        ang = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        local = np.stack([np.cos(ang), np.sin(ang)], axis=1) * r
    elif c == _STAR:
        ang = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, r * shape.inner)
        local = np.stack([np.cos(ang) * rad, np.sin(ang) * rad], axis=1)
    elif c == _CROSS:
        # A plus sign: arms of half-width a reaching out to r, traced as one 12-gon.
        a = r * shape.inner
        local = np.array(
            [(a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r),
             (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a), (-a, -r)],
            dtype=np.float64,
        )
    else:
        return None
    cos, sin = math.cos(shape.angle), math.sin(shape.angle)
    rot = np.array([[cos, -sin], [sin, cos]])
    return local @ rot.T + (shape.cx, shape.cy)


def rasterize(shape: Shape, height: int, width: int) -> np.ndarray:
    """Exact mask (bool[H, W]) of the pixels whose centres lie inside ``shape``.

    Only the shape's bounding box is evaluated, which keeps large images cheap.
    """
    mask = np.zeros((height, width), dtype=bool)
    verts = polygon(shape)
    if verts is None:
        lo = (shape.cx - shape.radius, shape.cy - shape.radius)
        hi = (shape.cx + shape.radius, shape.cy + shape.radius)
    else:
        lo, hi = verts.min(axis=0), verts.max(axis=0)
    x0, y0 = max(0, math.floor(lo[0])), max(0, math.floor(lo[1]))
    x1, y1 = min(width, math.ceil(hi[0]) + 1), min(height, math.ceil(hi[1]) + 1)
    if x0 >= x1 or y0 >= y1:
        return mask
    px = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5
    py = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5
    if verts is None:
        d2 = (px - shape.cx) ** 2 + (py - shape.cy) ** 2
        inside = d2 <= shape.radius**2
        if shape.class_id == _RING:
            inside &= d2 >= (shape.radius * shape.inner) ** 2
    else:
        inside = _point_in_polygon(px, py, verts)
    mask[y0:y1, x0:x1] = inside
    return mask


def _point_in_polygon(px: np.ndarray, py: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Even-odd rule, vectorised over pixels: a horizontal ray from each pixel centre towards
    +x crosses the boundary an odd number of times iff the centre is inside. Works for the
    non-convex star and cross as well as the convex classes.
    """
    inside = np.zeros(np.broadcast_shapes(px.shape, py.shape), dtype=bool)
    for (xa, ya), (xb, yb) in zip(verts, np.roll(verts, -1, axis=0)):
        if ya == yb:  # a horizontal edge is never crossed by a horizontal ray
            continue
        straddles = (ya > py) != (yb > py)
        x_cross = xa + (py - ya) * ((xb - xa) / (yb - ya))
        inside ^= straddles & (px < x_cross)
    return inside


def random_fill(
    rng: np.random.Generator, avoid: list[np.ndarray], min_distance: float = 80.0
) -> Fill:
    """Draw a fill whose main colour is at least ``min_distance`` (RGB L2) from every colour
    in ``avoid`` (the background and the objects underneath), so each object stays visible.

    After a few rejected draws the most distant candidate is kept: a crowded palette must not
    stall generation.
    """
    best, best_dist = None, -1.0
    for _ in range(8):
        colour = rng.uniform(0, 255, size=3)
        dist = min((float(np.linalg.norm(colour - a)) for a in avoid), default=np.inf)
        if dist > best_dist:
            best, best_dist = colour, dist
        if dist >= min_distance:
            break
    texture = TEXTURES[rng.integers(len(TEXTURES))]
    colour2 = best * rng.uniform(0.35, 0.7) if texture in ("stripes", "checker") else best
    return Fill(
        colour=tuple(best.tolist()),
        texture=texture,
        colour2=tuple(colour2.tolist()),
        period=float(rng.uniform(4, 12)),
        angle=float(rng.uniform(0, math.pi)),
    )


def render_fill(fill: Fill, ys: np.ndarray, xs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RGB values (float32[P, 3]) of ``fill`` at the pixels ``(ys[i], xs[i])``.

    Stripes and checker are evaluated in image coordinates so the pattern is continuous across
    the object; noise is per pixel, drawn from ``rng``.
    """
    colour = np.asarray(fill.colour, dtype=np.float32)
    if fill.texture == "solid":
        return np.broadcast_to(colour, (len(ys), 3)).copy()
    if fill.texture == "noise":
        return colour + rng.normal(0, 28, size=(len(ys), 3)).astype(np.float32)
    cos, sin = math.cos(fill.angle), math.sin(fill.angle)
    u = (xs * cos + ys * sin) / fill.period
    if fill.texture == "stripes":
        second = np.floor(u).astype(np.int64) % 2 == 1
    else:
        v = (-xs * sin + ys * cos) / fill.period
        second = (np.floor(u).astype(np.int64) + np.floor(v).astype(np.int64)) % 2 == 1
    return np.where(second[:, None], np.asarray(fill.colour2, dtype=np.float32), colour)
