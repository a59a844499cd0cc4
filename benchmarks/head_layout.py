"""Training speed of the head's upsample + 3x3 convolution units in the two memory layouts.

The head (`detris.modeling.head.Projector`) upsamples the decoder's map x4 through two bilinear x2 +
conv + BN + ReLU units; in training the layout of those maps is chosen by
`detris.modeling.head.training_layout`. This script times forward + backward of the units (as the
model runs them, upsampled maps recomputed in backward) in the standard layout and in channels-last,
alternated, for each variant's head at its training input size, and prints the ratio.

oneDNN picks its kernels by instruction set: to see what a CPU without AVX-512 would do on one that
has it, run with ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``.

Usage::

    python benchmarks/head_layout.py                       # detris-tiny (demo geometry), -b, -l
    python benchmarks/head_layout.py --variants detris-tiny --batch 8 --repeats 10
    python benchmarks/head_layout.py --precision bfloat16  # under bfloat16 autocast
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import torch

from _bench import alternate_timed, machine_info, median, print_table, write_json
from detris.demo import demo_settings
from detris.modeling.head import Projector, upsample_then
from detris.precision import autocast, precision_name
from detris.variants import get_variant

# The tiny variant as the demo builds it (input size, patch size); the released variants as trained.
_OVERRIDES = {"detris-tiny": demo_settings()["model"]["overrides"]}


def unit_step(proj: Projector, x0: torch.Tensor, layout: torch.memory_format, precision: str) -> Callable[[], None]:
    """One forward + backward of the head's two upsample + conv units and its 1x1 conv in ``layout``,
    under ``precision``'s autocast (as ``train.precision`` runs them)."""
    up1, unit1, up2, unit2, pointwise = proj.vis

    def step() -> None:
        x = x0.contiguous(memory_format=layout)
        with autocast(precision, "cpu"):
            out = pointwise(upsample_then(up2, unit2, upsample_then(up1, unit1, x)))
        out.float().sum().backward()

    return step


def measure(variant: str, batch: int, repeats: int, precision: str) -> dict[str, object]:
    cfg = get_variant(variant, **_OVERRIDES.get(variant, {}))
    grid = cfg.image_size // cfg.patch_size  # the decoder's map is the patch grid
    in_dim = cfg.projector_dim
    torch.manual_seed(0)
    proj = Projector(cfg.text_embed_dim, in_dim, cfg.head_kernel_size).train()
    x0 = torch.randn(batch, 2 * in_dim, grid, grid, requires_grad=True)
    # Module.to() converts in place: each layout gets its own copy of the weights.
    steps = {
        "standard": unit_step(proj, x0, torch.contiguous_format, precision),
        "channels_last": unit_step(copy.deepcopy(proj).to(memory_format=torch.channels_last), x0,
                                   torch.channels_last, precision),
    }
    times = alternate_timed(steps, torch.device("cpu"), repeats=repeats)
    std, cl = median(times["standard"]), median(times["channels_last"])
    return {"variant": variant, "precision": precision, "batch": batch,
            "input": f"{2 * in_dim}x{grid}x{grid}",
            "standard ms": 1e3 * std, "channels-last ms": 1e3 * cl, "channels-last / standard": cl / std}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["detris-tiny", "detris-b", "detris-l"])
    parser.add_argument("--batch", type=int, default=None, help="default: 8 for detris-tiny, 2 otherwise")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", type=precision_name, choices=["float32", "bfloat16"], default="float32",
                        help="autocast of the step, as train.precision (bf16 is read as bfloat16)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine_info(torch.device("cpu"))
    print(f"CPU {info['cpu']}, ATen capability {info['cpu_capability']}, {args.threads} threads, torch {info['torch']}")
    rows = [measure(v, args.batch or (8 if v == "detris-tiny" else 2), args.repeats, args.precision)
            for v in args.variants]
    print_table("Head units, forward + backward, by layout (median, alternated)", rows, list(rows[0]))
    write_json(args.json, {"machine": info, "rows": rows})


if __name__ == "__main__":
    main()
