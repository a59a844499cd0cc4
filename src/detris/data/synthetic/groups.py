"""Generalized expressions over a generated scene: several targets ("both circles") or none ("the purple
star" where there is no purple star), the two kinds gRefCOCO adds to the classic single-object ones."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .expressions import SIDES, Descriptor, descriptors, matches
from .shapes import COLORS, SHAPES, SIZES, SceneObject

__all__ = ["GroupExpression", "multi_target_expressions", "no_target_expressions", "pick_group_expressions"]

_PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars", None: "shapes"}
_COUNTS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
# Per side phrase: (axis 0 = x / 1 = y, sign) such that the objects on that side have the smallest
# sign * coordinate.
_SIDE_AXES = {"on the left": (0, 1.0), "on the right": (0, -1.0), "at the top": (1, 1.0), "at the bottom": (1, -1.0)}
assert set(_SIDE_AXES) == set(SIDES)


@dataclass(frozen=True)
class GroupExpression:
    """An expression and the indices of the objects it refers to (empty: it refers to nothing)."""

    targets: tuple[int, ...]
    text: str


def _plural(desc: Descriptor) -> str:
    size, color, shape = desc
    return " ".join(w for w in (size, color, _PLURALS[shape]) if w)


def multi_target_expressions(objects: list[SceneObject], margin: float) -> list[GroupExpression]:
    """Every expression of this grammar that refers to two or more objects of the scene.

    "all the red shapes", "both circles", "the three large shapes" (every object an attribute set
    describes) and "the two squares on the left" (the two of a group of three or more that lie on one
    side, ahead of the third by at least ``margin`` pixels).
    """
    out: list[GroupExpression] = []
    descs = dict.fromkeys(d for o in objects for d in descriptors(o))
    for desc in descs:
        group = tuple(i for i, o in enumerate(objects) if matches(desc, o))
        if len(group) < 2:
            continue
        noun = _plural(desc)
        out.append(GroupExpression(group, f"all the {noun}"))
        out.append(GroupExpression(group, f"both {noun}" if len(group) == 2 else f"the {_COUNTS[len(group)]} {noun}"))
        if len(group) < 3:
            continue
        for side, (axis, sign) in _SIDE_AXES.items():
            order = sorted(group, key=lambda i: sign * objects[i].centroid[axis])
            keys = [sign * objects[i].centroid[axis] for i in order]
            if keys[1] + margin <= keys[2]:
                out.append(GroupExpression(tuple(sorted(order[:2])), f"the two {noun} {side}"))
    return out


def no_target_expressions(objects: list[SceneObject]) -> tuple[list[str], list[str]]:
    """Descriptions that fit no object: ``(deceptive, other)``.

    Deceptive ones mix what the scene does have -- a colour and a shape that both occur, only not
    together, or a present colour and shape in the other size ("the small red circle" beside a large
    one) -- and so cannot be rejected by looking for a single word.
    """
    colors = {o.color for o in objects}
    shapes = {o.shape for o in objects}
    deceptive, other = [], []
    for color in COLORS:
        for shape in SHAPES:
            if any(matches((None, color, shape), o) for o in objects):
                for size in SIZES:
                    if not any(matches((size, color, shape), o) for o in objects):
                        deceptive.append(f"the {size} {color} {shape}")
            elif color in colors and shape in shapes:
                deceptive.append(f"the {color} {shape}")
            else:
                other.append(f"the {color} {shape}")
    return deceptive, other


def pick_group_expressions(
    objects: list[SceneObject], margin: float, multi_refs: int, no_target_refs: int, max_expressions: int,
    rng: np.random.Generator,
) -> list[tuple[tuple[int, ...], list[str]]]:
    """Up to ``multi_refs`` multi-target refs and ``no_target_refs`` no-target refs for one scene, each
    as ``(targets, sentences)``; a multi-target ref gets up to ``max_expressions`` sentences (its target
    set's expressions), a no-target ref one (half of them deceptive when the scene allows)."""
    by_targets: dict[tuple[int, ...], list[str]] = {}
    for g in multi_target_expressions(objects, margin):
        by_targets.setdefault(g.targets, []).append(g.text)
    refs: list[tuple[tuple[int, ...], list[str]]] = []
    groups = list(by_targets)
    for k in rng.permutation(len(groups))[:multi_refs]:
        texts = by_targets[groups[int(k)]]
        chosen = [texts[int(j)] for j in rng.permutation(len(texts))[:max_expressions]]
        refs.append((groups[int(k)], chosen))
    deceptive, other = no_target_expressions(objects)
    for _ in range(no_target_refs):
        pool = deceptive if deceptive and (rng.random() < 0.5 or not other) else other
        if not pool:
            break
        refs.append(((), [pool.pop(int(rng.integers(len(pool))))]))
    return refs
