"""Procedural referring scenes: coloured shapes with exact masks and unambiguous expressions.

No real dataset can be downloaded here, so learning is demonstrated on scenes made by this module.
A scene is a grey, slightly noisy canvas with 2..N non-overlapping flat-coloured shapes.  Every
object gets one or more referring expressions drawn from this small grammar::

    the [size] [colour] NOUN                            "the large blue square", "the red shape"
    the SUPERLATIVE [size] [colour] NOUN               "the leftmost square", "the topmost shape"
    the [size] [colour] NOUN SIDE                       "the triangle on the left"
    the [size] [colour] NOUN RELATION the ANCHOR        "the green shape above the yellow circle"

    NOUN        = circle | square | triangle | star | shape      ("shape" = any kind)
    SUPERLATIVE = leftmost | rightmost | topmost | bottommost
    SIDE        = on the left | on the right | at the top | at the bottom   (exactly two candidates)
    RELATION    = above | below | to the left of | to the right of

An expression is emitted only if exactly one object satisfies it.  Spatial words use the centroid of
each object's mask and a safety margin (7 % of the shorter image side): a superlative needs a gap of
at least the margin to the runner-up, and a relation holds "definitely" when the offset along the
relation's axis exceeds both the margin and the cross-axis offset plus the margin; it is emitted
only if no other candidate even comes close (within the margin) to satisfying it.  So any reasonable
reading ("above" = the vertical offset dominates) picks the same object.

Everything is a pure function of ``(seed, index)``: scene ``i`` is the same whatever else is generated.
:func:`write_refer_layout` writes scenes in the REFER layout of the real benchmarks
(``instances.json`` + ``refs(unc).p`` + an image folder), so the same loader reads both.

Generalized scenes (gRefCOCO): `write_grefcoco_layout` adds, per image, refs to several objects and
refs to none (`detris.data.synthetic.groups`)::

    all the [size] [colour] NOUNS        "all the red shapes"
    both / the two|three... NOUNS        "both circles", "the three large shapes"
    the two NOUNS SIDE                   "the two squares on the left"   (ahead of the third by the margin)
    the [size] COLOUR SHAPE              "the purple star": fits no object of the image (no target)
"""
from .expressions import RELATIONS, SIDES, SUPERLATIVES
from .refer_writer import ReferLayout, write_grefcoco_layout, write_refer_layout
from .scenes import SyntheticScenes
from .shapes import COLORS, SHAPES, SIZES, Scene, SceneObject

__all__ = [
    "SHAPES",
    "COLORS",
    "SIZES",
    "SUPERLATIVES",
    "SIDES",
    "RELATIONS",
    "SceneObject",
    "Scene",
    "SyntheticScenes",
    "ReferLayout",
    "write_refer_layout",
    "write_grefcoco_layout",
]
