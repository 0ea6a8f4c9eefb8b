"""Pixel patches <-> tokens.

The video tower works on pixel patches, not autoencoder latents: at 64x64 the tiny preset is
cheap in pixels, the frustum mask is defined on image patches directly, and no pretrained
autoencoder has to ship with the repo. A latent autoencoder would slot in here (encode before
`patchify`, decode after `unpatchify`).
"""

# ruff: noqa: F722  (jaxtyping shape strings are not Python expressions)
from __future__ import annotations

from jaxtyping import Float
from torch import Tensor


def patchify(x: Float[Tensor, "*S C H W"], p: int) -> Float[Tensor, "*S N P"]:
    """Images -> row-major patch vectors, P = C*p*p (channels slowest)."""
    *s, c, h, w = x.shape
    x = x.reshape(*s, c, h // p, p, w // p, p)  # (*S, C, h, p, w, p)
    nd = len(s)
    x = x.permute(*range(nd), nd + 1, nd + 3, nd, nd + 2, nd + 4)  # (*S, h, w, C, p, p)
    return x.reshape(*s, (h // p) * (w // p), c * p * p)  # (*S, N, P)


def unpatchify(x: Float[Tensor, "*S N P"], p: int, c: int, h: int, w: int) -> Tensor:
    """Inverse of `patchify`: (*S, N, C*p*p) -> (*S, C, H, W)."""
    *s, _, _ = x.shape
    nd = len(s)
    x = x.reshape(*s, h // p, w // p, c, p, p)  # (*S, h, w, C, p, p)
    x = x.permute(*range(nd), nd + 2, nd, nd + 3, nd + 1, nd + 4)  # (*S, C, h, p, w, p)
    return x.reshape(*s, c, h, w)  # (*S, C, H, W)
