"""DINOv2 vision transformer with register tokens, with optional Dense Aligners in its FFN branches.

Parameter names follow the official ``dinov2_vit{b,l}14_reg4_pretrain.pth`` files so they load as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .adapters import DenseAligner


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: (N, 3, H, W) -> (N, H/p * W/p, dim), row-major."""

    def __init__(self, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Self-attention with a fused qkv projection (DINOv2 names: ``qkv``, ``proj``)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, length, dim = x.shape
        qkv = self.qkv(x).view(n, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma

    def residual(self, x: Tensor, y: Tensor) -> Tensor:
        """``x + gamma * y`` in one pass (one ``addcmul`` instead of a product and a sum)."""
        return torch.addcmul(x, y, self.gamma)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()  # exact (erf) GELU, as DINOv2 was trained
        self.fc2 = nn.Linear(hidden_dim, dim)

    def hidden(self, x: Tensor) -> Tensor:
        """(N, T, dim) -> the activated hidden layer (N, T, hidden_dim)."""
        return self.act(self.fc1(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.hidden(x))


class Block(nn.Module):
    """Pre-norm ViT block with layer scale; with an aligner its FFN branch becomes
    ``ls2(mlp(n) + adapter_scale * aligner(n, words))`` where ``n = norm2(x)``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        adapter: DenseAligner | None = None,
        adapter_scale: float = 0.2,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)
        self.adapter = adapter
        self.adapter_scale = adapter_scale

    def forward(
        self,
        x: Tensor,
        words: Tensor | None = None,
        grid: tuple[int, int] | None = None,
        recompute_mlp: bool = False,
    ) -> Tensor:
        """x (N, T, dim); words (N, L, text_dim) are needed only when the block has an aligner.

        ``recompute_mlp``: keep only the MLP's input for backward and recompute its hidden layer
        (``fc1`` + GELU, the largest activation a frozen block stores) when the gradient needs it.
        """
        x = self.ls1.residual(x, self.attn(self.norm1(x)))
        n = self.norm2(x)  # computed once for both the MLP and the aligner
        if recompute_mlp and n.requires_grad:
            y = self.mlp.fc2(checkpoint(self.mlp.hidden, n, use_reentrant=False))
        else:
            y = self.mlp(n)
        if self.adapter is not None:
            if words is None or grid is None:
                raise ValueError("this block has a Dense Aligner: pass the word features and the patch grid")
            y = torch.add(y, self.adapter(n, words, grid), alpha=self.adapter_scale)
        return self.ls2.residual(x, y)


class DinoVisionTransformer(nn.Module):
    """DINOv2 ViT with ``num_register_tokens`` registers.

    Token layout: [cls, registers..., patches (row-major)]. The position embedding covers cls + the
    pretrained ``pretrained_grid`` x ``pretrained_grid`` patches and is resized to other grids the way
    the official dinov2 code does it: bicubic with a scale factor of (grid + ``interpolate_offset``) /
    pretrained_grid per side, antialias off (``interpolate_offset=0`` switches to a target size, as
    transformers does, which with ``interpolate_antialias=True`` reproduces its resizing).

    Args:
        adapters: ``{block index: DenseAligner}`` for the blocks that carry one.
    """

    def __init__(
        self,
        dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        patch_size: int = 14,
        num_register_tokens: int = 4,
        pretrained_grid: int = 37,
        interpolate_offset: float = 0.1,
        interpolate_antialias: bool = False,
        adapters: dict[int, DenseAligner] | None = None,
        adapter_scale: float = 0.2,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        adapters = adapters or {}
        bad = sorted(i for i in adapters if not 0 <= i < depth)
        if bad:
            raise ValueError(f"aligners requested for blocks {bad} of a {depth}-block ViT")
        self.embed_dim = dim
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.pretrained_grid = pretrained_grid
        self.interpolate_offset = interpolate_offset
        self.interpolate_antialias = interpolate_antialias
        self.grad_checkpointing = False
        self.checkpoint_scope = "block"  # or "mlp": see DETRIS.set_grad_checkpointing

        self.patch_embed = PatchEmbed(patch_size, in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + pretrained_grid**2, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, dim))
        # Unused at inference but part of every DINOv2 checkpoint (masked-image pretraining).
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, adapters.get(i), adapter_scale) for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.register_tokens, std=1e-6)

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.num_register_tokens

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid (rows, cols) of an image; raises if a side is not a multiple of the patch size."""
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the patch size {p}: "
                f"resize or pad to e.g. {round(height / p) * p}x{round(width / p) * p}"
            )
        return height // p, width // p

    def interpolate_pos_encoding(self, grid: tuple[int, int]) -> Tensor:
        """Position embedding for a ``grid`` = (rows, cols) patch grid: (1, 1 + rows*cols, dim)."""
        gh, gw = grid
        m = self.pretrained_grid
        if (gh, gw) == (m, m):
            return self.pos_embed
        # The official code resizes in float32 whatever the model's dtype; doing the same keeps
        # float64 runs comparable with it (and is harmless for float32).
        pos = self.pos_embed.float()
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        patch_pos = patch_pos.reshape(1, m, m, -1).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            scale = ((gh + self.interpolate_offset) / m, (gw + self.interpolate_offset) / m)
            patch_pos = F.interpolate(
                patch_pos, scale_factor=scale, mode="bicubic", antialias=self.interpolate_antialias
            )
        else:
            patch_pos = F.interpolate(patch_pos, size=(gh, gw), mode="bicubic", antialias=self.interpolate_antialias)
        if patch_pos.shape[-2:] != (gh, gw):
            raise RuntimeError(f"position embedding resized to {tuple(patch_pos.shape[-2:])}, expected {grid}")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
        return torch.cat([cls_pos, patch_pos], dim=1).to(self.pos_embed.dtype)

    def prepare_tokens(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """images (N, 3, H, W) -> tokens (N, 1 + registers + H/p*W/p, dim) and the patch grid."""
        grid = self.grid_size(images.shape[-2], images.shape[-1])
        # The residual stream is kept in the parameters' dtype: under bf16/fp16 autocast the patch
        # embedding comes out in low precision, and rounding the position embedding and the prefix
        # tokens to it as well would cost accuracy in every later block (as in the official model,
        # where the sum with the float32 position embedding promotes the stream back to float32).
        x = self.patch_embed(images).to(self.pos_embed.dtype)
        n = x.shape[0]
        x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1) + self.interpolate_pos_encoding(grid)
        # Registers are inserted after the position embedding is added: they carry none.
        registers = self.register_tokens.expand(n, -1, -1)
        return torch.cat([x[:, :1], registers, x[:, 1:]], dim=1), grid

    def forward(
        self, images: Tensor, words: Tensor | None = None, taps: Sequence[int] = ()
    ) -> tuple[Tensor, list[Tensor]]:
        """Run the ViT.

        Args:
            images: (N, 3, H, W) with H, W multiples of the patch size.
            words: (N, L, text_dim) word features for the aligners (required if any block has one).
            taps: 0-based block indices whose raw (un-normalised) output tokens are returned.

        Returns:
            ``(normed, tapped)``: the final LayerNorm output (N, T, dim) including prefix tokens, and
            the tapped block outputs (each (N, T, dim)) in ``taps`` order.
        """
        x, grid = self.prepare_tokens(images)
        wanted = {i: k for k, i in enumerate(taps)}
        tapped: list[Tensor | None] = [None] * len(taps)
        recompute = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            if recompute and self.checkpoint_scope == "block":
                x = checkpoint(block, x, words, grid, use_reentrant=False)
            else:
                x = block(x, words, grid, recompute_mlp=recompute)
            if i in wanted:
                tapped[wanted[i]] = x
        missing = [t for t, v in zip(taps, tapped) if v is None]
        if missing:
            raise ValueError(f"cannot tap blocks {missing} of a {len(self.blocks)}-block ViT")
        return self.norm(x), tapped  # type: ignore[return-value]
