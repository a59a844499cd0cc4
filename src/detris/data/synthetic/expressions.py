"""The expression grammar: every unambiguous referring expression for an object of a scene."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from .shapes import SceneObject

__all__ = ["SUPERLATIVES", "SIDES", "RELATIONS", "Descriptor", "candidate_expressions", "descriptors", "matches",
           "shortest_unique", "pick_expressions"]

SUPERLATIVES: tuple[str, ...] = ("leftmost", "rightmost", "topmost", "bottommost")
SIDES: tuple[str, ...] = ("on the left", "on the right", "at the top", "at the bottom")
RELATIONS: tuple[str, ...] = ("above", "below", "to the left of", "to the right of")

# For each superlative / side word: (axis 0 = x / 1 = y, sign) such that the referred object has
# the smallest value of sign * coordinate.
_EXTREME = {
    "leftmost": (0, 1.0), "rightmost": (0, -1.0), "topmost": (1, 1.0), "bottommost": (1, -1.0),
    "on the left": (0, 1.0), "on the right": (0, -1.0), "at the top": (1, 1.0), "at the bottom": (1, -1.0),
}
# For each relation: (axis, sign) such that "o REL anchor" means sign * (anchor - o)[axis] > 0.
_RELATION_AXIS = {"above": (1, 1.0), "below": (1, -1.0), "to the left of": (0, 1.0), "to the right of": (0, -1.0)}


Descriptor = tuple[str | None, str | None, str | None]  # (size, colour, shape)


def _describe(desc: Descriptor) -> str:
    size, color, shape = desc
    return " ".join(w for w in (size, color, shape or "shape") if w)


def matches(desc: Descriptor, obj: SceneObject) -> bool:
    """Whether ``obj`` has every attribute ``desc`` names (None = any)."""
    size, color, shape = desc
    return (size is None or size == obj.size) and (color is None or color == obj.color) and (
        shape is None or shape == obj.shape
    )


def descriptors(obj: SceneObject) -> list[Descriptor]:
    """All 8 attribute subsets that describe ``obj`` (from bare "shape" to size+colour+shape)."""
    out = []
    for use_size, use_color, use_shape in itertools.product((False, True), repeat=3):
        out.append((obj.size if use_size else None, obj.color if use_color else None,
                    obj.shape if use_shape else None))
    return out



def candidate_expressions(
    objects: list[SceneObject], t: int, margin: float, anchor_descs: Sequence[Descriptor | None]
) -> dict[str, list[str]]:
    """Every unambiguous expression for ``objects[t]``, grouped by kind.

    ``anchor_descs[a]`` is the shortest unique attribute description of object ``a`` (or None).
    """
    target = objects[t]
    out: dict[str, list[str]] = {"attribute": [], "superlative": [], "side": [], "relation": []}
    matching = {desc: [i for i, o in enumerate(objects) if matches(desc, o)]
                for desc in descriptors(target)}
    for desc in descriptors(target):
        group = matching[desc]
        if desc != (None, None, None) and group == [t]:
            out["attribute"].append(f"the {_describe(desc)}")
        if len(group) < 2:
            continue
        for word, (axis, sign) in _EXTREME.items():
            if word in SIDES and len(group) != 2:
                continue
            # The referred object must win by at least the margin over every other candidate.
            keys = {i: sign * objects[i].centroid[axis] for i in group}
            if all(keys[t] + margin <= keys[i] for i in group if i != t):
                if word in SIDES:
                    out["side"].append(f"the {_describe(desc)} {word}")
                else:
                    out["superlative"].append(f"the {word} {_describe(desc)}")

    for a, anchor in enumerate(objects):
        if a == t:
            continue
        anchor_desc = anchor_descs[a]
        if anchor_desc is None:
            continue
        for word, (axis, sign) in _RELATION_AXIS.items():
            for desc in descriptors(target):
                group = [i for i in matching[desc] if i != a]
                definite, possible = [], []
                for i in group:
                    along = sign * (anchor.centroid[axis] - objects[i].centroid[axis])
                    across = abs(anchor.centroid[1 - axis] - objects[i].centroid[1 - axis])
                    if along >= margin and along >= across + margin:
                        definite.append(i)
                    if along > -margin and along > across - margin:
                        possible.append(i)
                if definite == [t] and possible == [t]:
                    out["relation"].append(
                        f"the {_describe(desc)} {word} the {_describe(anchor_desc)}"
                    )
    return out


def shortest_unique(objects: list[SceneObject], a: int) -> Descriptor | None:
    """The attribute-only description with the fewest words that picks out ``objects[a]`` alone."""
    best: Descriptor | None = None
    best_len = 99
    for desc in descriptors(objects[a]):
        if desc == (None, None, None):
            continue
        if [i for i, o in enumerate(objects) if matches(desc, o)] != [a]:
            continue
        n_words = sum(d is not None for d in desc)
        if n_words < best_len:
            best, best_len = desc, n_words
    return best


def pick_expressions(candidates: dict[str, list[str]], k: int, rng: np.random.Generator) -> list[str]:
    """Up to ``k`` distinct expressions, visiting the kinds in a random order for variety."""
    pools = {kind: list(dict.fromkeys(v)) for kind, v in candidates.items() if v}
    kinds = list(pools)
    order = [kinds[i] for i in rng.permutation(len(kinds))]
    chosen: list[str] = []
    while len(chosen) < k and any(pools.values()):
        for kind in order:
            pool = pools[kind]
            if not pool or len(chosen) >= k:
                continue
            chosen.append(pool.pop(int(rng.integers(len(pool)))))
    return chosen


