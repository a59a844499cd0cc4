"""Write ``tests/fixtures/official-tiny/``: a small DETRIS checkpoint and its logits, made by the official code.

    python tools/make_official_fixture.py --official PATH/TO/DETRIS

``PATH/TO/DETRIS`` is a checkout of https://github.com/jiaqihuang01/DETRIS (the fixture in the repository was
made from commit ``OFFICIAL_COMMIT``). The official code is imported from there and run; nothing of it is
copied. Its model package imports ``loguru`` and ``fvcore`` (unused by building and running the model) and its
tokenizer module ``cv2``, ``lmdb`` and ``pyarrow`` (unused by ``tokenize``): where they are missing, empty
stand-ins are put in their place. The tokenizer itself needs ``ftfy`` and ``regex``. xFormers is switched off
(``XFORMERS_DISABLED``) so that the official DINOv2 attention takes its plain path.

What is built: the official ``model.segmenter.DETRIS`` class (its ``forward``), with its six parts made from
the official classes at small sizes (``SIZES``). The official constructor cannot be called for this: it reads
its backbones from files and fixes the DINOv2 size (ViT-B/L), the neck's attention width (512), the Dense
Aligners' text width (512) and the text depth (12). The parts are built exactly as that constructor builds
them, with those sizes as arguments instead: ``clip.CLIP`` (text tower; its image tower deleted as the
official ``build_model`` does), ``fusion.Fusion``, ``DinoVisionTransformer`` with the official block (the
Dense Aligners' keyword defaults for text width, attention width and heads set while it is built),
``layers.Neck``, ``layers.Decoder``, ``layers.Projector``.

Every tensor of the model is then re-drawn from a seeded generator (the official initialisation leaves
BatchNorm statistics, LayerScale and biases at constants, which would hide mistakes), rounded through
float16 so that the float16 checkpoint holds the model's exact values, and the head's kernel generator is
scaled so that the logits have a realistic spread. The model runs in eval mode, in float32 and in float64
(for float64 the official CLIP ``LayerNorm``, which always computes in float32, is given plain
``nn.LayerNorm.forward`` for the run), on seeded images normalised with the CLIP mean/std and on tokens
from the official ``utils.dataset.tokenize`` (checked equal to ``detris.tokenize``).

Written: ``checkpoint.pth`` (the dict the official ``train.py`` saves: ``state_dict`` with DDP's
``module.`` prefix, float16 except BatchNorm counters, plus epoch, IoUs, Adam and MultiStepLR state),
``inputs_and_logits.safetensors`` (images, tokens, official logits in float32 and float64),
``provenance.json`` and a short ``README.md``. Before writing, a freshly built official model wrapped in
``nn.DataParallel`` loads the checkpoint the way the official ``test.py`` does (``load_state_dict(...,
strict=True)``) and must reproduce the float32 logits bit for bit.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib
import json
import math
import os
import platform
import sys
import types
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

import detris

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "tests" / "fixtures" / "official-tiny"
OFFICIAL_URL = "https://github.com/jiaqihuang01/DETRIS"
OFFICIAL_COMMIT = "c94b1e1e5253f51eb3a924fe944a455ffe1d75d6"
SEED = 20250301

# Arguments given to the official classes (their own parameter names).
SIZES: dict[str, Any] = {
    "image_size": 112,  # 8 x 8 patches; logits 32 x 32
    "word_len": 17,
    "clip": {  # clip.CLIP
        "embed_dim": 512,  # fixed by the official neck (nn.Linear(512, ...)) reading the sentence vector
        "context_length": 77,
        "vocab_size": 49408,  # the CLIP BPE vocabulary: the tokens' ids reach 49407
        "transformer_width": 32,
        "transformer_heads": 2,
        "transformer_layers": 4,
        "add_adapter_layer": [1, 3],
        "txt_adapter_dim": 16,
        # the image tower is built by the class and deleted right after, as in the official build_model
        "image_resolution": 32,
        "vision_layers": 1,
        "vision_width": 64,
        "vision_patch_size": 16,
    },
    "dinov2": {  # DinoVisionTransformer, as vit_base builds it apart from the widths
        "patch_size": 14,
        "embed_dim": 64,
        "depth": 4,
        "num_heads": 4,
        "mlp_ratio": 4,
        "num_register_tokens": 4,
        "img_size": 526,  # 37 x 37 position grid, as the official DETRIS builds it
        "init_values": 1.0,
        "block_chunks": 0,
        "add_adapter_layer": [1, 3],
        "visual_adapter_dim": 32,
    },
    "aligner": {"text_dim": 32, "embed_dim": 32, "num_heads": 4},  # DenseAligner keyword defaults
    "fusion": {"d_model": 32, "nhead": 4, "num_layers": 4, "dino_layers": 4, "output_dinov2": [1, 2]},
    "neck": {"in_channels": [64, 64, 64], "out_channels": [16, 32, 64], "stride": [1, 1, 1], "d_model": 32,
             "nhead": 8},
    "decoder": {"num_layers": 2, "d_model": 32, "nhead": 4, "dim_ffn": 64, "dropout": 0.1,
                "return_intermediate": False},
    "projector": {"word_dim": 512, "in_dim": 16, "kernel_size": 3},
}

# The same model in detris's terms (DetrisConfig fields): what load_official_checkpoint is given.
DETRIS_CONFIG: dict[str, Any] = {
    "name": "detris-official-tiny",
    "vision_width": 64, "vision_depth": 4, "vision_heads": 4, "vision_mlp_ratio": 4.0, "patch_size": 14,
    "num_register_tokens": 4, "pretrained_grid": 37, "interpolate_offset": 0.1, "interpolate_antialias": False,
    "vision_feature_layers": [1, 2], "vision_adapter_layers": [1, 3], "vision_adapter_dim": 32,
    "aligner_embed_dim": 32, "aligner_heads": 4,
    "vocab_size": 49408, "text_context_length": 77, "text_width": 32, "text_depth": 4, "text_heads": 2,
    "text_embed_dim": 512, "text_adapter_layers": [1, 3], "text_adapter_dim": 16, "word_len": 17,
    "adapter_scale": 0.2, "adapter_bn_eps": 1e-3,
    "fusion_dim": 32, "decoder_layers": 2, "decoder_heads": 4, "decoder_ffn_dim": 64, "decoder_dropout": 0.1,
    "head_kernel_size": 3, "image_size": 112,
}

SENTENCES = [
    "the man on the left",  # short: most of the 17 positions are padding
    "a red umbrella above the small white dog",
    # longer than 17 tokens: cut, its last id set to the end token
    "the woman in the blue coat standing behind the table next to the window holding a cup of coffee",
]
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
README = """# official-tiny

A small DETRIS checkpoint and its logits, produced by the official DETRIS code
({url} at commit `{commit}`, torch {torch}) and read by `tests/test_official_fixture.py`.

- `checkpoint.pth`: as the official `train.py` saves it (`state_dict` with DDP `module.` keys, float16 values).
- `inputs_and_logits.safetensors`: `images`, `tokens` and the official model's `logits_fp32` / `logits_fp64`.
- `provenance.json`: sizes (official arguments and `DetrisConfig` fields), seed, sentences, hashes.

Made by `tools/make_official_fixture.py` (see its docstring and docs/parity.md); regenerate with

    python tools/make_official_fixture.py --official PATH/TO/DETRIS
"""
LOGIT_STD = 2.5  # the head's kernel generator is scaled so that the float32 logits have this spread


# ----------------------------------------------------------------------------------------- importing
def _stand_in(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


class _QuietLogger:
    def __getattr__(self, _name: str) -> Any:
        return lambda *args, **kwargs: None


def _missing(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return True
    return False


def import_official(checkout: Path) -> tuple[types.SimpleNamespace, list[str]]:
    """The official modules used here, imported from ``checkout``, and the names given stand-ins."""
    if not (checkout / "model" / "segmenter.py").is_file():
        raise SystemExit(f"{checkout} is not a checkout of the official DETRIS code (no model/segmenter.py)")
    os.environ["XFORMERS_DISABLED"] = "1"
    stood_in = [name for name in ("loguru", "fvcore", "cv2", "lmdb", "pyarrow") if _missing(name)]
    if "loguru" in stood_in:
        _stand_in("loguru", logger=_QuietLogger())
    if "fvcore" in stood_in:
        _stand_in("fvcore", nn=_stand_in("fvcore.nn", weight_init=_stand_in("fvcore.nn.weight_init")))
    for name in ("cv2", "lmdb", "pyarrow"):
        if name in stood_in:
            _stand_in(name)
    sys.path.insert(0, str(checkout))
    names = {
        "segmenter": "model.segmenter", "clip": "model.clip", "fusion": "model.fusion", "layers": "model.layers",
        "vit": "model.dinov2.models.vision_transformer", "block": "model.dinov2.layers.block",
        "dataset": "utils.dataset",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the official modules announce whether xFormers is there
        modules = {key: importlib.import_module(name) for key, name in names.items()}
    return types.SimpleNamespace(**modules), stood_in


@contextlib.contextmanager
def aligner_defaults(block_module: types.ModuleType, **defaults: Any) -> Iterator[None]:
    """While active, the official block builds its Dense Aligners with these keyword defaults."""
    original = block_module.DenseAligner
    block_module.DenseAligner = functools.partial(original, **defaults)
    try:
        yield
    finally:
        block_module.DenseAligner = original


@contextlib.contextmanager
def clip_layernorm_in_input_dtype(clip_module: types.ModuleType) -> Iterator[None]:
    """While active, the official CLIP ``LayerNorm`` computes in its input's dtype (for the float64 run)."""
    original = clip_module.LayerNorm.forward
    clip_module.LayerNorm.forward = nn.LayerNorm.forward
    try:
        yield
    finally:
        clip_module.LayerNorm.forward = original


def build_official(off: types.SimpleNamespace) -> nn.Module:
    """The official DETRIS (its class and forward) with its parts built from the official classes at ``SIZES``."""

    class SmallOfficialDETRIS(off.segmenter.DETRIS):
        def __init__(self) -> None:
            nn.Module.__init__(self)  # the official __init__ reads backbone files of fixed sizes
            c = SIZES["clip"]
            clip = off.clip.CLIP(
                c["embed_dim"], c["image_resolution"], c["vision_layers"], c["vision_width"],
                c["vision_patch_size"], c["context_length"], SIZES["word_len"], c["vocab_size"],
                c["transformer_width"], c["transformer_heads"], c["transformer_layers"],
                c["add_adapter_layer"], c["txt_adapter_dim"],
            )
            del clip.visual
            self.txt_backbone = clip.float().eval()
            self.fusion = off.fusion.Fusion(**SIZES["fusion"])
            d = SIZES["dinov2"]
            with aligner_defaults(off.block, **SIZES["aligner"]):
                self.dinov2 = off.vit.DinoVisionTransformer(
                    block_fn=functools.partial(off.vit.Block, attn_class=off.vit.MemEffAttention), **d)
            self.neck = off.layers.Neck(**SIZES["neck"])
            self.decoder = off.layers.Decoder(**SIZES["decoder"])
            self.proj = off.layers.Projector(**SIZES["projector"])

    return SmallOfficialDETRIS()


# ----------------------------------------------------------------------------------------- weights
class _Draw:
    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def normal(self, like: Tensor, std: float, mean: float = 0.0) -> Tensor:
        return torch.randn(like.shape, generator=self.gen, dtype=torch.float64) * std + mean

    def uniform(self, like: Tensor, low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(like.shape, generator=self.gen, dtype=torch.float64)


def _fan_in(module: nn.Module, weight: Tensor) -> int:
    if isinstance(module, nn.ConvTranspose2d):
        return weight.shape[0] * math.prod(weight.shape[2:])
    return math.prod(weight.shape[1:])


@torch.no_grad()
def redraw_(model: nn.Module, seed: int) -> None:
    """Give every tensor of ``model`` a seeded random value that makes it matter, rounded through float16."""
    draw = _Draw(seed)
    values: dict[str, Tensor] = {}
    for prefix, module in model.named_modules():
        p = prefix + "." if prefix else ""
        own = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
        for name, tensor in own.items():
            key = p + name
            if name == "num_batches_tracked":
                values[key] = torch.tensor(12345)
            elif name == "running_mean":
                values[key] = draw.normal(tensor, 0.2)
            elif name == "running_var":
                values[key] = draw.uniform(tensor, 0.5, 2.0)
            elif name == "gamma":  # DINOv2 LayerScale
                values[key] = draw.uniform(tensor, 0.3, 1.2)
            elif "bias" in name:  # biases, MultiheadAttention's in_proj_bias included
                values[key] = draw.normal(tensor, 0.05)
            elif isinstance(module, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm)):
                values[key] = draw.normal(tensor, 0.1, mean=1.0)
            elif isinstance(module, nn.Embedding):
                values[key] = draw.normal(tensor, 0.3)
            elif name in ("pos_embed", "cls_token", "register_tokens", "mask_token"):
                values[key] = draw.normal(tensor, 0.3)
            elif name == "positional_embedding":
                values[key] = draw.normal(tensor, 0.1)
            elif name == "text_projection":  # (width, embed): x @ text_projection
                values[key] = draw.normal(tensor, tensor.shape[0] ** -0.5)
            elif name == "logit_scale":
                values[key] = torch.tensor(math.log(1 / 0.07), dtype=torch.float64)
            elif tensor.dim() >= 2:  # Linear / Conv / attention projections
                values[key] = draw.normal(tensor, _fan_in(module, tensor) ** -0.5)
            else:
                raise RuntimeError(f"no rule to draw {key} {tuple(tensor.shape)}")
    state = model.state_dict()
    if set(values) != set(state):
        raise RuntimeError(f"drawn and model tensors differ: {sorted(set(values) ^ set(state))[:10]}")
    for key, target in state.items():
        value = values[key]
        if target.is_floating_point():
            value = value.to(torch.float16)
        target.copy_(value)


@torch.no_grad()
def scale_head_(model: nn.Module, images: Tensor, tokens: Tensor) -> float:
    """Scale the head's kernel generator (weights and bias) so that the logits' std is ``LOGIT_STD``;
    the logits are linear in it. Returns the factor."""
    std = model(images, tokens).std().item()
    factor = float(torch.tensor(LOGIT_STD / std).half())
    for tensor in (model.proj.txt.weight, model.proj.txt.bias):
        tensor.copy_((tensor * factor).half())
    return factor


# ----------------------------------------------------------------------------------------- inputs
def make_images(n: int, size: int, seed: int) -> Tensor:
    """Seeded images: smooth colour fields plus fine noise in [0, 1], normalised with the CLIP mean/std."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 14, size // 14, generator=gen)
    pixels = nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    pixels = (pixels + 0.1 * torch.randn(n, 3, size, size, generator=gen)).clamp(0, 1)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return ((pixels - mean) / std).float()


def make_tokens(off: types.SimpleNamespace) -> Tensor:
    tokens = off.dataset.tokenize(SENTENCES, SIZES["word_len"], truncate=True)
    ours = detris.tokenize(SENTENCES, context_length=SIZES["word_len"])
    if not torch.equal(tokens, ours):
        raise SystemExit("the official tokenizer and detris.tokenize disagree on the fixture's sentences")
    return tokens


# ----------------------------------------------------------------------------------------- files
def official_checkpoint(model: nn.Module) -> dict[str, Any]:
    """The dict the official train.py saves (model wrapped in DDP), the tensors in float16 where floating."""
    state = OrderedDict(
        ("module." + k, v.detach().clone().half() if v.is_floating_point() else v.detach().clone())
        for k, v in model.state_dict().items()
    )
    # The official rule: of the two backbones only the adapters train; the neck, decoder and head all do.
    backbones = ("txt_backbone.", "dinov2.")
    trainable = [p for n, p in model.named_parameters() if "adapter" in n or not n.startswith(backbones)]
    optimizer = torch.optim.Adam([{"params": trainable, "initial_lr": 1e-4}], lr=1e-4, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[35, 55], gamma=0.1, last_epoch=0)
    return {
        "epoch": 1,
        "cur_iou": 0.25,
        "best_iou": 0.25,
        "prec": {f"Pr@{t}": 0.0 for t in (50, 60, 70, 80, 90)},
        "state_dict": state,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="checkout of the official DETRIS code")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the float32 reference comes from one fixed summation order

    off, stood_in = import_official(args.official.resolve())
    torch.manual_seed(SEED)
    model = build_official(off).eval()
    redraw_(model, SEED)
    images = make_images(len(SENTENCES), SIZES["image_size"], SEED + 1)
    tokens = make_tokens(off)
    factor = scale_head_(model, images, tokens)

    with torch.no_grad():
        logits32 = model(images, tokens)
        model64 = build_official(off).eval()
        model64.load_state_dict(model.state_dict(), strict=True)
        model64.double()
        with clip_layernorm_in_input_dtype(off.clip):
            logits64 = model64(images.double(), tokens)
    grid = SIZES["image_size"] // SIZES["dinov2"]["patch_size"]
    if logits32.shape != (len(SENTENCES), 1, 4 * grid, 4 * grid):
        raise RuntimeError(f"unexpected logits shape {tuple(logits32.shape)}")

    checkpoint = official_checkpoint(model)
    # The official test.py's way of loading: DataParallel(model).load_state_dict(ckpt['state_dict'], strict=True).
    torch.manual_seed(SEED + 2)
    reloaded = nn.DataParallel(build_official(off))
    reloaded.load_state_dict(checkpoint["state_dict"], strict=True)
    with torch.no_grad():
        if not torch.equal(reloaded.module.eval()(images, tokens), logits32):
            raise RuntimeError("the official model loaded from the checkpoint does not reproduce the logits")

    args.out.mkdir(parents=True, exist_ok=True)
    ckpt_path, data_path = args.out / "checkpoint.pth", args.out / "inputs_and_logits.safetensors"
    torch.save(checkpoint, ckpt_path)
    save_file({"images": images.contiguous(), "tokens": tokens.contiguous(),
               "logits_fp32": logits32.contiguous(), "logits_fp64": logits64.contiguous()}, str(data_path),
              metadata={"official_commit": OFFICIAL_COMMIT})
    floor = (logits32.double() - logits64).abs().max().item()
    provenance = {
        "official_code": {"url": OFFICIAL_URL, "commit": OFFICIAL_COMMIT},
        "command": "python tools/make_official_fixture.py --official PATH/TO/DETRIS",
        "stand_ins": stood_in,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "seed": SEED,
        "official_sizes": SIZES,
        "detris_config": DETRIS_CONFIG,
        "sentences": SENTENCES,
        "tokenizer": "official utils.dataset.tokenize(texts, 17, truncate=True); equal to detris.tokenize",
        "images": "seeded smooth colour fields + noise in [0, 1], normalised with the CLIP mean/std",
        "weights": "every tensor re-drawn from a seeded generator and rounded through float16; the checkpoint "
                   "stores floating tensors in float16 (exact), BatchNorm counters in int64",
        "head_scale": factor,
        "logits": {"shape": list(logits32.shape), "std": logits32.std().item(),
                   "max_abs": logits32.abs().max().item(), "official_fp32_vs_fp64_max_abs": floor},
        "sha256": {ckpt_path.name: sha256(ckpt_path), data_path.name: sha256(data_path)},
    }
    (args.out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    readme = README.format(url=OFFICIAL_URL, commit=OFFICIAL_COMMIT, torch=torch.__version__)
    (args.out / "README.md").write_text(readme)
    print(json.dumps({k: provenance[k] for k in ("stand_ins", "head_scale", "logits", "sha256")}, indent=2))


if __name__ == "__main__":
    main()
