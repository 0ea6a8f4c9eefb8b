"""The sight-cone mask on cameras whose overlap is known by construction, and against an LP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wallwm.model.frustum import (
    attention_bias,
    frustum_mask,
    frustum_mask_batch,
    lp_penetration,
    patch_rays,
    save_mask_figure,
)

HW, P, DR = (64, 64), 8, (0.05, 3.0)
N = (HW[0] // P) * (HW[1] // P)
F = 55.4  # ~60 degree field of view on 64 px


def kmat(f: float = F) -> torch.Tensor:
    return torch.tensor([[f, 0, (HW[1] - 1) / 2], [0, f, (HW[0] - 1) / 2], [0, 0, 1.0]])


def look(eye, target, up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """OpenCV camera-to-world looking from eye at target."""
    eye, target, up = (np.asarray(v, float) for v in (eye, target, up))
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, np.cross(z, x), z, eye
    return torch.tensor(m)


def cross(mask: torch.Tensor, a: int = 0, b: int = 1) -> torch.Tensor:
    return mask[a * N:(a + 1) * N, b * N:(b + 1) * N]


def test_patch_rays_cover_the_image():
    rays = patch_rays(kmat(), HW, P)
    assert rays.shape == (N, 4, 3)
    assert torch.allclose(rays[..., 2], torch.ones(N, 4, dtype=rays.dtype))
    # first patch's top-left corner is the image's top-left edge; last patch's bottom-right the
    # opposite edge, symmetric about the principal point
    assert torch.allclose(rays[0, 0, :2], -rays[-1, 2, :2])
    assert rays[0, 0, 0] < 0 and rays[0, 0, 1] < 0  # x right, y down


def test_side_by_side_parallel_matches_disparity():
    """Rectified stereo: patch (r, c) of A sees B's row r only, at disparities f*b/z."""
    base = 0.5
    ks = torch.stack([kmat(), kmat()])
    ext = torch.stack([look((0, 0, 0), (0, 1, 0)), look((base, 0, 0), (base, 1, 0))])
    m = frustum_mask(ks, ext, HW, P, DR)
    w = HW[1] // P
    lo, hi = F * base / DR[1], F * base / DR[0]
    want = torch.zeros(N, N, dtype=torch.bool)
    for i in range(N):
        for j in range(N):
            (ra, ca), (rb, cb) = divmod(i, w), divmod(j, w)
            # disparity u_a - u_b in the open interval spanned by the two pixel ranges
            dmin, dmax = (ca - cb) * P - P, (ca - cb) * P + P
            want[i, j] = ra == rb and max(dmin, lo) < min(dmax, hi)
    assert torch.equal(cross(m), want)
    assert 0 < cross(m).float().mean() < 1 / 8  # one row at most
    # too close to overlap: the shared field of view starts at z = b / (2 tan 30deg) = 0.43 m
    assert not cross(frustum_mask(ks, ext, HW, P, (0.05, 0.4))).any()


def test_opposite_cameras_keep_no_cross_pair():
    ks = torch.stack([kmat(), kmat()])
    ext = torch.stack([look((0, 0, 0), (0, 1, 0)), look((0, -0.2, 0), (0, -1, 0))])
    m = frustum_mask(ks, ext, HW, P, DR)
    assert not cross(m).any() and not cross(m, 1, 0).any()
    assert m[:N, :N].all() and m[N:, N:].all()  # same view: always


def test_identical_cameras_keep_their_counterpart_only():
    ks = torch.stack([kmat(), kmat()])
    ext = torch.stack([look((0, 0, 0), (1, 1, 0.3))] * 2)
    m = frustum_mask(ks, ext, HW, P, DR)
    assert torch.equal(cross(m), torch.eye(N, dtype=torch.bool))  # neighbours only touch


def test_uncalibrated_view_is_unmasked():
    ks = torch.stack([kmat(), kmat(), torch.full((3, 3), float("nan"))])
    ext = torch.stack([look((0, 0, 0), (0, 1, 0)), look((0, -0.2, 0), (0, -1, 0)),
                       torch.full((4, 4), float("nan"), dtype=torch.float64)])
    m = frustum_mask(ks, ext, HW, P, DR, calibrated=torch.tensor([True, True, False]))
    assert not cross(m, 0, 1).any()
    assert m[2 * N:].all() and m[:, 2 * N:].all()
    assert frustum_mask(ks[:2], ext[:2], HW, P, DR, torch.tensor([True, False])).all()


def test_moving_camera_per_frame_and_union():
    a = look((0, 0, 0), (0, 1, 0))
    away, same = look((0, -0.2, 0), (0, -1, 0)), a
    ext = torch.stack([a.expand(2, 4, 4), torch.stack([away, same])])  # (V=2, T=2, 4, 4)
    ks = torch.stack([kmat(), kmat()])
    eye = torch.eye(N, dtype=torch.bool)
    assert not cross(frustum_mask(ks, ext, HW, P, DR, frame=0)).any()
    assert torch.equal(cross(frustum_mask(ks, ext, HW, P, DR, frame=1)), eye)
    assert torch.equal(cross(frustum_mask(ks, ext, HW, P, DR)), eye)  # union over frames


def test_random_cameras_symmetric_and_exact_against_lp():
    rng = np.random.default_rng(0)
    hw, p = (64, 64), 16
    for _ in range(3):
        ks = torch.stack([kmat(), kmat(35.0), kmat(70.0)])
        ext = torch.stack([look(rng.normal(size=3) * 1.5, rng.normal(size=3) * 0.2)
                           for _ in range(3)])
        m = frustum_mask(ks, ext, hw, p, DR)
        assert torch.equal(m, m.T)
        n = 16
        ref = lp_penetration(ks[0], ext[0], ks[2], ext[2], hw, p, DR)
        sure = np.abs(ref) > 1e-6  # the LP's own tolerance
        got = m[:n, 2 * n:].numpy()
        assert (got == (ref > 0))[sure].all()


def test_bias_and_batch():
    ks = torch.stack([kmat(), kmat()])
    e1 = torch.stack([look((0, 0, 0), (0, 1, 0)), look((0.5, 0, 0), (0.5, 1, 0))])
    e2 = torch.stack([look((0, 0, 0), (0, 1, 0)), look((0, -0.2, 0), (0, -1, 0))])
    mb = frustum_mask_batch(torch.stack([ks, ks, ks]), torch.stack([e1, e2, e1]),
                            torch.tensor([[True, True], [True, True], [True, False]]),
                            HW, P, DR)
    assert mb.shape == (3, 2 * N, 2 * N)
    assert torch.equal(mb[0], frustum_mask(ks, e1, HW, P, DR))
    assert not cross(mb[1]).any() and mb[2].all()
    bias = attention_bias(mb[0])
    assert bias.dtype == torch.float32 and torch.equal(bias == 0, mb[0])
    assert torch.isneginf(bias[~mb[0]]).all()
    # a masked row still has its own view: softmax stays finite
    assert torch.isfinite(torch.softmax(bias, -1)).all()


@pytest.mark.parametrize("images", [False, True])
def test_save_mask_figure(tmp_path, images):
    ks = torch.stack([kmat(), kmat()])
    ext = torch.stack([look((0, 0, 0), (0, 1, 0)), look((0.5, 0, 0), (0.5, 1, 0))])
    m = frustum_mask(ks, ext, HW, P, DR)
    imgs = [np.zeros((64, 64, 3), np.uint8)] * 2 if images else None
    out = tmp_path / "f" / "mask.png"
    save_mask_figure(m, 2, (8, 8), out, "stereo", imgs)
    assert out.stat().st_size > 1000
