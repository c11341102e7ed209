"""A small vision transformer (ViT, Dosovitskiy et al. 2021) for small images such as MNIST.

The image [C, H, W] is cut into non-overlapping ``patch`` x ``patch`` squares, each flattened and mapped
to ``dim`` features by one linear layer (``embed``); a learned class token is put in front and learned
position embeddings are added. ``depth`` pre-norm blocks follow, each ``x + attn(norm1(x))`` (multi-head
self-attention with separate linear q, k, v and output projections) then ``x + mlp(norm2(x))`` (linear,
GELU, linear, ``mlp_ratio`` x ``dim`` hidden units). A final LayerNorm of the class token feeds the
linear ``head``. No dropout. Defaults for 28x28 MNIST: patch 7 (16 patches), dim 64, depth 4, 4 heads,
mlp ratio 2: 139k parameters for 10 classes. ``model.width`` sets ``dim``; a width that is not a multiple
of 4 gets as many heads as divide it (2 or 1), so that every width builds (``dense-control`` scales it).

Every weight the pruning may mask is a 2-d ``nn.Linear`` weight (the patch embedding too, so masks
and magnitudes are those of a linear layer). Init: the project's :func:`sparsedd.models.reset_parameters`,
as for every model (not the ViT paper's truncated normal of std 0.02): Kaiming normal (variance 2 / fan-in)
for the linear weights, so that global magnitude pruning ranks them on the scale it does elsewhere; zero
biases (or ``model.bias_init = torch``); LayerNorms scale one, shift zero. The class token [1, dim] and
position embeddings [tokens, dim] are 2-d so that the same rule (fan-in: the size of one row) draws them
from the seed at variance 2 / dim.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import SparseddError

VIT_DIM, VIT_DEPTH, VIT_HEADS, VIT_PATCH, VIT_MLP_RATIO = 64, 4, 4, 7, 2


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:  # [B, N, D] -> [B, heads, N, D / heads]
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        # written out, not F.scaled_dot_product_attention: its CPU kernel has no double backward (sharpness)
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        y = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * mlp_ratio)
        self.fc2 = nn.Linear(dim * mlp_ratio, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    def __init__(self, image: tuple[int, int, int], num_classes: int, *, dim: int = VIT_DIM, depth: int = VIT_DEPTH,
                 heads: int = VIT_HEADS, patch: int = VIT_PATCH, mlp_ratio: int = VIT_MLP_RATIO):
        super().__init__()
        c, h, w = image
        self.patch = patch
        tokens = (h // patch) * (w // patch) + 1
        self.cls_token = nn.Parameter(torch.empty(1, dim))
        self.pos_embed = nn.Parameter(torch.empty(tokens, dim))
        self.embed = nn.Linear(c * patch * patch, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.patch  # [B, patches (row-major), C * p * p] as F.unfold's order (a reshape: quick on meta tensors too)
        patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)
        z = self.embed(patches)
        z = torch.cat([self.cls_token.expand(z.shape[0], 1, -1), z], dim=1) + self.pos_embed
        for block in self.blocks:
            z = block(z)
        return self.head(self.norm(z[:, 0]))

    def prunable_names(self, layers: str = "default") -> list[str]:
        """Linear weights: the patch embedding, every block's q, k, v, out, fc1 and fc2 (``default``,
        ``hidden``) and, with ``all``, the head. Never biases, norms or the class and position embeddings."""
        names = [f"{m}.weight" for m, mod in self.named_modules() if isinstance(mod, nn.Linear)]
        if layers in ("default", "hidden"):
            return [n for n in names if n != "head.weight"]
        if layers == "all":
            return names
        raise SparseddError(f"prune.layers {layers!r} does not apply to the vit (it has no conv layers); "
                            f"use default, all or hidden")


def vit(cfg_width: int, input_shape: tuple[int, ...], num_classes: int) -> ViT:
    """The ViT for inputs ``input_shape`` (images [C, H, W] with H, W multiples of the patch), or a one-line error."""
    if len(input_shape) != 3:
        raise SparseddError(f"vit expects images [C, H, W] (e.g. mnist), the data has shape {list(input_shape)}; "
                            f"use an image data set or model.name = 'mlp'")
    _, h, w = input_shape
    if h % VIT_PATCH or w % VIT_PATCH:
        raise SparseddError(f"vit cuts images into {VIT_PATCH}x{VIT_PATCH} patches, the data has {h}x{w} "
                            f"(not a multiple of {VIT_PATCH}); use mnist (28x28)")
    dim = cfg_width or VIT_DIM
    return ViT(tuple(input_shape), num_classes, dim=dim, heads=math.gcd(dim, VIT_HEADS))
