"""The sight-cone (frustum) mask for cross-view attention.

A patch of one camera may only attend patches of another camera that could see the same 3D
points: their viewing frusta (the patch's pyramid cut between a near and a far depth) intersect.
The mask is a training-time attention bias built from calibration; views without calibration
get no mask.

Method: an exact separating-axis test (SAT) on the two convex frustum polyhedra. Each frustum
has 8 vertices, 5 distinct face normals (4 sides + the near/far caps, which share one) and
6 distinct edge directions (4 lateral rays + the 2 directions of the patch parallelogram). Two
convex polyhedra are disjoint iff one of the 5 + 5 + 6*6 = 46 candidate axes separates their
projections, and the smallest overlap over these axes is their penetration depth, so the test
has no approximation error. The one deliberate choice is at the boundary: frusta that only
touch (a shared face, as between neighbouring patches of one camera, or rows of a rectified
stereo pair) see no common volume, so a pair is kept only if the penetration depth exceeds
`TOL` x scene scale (about 3e-7 m for the sim): false drops only for overlaps thinner than
that, no false keeps. Checked against an LP feasibility reference in the tests and benchmark.

Conventions: OpenCV camera axes (x right, y down, z forward), extrinsics camera-to-world, pixel
(0, 0) = centre of the top-left pixel (the sim's intrinsics use cx = (W-1)/2), depth = z in the
camera frame (so the near and far caps are planes). Tokens are ordered view-major then
row-major over the patch grid: index = v * N + r * w + c.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

TOL = 1e-7  # penetration depth (x scene scale) below which frusta only touch: dropped
_CACHE: OrderedDict[bytes, Tensor] = OrderedDict()  # frustum_mask_batch's recent masks
_CACHE_SIZE = 32
_CHUNK_PAIRS = 1 << 15  # pairs per edge-axis chunk: bounds memory near 100 MB


def patch_rays(intrinsics: Tensor, image_hw: tuple[int, int], patch: int) -> Tensor:
    """(3, 3) -> (h*w, 4, 3) camera-frame directions (z = 1) of each patch's corners.

    Corners in order top-left, top-right, bottom-right, bottom-left; a patch covers whole
    pixels, so its edges lie half a pixel outside the outer pixel centres. With z = 1 the point
    at depth d along a corner ray is simply d * ray.
    """
    hh, ww = image_hw[0] // patch, image_hw[1] // patch
    k = torch.as_tensor(intrinsics, dtype=torch.float64)
    r = torch.arange(hh, dtype=torch.float64)
    c = torch.arange(ww, dtype=torch.float64)
    rr, cc = torch.meshgrid(r, c, indexing="ij")
    u0, v0 = (cc * patch - 0.5).reshape(-1), (rr * patch - 0.5).reshape(-1)
    u1, v1 = u0 + patch, v0 + patch
    us = torch.stack([u0, u1, u1, u0], -1)
    vs = torch.stack([v0, v0, v1, v1], -1)
    pix = torch.stack([us, vs, torch.ones_like(us)], -1)  # (N, 4, 3)
    rays = pix @ torch.linalg.inv(k).T
    return rays / rays[..., 2:3]


def _frusta(intr: Tensor, c2w: Tensor, image_hw: tuple[int, int], patch: int,
            depth_range: tuple[float, float]) -> tuple[Tensor, Tensor, Tensor]:
    """World-frame vertices (N, 8, 3), face normals (N, 5, 3), edge directions (N, 6, 3)."""
    near, far = depth_range
    rays = patch_rays(intr, image_hw, patch)  # (N, 4, 3) camera frame
    rot, org = c2w[:3, :3].to(torch.float64), c2w[:3, 3].to(torch.float64)
    d = rays @ rot.T  # world directions
    verts = torch.cat([org + near * d, org + far * d], 1)
    sides = torch.cross(d, torch.roll(d, -1, 1), dim=-1)  # (N, 4, 3)
    cap = rot[:, 2].expand(d.shape[0], 1, 3)
    normals = torch.cat([sides, cap], 1)
    edges = torch.cat([d, (d[:, 1] - d[:, 0])[:, None], (d[:, 3] - d[:, 0])[:, None]], 1)
    return verts, normals, edges


def _face_gap(normals: Tensor, v_own: Tensor, v_other: Tensor) -> Tensor:
    """(Na, Nb) largest separation along the face normals (Na, 5, 3) of set a, own vertices
    (Na, 8, 3) against the other set's (Nb, 8, 3): one matmul for all pairs."""
    axes = normals / normals.norm(dim=-1, keepdim=True)
    own = torch.einsum("ikc,ivc->ikv", axes, v_own)  # (Na, 5, 8)
    oth = (axes.reshape(-1, 3) @ v_other.reshape(-1, 3).T).reshape(
        axes.shape[0], 5, v_other.shape[0], 8)  # (Na, 5, Nb, 8)
    (own_lo, own_hi), (oth_lo, oth_hi) = torch.aminmax(own, dim=-1), torch.aminmax(oth, dim=-1)
    gap = torch.maximum(oth_lo - own_hi[..., None], own_lo[..., None] - oth_hi)  # (Na, 5, Nb)
    return gap.amax(1)


def _sat_intersect(va: Tensor, na: Tensor, ea: Tensor, vb: Tensor, nb: Tensor, eb: Tensor,
                   scale: float) -> Tensor:
    """(Na, Nb) bool: frustum i of set a and frustum j of set b share volume (SAT, 46 axes).

    The 10 face normals first, for all pairs at once; the 36 edge-edge axes only for the pairs
    no face normal separated."""
    tol = TOL * scale
    out = torch.maximum(_face_gap(na, va, vb), _face_gap(nb, vb, va).T) < -tol
    pairs = torch.nonzero(out)
    for s in range(0, pairs.shape[0], _CHUNK_PAIRS):
        i, j = pairs[s:s + _CHUNK_PAIRS].unbind(1)
        axes = torch.cross(ea[i, :, None], eb[j, None], dim=-1).reshape(-1, 36, 3)
        norm = axes.norm(dim=-1, keepdim=True)
        axes = axes / norm.clamp_min(1e-300)
        a_lo, a_hi = torch.aminmax(axes @ va[i].transpose(1, 2), dim=-1)  # over 8 vertices
        b_lo, b_hi = torch.aminmax(axes @ vb[j].transpose(1, 2), dim=-1)
        gap = torch.maximum(b_lo - a_hi, a_lo - b_hi)
        gap = gap.masked_fill(norm[..., 0] < 1e-9, -torch.inf)  # parallel edges: no axis
        out[i, j] = (gap < -tol).all(-1)
    return out


def lp_penetration(intr_a: Tensor, c2w_a: Tensor, intr_b: Tensor, c2w_b: Tensor,
                   image_hw: tuple[int, int], patch: int,
                   depth_range: tuple[float, float]) -> np.ndarray:
    """(Na, Nb) reference for the SAT: the largest t such that a point lies at distance >= t
    inside every face of both frusta (an LP per pair; t > 0 iff they share volume). Slow: for
    tests and the benchmark only (scipy, through scikit-learn)."""
    from scipy.optimize import linprog

    def halfspaces(intr: Tensor, c2w: Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
        rays = patch_rays(intr, image_hw, patch).numpy()
        rot, org = c2w[:3, :3].double().numpy(), c2w[:3, 3].double().numpy()
        out = []
        for d in rays:
            dw = d @ rot.T
            rows = [np.cross(dw[k], dw[(k + 1) % 4]) for k in range(4)]
            rows = [r if r @ dw.mean(0) < 0 else -r for r in rows]  # outward: r.(x-o) <= 0
            z = rot[:, 2]
            a = np.array(rows + [-z, z])
            b = np.array([r @ org for r in rows] + [-(z @ org + depth_range[0]),
                                                     z @ org + depth_range[1]])
            nrm = np.linalg.norm(a, axis=1)
            out.append((a / nrm[:, None], b / nrm))
        return out

    ha, hb = halfspaces(intr_a, c2w_a), halfspaces(intr_b, c2w_b)
    res = np.zeros((len(ha), len(hb)))
    for i, (aa, ba) in enumerate(ha):
        for j, (ab, bb) in enumerate(hb):
            a_ub = np.hstack([np.vstack([aa, ab]), np.ones((12, 1))])  # n.x + t <= b
            sol = linprog([0, 0, 0, -1], A_ub=a_ub, b_ub=np.concatenate([ba, bb]),
                          bounds=[(None, None)] * 3 + [(None, 10.0)], method="highs")
            res[i, j] = -sol.fun
    return res


def _pair_mask(intr: Tensor, c2w: Tensor, calibrated: Tensor, image_hw: tuple[int, int],
               patch: int, depth_range: tuple[float, float]) -> Tensor:
    """(V*N, V*N) mask for one set of static poses c2w (V, 4, 4)."""
    views = intr.shape[0]
    n = (image_hw[0] // patch) * (image_hw[1] // patch)
    mask = torch.ones(views * n, views * n, dtype=torch.bool)
    fr = {v: _frusta(intr[v], c2w[v], image_hw, patch, depth_range)
          for v in range(views) if bool(calibrated[v])}
    if len(fr) < 2:
        return mask
    centres = torch.stack([c2w[v, :3, 3].to(torch.float64) for v in fr])
    scale = float(depth_range[1] + (centres - centres.mean(0)).norm(dim=-1).max())
    for a in fr:
        for b in fr:
            if b <= a:
                continue
            blk = _sat_intersect(*fr[a], *fr[b], scale)
            mask[a * n:(a + 1) * n, b * n:(b + 1) * n] = blk
            mask[b * n:(b + 1) * n, a * n:(a + 1) * n] = blk.T  # symmetric by construction
    return mask


def frustum_mask(intrinsics: Tensor, extrinsics: Tensor, image_hw: tuple[int, int], patch: int,
                 depth_range: tuple[float, float], calibrated: Tensor | None = None,
                 frame: int | None = None) -> Tensor:
    """bool (V*N, V*N), True = may attend; same-view pairs and uncalibrated views always True.

    intrinsics (V, 3, 3); extrinsics (V, 4, 4) static camera-to-world or (V, T, 4, 4) per frame
    (moving cameras). With per-frame poses, `frame` picks one frame; None keeps the union over
    frames (a pair is kept if the frusta meet in any frame), which is safe when one mask serves
    a whole clip. calibrated (V,) bool, None = all.
    """
    intr = torch.as_tensor(intrinsics, dtype=torch.float64).cpu()
    ext = torch.as_tensor(extrinsics, dtype=torch.float64).cpu()
    views = intr.shape[0]
    cal = (torch.ones(views, dtype=torch.bool) if calibrated is None
           else torch.as_tensor(calibrated, dtype=torch.bool).cpu())
    # uncalibrated rows may hold NaN or zeros: never read them
    intr = torch.where(cal[:, None, None], intr, torch.eye(3, dtype=torch.float64))
    if ext.dim() == 3:
        ext = ext[:, None]
    eye = torch.eye(4, dtype=torch.float64)
    ext = torch.where(cal[:, None, None, None], ext, eye)
    frames = range(ext.shape[1]) if frame is None else [frame]
    mask = None
    for t in frames:
        m = _pair_mask(intr, ext[:, t], cal, image_hw, patch, depth_range)
        mask = m if mask is None else mask | m
    assert mask is not None
    return mask


def attention_bias(mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """bool mask -> additive bias (same shape): 0 where True, -inf where False."""
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return bias.masked_fill(~mask, float("-inf"))


def frustum_mask_batch(intrinsics: Tensor, extrinsics: Tensor, calibrated: Tensor,
                       image_hw: tuple[int, int], patch: int,
                       depth_range: tuple[float, float], frame: int | None = None) -> Tensor:
    """bool (B, V*N, V*N) from intrinsics (B, V, 3, 3), extrinsics (B, V, 4, 4) or
    (B, V, T, 4, 4), calibrated (B, V). A calibration seen recently (a static rig: every step)
    is not recomputed: a small LRU cache keyed by the exact inputs."""
    out = []
    for i in range(intrinsics.shape[0]):
        key = b"".join(np.ascontiguousarray(x[i].detach().cpu().numpy()).tobytes()
                       for x in (intrinsics, extrinsics, calibrated))
        key += repr((tuple(image_hw), patch, tuple(depth_range), frame)).encode()
        if key in _CACHE:
            _CACHE.move_to_end(key)
        else:
            _CACHE[key] = frustum_mask(intrinsics[i], extrinsics[i], image_hw, patch,
                                       depth_range, calibrated[i], frame)
            if len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        out.append(_CACHE[key])
    return torch.stack(out).to(intrinsics.device)


def _pick_patches(mask: Tensor, n: int, k: int = 3) -> list[int]:
    """A few patches of view 0 spread over how many view-1 patches they keep (the fewest
    non-zero, a middle one, the most), so the figure shows narrow and wide sight cones."""
    kept = mask[:n, n:2 * n].sum(1).float()
    some = torch.nonzero(kept > 0)[:, 0]
    if some.numel() == 0:
        return [0]
    order = some[torch.argsort(kept[some] + some * 1e-6)]  # stable tie-break
    idx = [int(order[round(q * (len(order) - 1))]) for q in (0.0, 0.5, 1.0)]
    return list(dict.fromkeys(idx))[:k]


def save_mask_figure(mask: Tensor, views: int, hw: tuple[int, int], path: str | Path,
                     title: str, images: list[np.ndarray] | None = None) -> None:
    """PNG: the (V*N x V*N) mask matrix, and for a few patches of view 0 (shown on view 0) the
    view-1 patches they may attend (overlaid on view 1's image when `images` is given).

    hw is the patch grid (h, w), N = h * w.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    h, w = hw
    n = h * w
    m = mask.detach().cpu().bool()
    picks = _pick_patches(m, n) if views > 1 else []
    fig, axs = plt.subplots(1 + len(picks), 2 if picks else 1,
                            figsize=(8, 3.6 * (1 + len(picks))), squeeze=False)
    ax = axs[0, 0]
    ax.imshow(m.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    for v in range(1, views):
        ax.axhline(v * n - 0.5, color="r", lw=0.8)
        ax.axvline(v * n - 0.5, color="r", lw=0.8)
    cross = [m[a * n:(a + 1) * n, b * n:(b + 1) * n].float().mean().item()
             for a in range(views) for b in range(views) if a != b]
    kept = sum(cross) / len(cross) if cross else 1.0
    ax.set_title(f"mask (white = may attend); cross-view kept {kept:.1%}", fontsize=9)
    ax.set_xlabel("key token (view-major)")
    ax.set_ylabel("query token")
    if picks:
        axs[0, 1].axis("off")
        axs[0, 1].text(0.0, 0.5, "rows below: a patch of view 0 (left, blue)\n"
                       "and the view-1 patches it may attend (right, green)", fontsize=9)
    for row, i in enumerate(picks, 1):
        for col, (view, sel) in enumerate([(0, [i]), (1, torch.nonzero(m[i, n:2 * n])[:, 0])]):
            ax = axs[row, col]
            img = images[view] if images is not None else np.full((h, w, 3), 255, np.uint8)
            ih, iw = img.shape[:2]
            ph, pw = ih / h, iw / w
            ax.imshow(img, extent=(-0.5, iw - 0.5, ih - 0.5, -0.5))
            color = "tab:blue" if col == 0 else "tab:green"
            for j in sel:
                r, c = divmod(int(j), w)
                ax.add_patch(Rectangle((c * pw - 0.5, r * ph - 0.5), pw, ph, facecolor=color,
                                       alpha=0.45, edgecolor=color, lw=0.8))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"view 0 patch {i}" if col == 0
                         else f"view 1: {len(sel)}/{n} patches kept", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
