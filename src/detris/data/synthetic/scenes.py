"""`SyntheticScenes`: a deterministic, random-access collection of procedural referring scenes."""

from __future__ import annotations

import numpy as np

from .expressions import candidate_expressions, pick_expressions, shortest_unique
from .shapes import COLORS, REACH, SHAPES, SIZES, Scene, SceneObject, draw_shape

__all__ = ["SyntheticScenes"]

#: Margin of spatial words, fraction of the shorter image side.
SPATIAL_MARGIN = 0.07
_GAP = 0.03  # minimum free space between two objects, fraction of the shorter image side


class SyntheticScenes:
    """A deterministic, random-access collection of procedural referring scenes.

    Args:
        num_images: number of scenes.
        seed: base seed; scene ``i`` depends only on ``(seed, i)``.
        image_size: ``(height, width)`` of every image, or ``None`` for sizes drawn per image from
            ``size_range`` (each side independently).
        size_range: ``(min, max)`` side length used when ``image_size`` is ``None``.
        min_objects, max_objects: number of shapes per scene (inclusive).
        max_expressions: at most this many expressions per object (at least one is guaranteed).
        distractor_prob: probability that a new object copies the shape and/or colour of an earlier
            one, so that attributes alone often do not suffice and spatial words are needed.
    """

    def __init__(
        self,
        num_images: int,
        seed: int = 0,
        image_size: tuple[int, int] | None = (256, 256),
        size_range: tuple[int, int] = (160, 384),
        min_objects: int = 2,
        max_objects: int = 5,
        max_expressions: int = 3,
        distractor_prob: float = 0.5,
    ) -> None:
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed}")
        if not 1 <= min_objects <= max_objects:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}"
            )
        if max_expressions < 1:
            raise ValueError(f"max_expressions must be >= 1, got {max_expressions}")
        if image_size is not None:
            image_size = (int(image_size[0]), int(image_size[1]))
            if min(image_size) < 64:
                raise ValueError(f"image_size must be at least 64x64, got {image_size}")
        elif not 64 <= size_range[0] <= size_range[1]:
            raise ValueError(f"size_range must satisfy 64 <= min <= max, got {size_range}")
        self.num_images = int(num_images)
        self.seed = int(seed)
        self.image_size = image_size
        self.size_range = (int(size_range[0]), int(size_range[1]))
        self.min_objects = int(min_objects)
        self.max_objects = int(max_objects)
        self.max_expressions = int(max_expressions)
        self.distractor_prob = float(distractor_prob)

    def __len__(self) -> int:
        return self.num_images

    def __iter__(self):
        for i in range(self.num_images):
            yield self[i]

    def __getitem__(self, index: int) -> Scene:
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"scene index {index} out of range for {self.num_images} scenes")
        index = index % self.num_images if self.num_images else index
        rng = np.random.default_rng([self.seed, index])
        if self.image_size is not None:
            h, w = self.image_size
        else:
            lo, hi = self.size_range
            h, w = (int(v) for v in rng.integers(lo, hi + 1, size=2))
        # A scene in which some object has no unambiguous expression is redrawn from the same stream.
        for _ in range(200):
            scene = self._try_scene(rng, index, h, w)
            if scene is not None:
                return scene
        raise RuntimeError(
            f"could not generate scene {index} with every object describable; "
            "lower max_objects or enlarge image_size"
        )

    # -- generation ----------------------------------------------------------------------------
    def _sample_attributes(self, rng: np.random.Generator, placed: list[dict]) -> tuple[str, str, str]:
        shape = SHAPES[rng.integers(len(SHAPES))]
        color = list(COLORS)[rng.integers(len(COLORS))]
        size = list(SIZES)[rng.integers(len(SIZES))]
        if placed and rng.random() < self.distractor_prob:
            other = placed[rng.integers(len(placed))]
            what = rng.random()
            if what < 0.4:
                shape = other["shape"]
            elif what < 0.8:
                color = other["color"]
            else:
                shape, color = other["shape"], other["color"]
        return shape, color, size

    def _try_scene(self, rng: np.random.Generator, index: int, h: int, w: int) -> Scene | None:
        side = min(h, w)
        n = int(rng.integers(self.min_objects, self.max_objects + 1))
        placed: list[dict] = []
        for _ in range(n):
            shape, color, size = self._sample_attributes(rng, placed)
            lo, hi = SIZES[size]
            r = float(rng.uniform(lo, hi)) * side
            reach = REACH[shape] * r
            for _attempt in range(60):
                cx = float(rng.uniform(reach + 2, w - reach - 2))
                cy = float(rng.uniform(reach + 2, h - reach - 2))
                ok = all(
                    np.hypot(cx - p["cx"], cy - p["cy"]) >= reach + p["reach"] + _GAP * side
                    for p in placed
                )
                if ok:
                    placed.append(dict(shape=shape, color=color, size=size, cx=cx, cy=cy, r=r, reach=reach))
                    break
        if len(placed) < self.min_objects:
            return None

        # Background: neutral grey with mild noise (90..165 +- 8 stays inside 0..255); objects are
        # painted flat on top of it.
        grey = int(rng.integers(90, 166))
        image = (rng.integers(-8, 9, size=(h, w, 3), dtype=np.int16) + grey).astype(np.uint8)
        objects: list[SceneObject] = []
        for p in placed:
            mask = np.zeros((h, w), dtype=np.uint8)
            draw_shape(mask, p["shape"], p["cx"], p["cy"], p["r"])
            # Only the object's neighbourhood can hold mask pixels; scanning it alone is faster.
            ya, yb = max(int(p["cy"] - p["reach"]) - 2, 0), min(int(p["cy"] + p["reach"]) + 3, h)
            xa, xb = max(int(p["cx"] - p["reach"]) - 2, 0), min(int(p["cx"] + p["reach"]) + 3, w)
            ys, xs = np.nonzero(mask[ya:yb, xa:xb])
            if len(xs) == 0:
                return None
            ys, xs = ys + ya, xs + xa
            image[ys, xs] = COLORS[p["color"]]
            x0, y0 = int(xs.min()), int(ys.min())
            objects.append(
                SceneObject(
                    shape=p["shape"], color=p["color"], size=p["size"], mask=mask,
                    centroid=(float(xs.mean()), float(ys.mean())),
                    bbox=(x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1),
                    area=int(len(xs)),
                )
            )

        margin = SPATIAL_MARGIN * side
        anchor_descs = [shortest_unique(objects, a) for a in range(len(objects))]
        for t, obj in enumerate(objects):
            candidates = candidate_expressions(objects, t, margin, anchor_descs)
            if not any(candidates.values()):
                return None
            obj.expressions = pick_expressions(candidates, self.max_expressions, rng)
        return Scene(index=index, image=image, objects=objects)


