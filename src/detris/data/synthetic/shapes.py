"""The pieces of a synthetic scene: shape kinds, colours, sizes, objects and how a shape is drawn."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = ["SHAPES", "COLORS", "SIZES", "REACH", "SceneObject", "Scene", "draw_shape"]

#: Shape kinds (also the COCO category names, ids 1..4 in this order).
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
#: Named flat colours (RGB); all strongly saturated so that the grey background never matches.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
#: Size classes and their radius range as a fraction of the shorter image side; the gap between
#: the two ranges keeps "small" and "large" visually unambiguous.
SIZES: dict[str, tuple[float, float]] = {"small": (0.06, 0.085), "large": (0.13, 0.17)}

# Distance of the farthest vertex from the centre, in units of the radius, per shape; used to keep
# objects apart (the square's and triangle's corners stick out of the radius circle).
REACH = {"circle": 1.0, "square": 0.9 * np.sqrt(2.0), "triangle": float(np.hypot(0.95, 0.8)), "star": 1.0}
_STAR_INNER = 0.42  # inner/outer radius ratio of the five-pointed star


@dataclass
class SceneObject:
    """One shape of a scene.

    Attributes:
        shape, color, size: the attribute words (see :data:`SHAPES`, :data:`COLORS`, :data:`SIZES`).
        mask: ``(H, W)`` uint8 0/1, exactly the pixels painted with the object's colour.
        centroid: ``(x, y)`` mean pixel coordinate of the mask (what spatial words refer to).
        bbox: ``(x, y, w, h)`` tight box of the mask in COCO convention.
        area: number of mask pixels.
        expressions: unambiguous referring expressions (at least one).
    """

    shape: str
    color: str
    size: str
    mask: np.ndarray
    centroid: tuple[float, float]
    bbox: tuple[int, int, int, int]
    area: int
    expressions: list[str] = field(default_factory=list)


@dataclass
class Scene:
    """One generated image with its objects. ``image`` is ``(H, W, 3)`` uint8 RGB."""

    index: int
    image: np.ndarray
    objects: list[SceneObject]

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])



def draw_shape(mask: np.ndarray, shape: str, cx: float, cy: float, r: float) -> None:
    """Fill ``shape`` of radius ``r`` centred at ``(cx, cy)`` into ``mask`` with 1 (no anti-aliasing)."""
    if shape == "circle":
        cv2.circle(mask, (int(round(cx)), int(round(cy))), int(round(r)), 1, thickness=-1,
                   lineType=cv2.LINE_8)
        return
    if shape == "square":
        half = 0.9 * r
        pts = [(cx - half, cy - half), (cx + half, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    elif shape == "triangle":
        pts = [(cx, cy - r), (cx + 0.95 * r, cy + 0.8 * r), (cx - 0.95 * r, cy + 0.8 * r)]
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else _STAR_INNER * r
            ang = -np.pi / 2 + k * np.pi / 5
            pts.append((cx + rad * np.cos(ang), cy + rad * np.sin(ang)))
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")
    poly = np.round(np.asarray(pts, dtype=np.float64)).astype(np.int32)
    cv2.fillPoly(mask, [poly], 1, lineType=cv2.LINE_8)


