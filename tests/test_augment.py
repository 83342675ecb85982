"""Tests for lgm.augment: per-sample flip + random-resized-crop + noise."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from lgm.augment import AugmentConfig, CropParams, add_noise, augment, crop_resize, resize, sample_crop_params

RES = 64


# ---------------------------------------------------------------- helpers


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _coordinate_image(n: int = 1, res: int = RES) -> torch.Tensor:
    """Channel 0: pixel-centre column as a fraction of the width, channel 1: row, channel 2: ones."""
    centres = (torch.arange(res, dtype=torch.float32) + 0.5) / res
    x = torch.empty(n, 3, res, res)
    x[:, 0] = centres.view(1, 1, res)
    x[:, 1] = centres.view(1, res, 1)
    x[:, 2] = 1.0
    return x


def _params(x0, y0, w, h, flip) -> CropParams:
    t = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    return CropParams(x0=t(x0), y0=t(y0), w=t(w), h=t(h), flip=torch.tensor(flip, dtype=torch.bool))


def _expected_coords(x0, y0, w, h, flip, size):
    """Fractional source coordinates sampled by output pixel centres of the box."""
    u = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    cols = x0 + w * (1 - u if flip else u)
    rows = y0 + h * u
    return cols.view(1, size).expand(size, size), rows.view(size, 1).expand(size, size)


def _random_images(n: int, res: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, res, res, generator=_gen(seed))


# ---------------------------------------------------------------- per-sample randomness


def test_crop_params_vary_within_a_batch():
    p = sample_crop_params(64, AugmentConfig(), _gen(0))
    for t in (p.x0, p.y0, p.w, p.h):
        assert t.shape == (64,)
        assert torch.unique(t).numel() > 32
    assert p.flip.dtype == torch.bool
    assert p.flip.any() and not p.flip.all()


def test_augment_identical_images_gives_different_outputs():
    img = _random_images(1, 32, seed=1)
    x = img.expand(16, -1, -1, -1).contiguous()
    out = augment(x, 24, AugmentConfig(noise_p=0.0), _gen(2))  # crops and flips only
    assert out.shape == (16, 3, 24, 24)
    flat = out.reshape(16, -1)
    dists = torch.cdist(flat, flat)
    off_diag = dists[~torch.eye(16, dtype=torch.bool)]
    assert off_diag.min().item() > 1e-3


def test_gradients_flow_to_input():
    x = _random_images(4, 32, seed=3).requires_grad_(True)
    out = augment(x, 16, AugmentConfig(noise_p=1.0), _gen(4))
    weight = torch.randn(out.shape, generator=_gen(5))
    (out * weight).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert torch.isfinite(x.grad).all()
    for i in range(4):  # every sample receives gradient
        assert x.grad[i].abs().sum().item() > 0


# ---------------------------------------------------------------- crop geometry


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize(
    "box",
    [(0.25, 0.125, 0.5, 0.75), (0.1, 0.3, 0.3, 0.2), (0.0, 0.0, 1.0, 1.0)],
    ids=["wide", "small", "full"],
)
@pytest.mark.parametrize("size", [16, 37])
def test_crop_resize_samples_requested_box(box, flip, size):
    x0, y0, w, h = box
    x = _coordinate_image()
    out = crop_resize(x, _params([x0], [y0], [w], [h], [flip]), size)
    assert out.shape == (1, 3, size, size)
    cols, rows = _expected_coords(x0, y0, w, h, flip, size)
    # a linear ramp is reproduced exactly by bilinear sampling between pixel centres
    inside = (cols >= 0.5 / RES) & (cols <= 1 - 0.5 / RES) & (rows >= 0.5 / RES) & (rows <= 1 - 0.5 / RES)
    assert inside.float().mean() > 0.8
    tol = 1e-4  # one source pixel is 1/64 = 0.016
    assert (out[0, 0][inside] - cols[inside]).abs().max().item() < tol
    assert (out[0, 1][inside] - rows[inside]).abs().max().item() < tol
    # inside the image nothing is zero-padded: the ones channel stays one
    assert (out[0, 2] - 1).abs().max().item() < 1e-5


def test_crop_resize_corners_and_centre():
    x = _coordinate_image()
    size = 9
    x0, y0, w, h = 0.25, 0.5, 0.5, 0.25
    for flip in (False, True):
        out = crop_resize(x, _params([x0], [y0], [w], [h], [flip]), size)[0]
        half = 0.5 / size
        left, right = x0 + w * half, x0 + w * (1 - half)
        if flip:
            left, right = right, left
        top, bottom = y0 + h * half, y0 + h * (1 - half)
        one_px = 1.0 / RES
        assert out[0, 0, 0].item() == pytest.approx(left, abs=one_px)
        assert out[0, 0, -1].item() == pytest.approx(right, abs=one_px)
        assert out[1, 0, 0].item() == pytest.approx(top, abs=one_px)
        assert out[1, -1, 0].item() == pytest.approx(bottom, abs=one_px)
        assert out[0, 4, 4].item() == pytest.approx(x0 + w / 2, abs=one_px)
        assert out[1, 4, 4].item() == pytest.approx(y0 + h / 2, abs=one_px)


def test_crop_resize_flip_mirrors_horizontally():
    x = _random_images(2, 32, seed=6)
    p_plain = _params([0.2, 0.0], [0.1, 0.0], [0.6, 1.0], [0.7, 1.0], [False, False])
    p_flip = replace(p_plain, flip=torch.tensor([True, True]))
    a = crop_resize(x, p_plain, 20)
    b = crop_resize(x, p_flip, 20)
    torch.testing.assert_close(b, a.flip(-1), rtol=0, atol=1e-5)
    # the full-image flip at the input size equals flipping the input
    full_flip = _params([0.0], [0.0], [1.0], [1.0], [True])
    torch.testing.assert_close(crop_resize(x[1:], full_flip, 32), x[1:].flip(-1), rtol=0, atol=1e-5)


def test_crop_resize_uses_each_samples_own_box():
    x = _coordinate_image(n=3)
    boxes = [(0.0, 0.0, 0.5, 0.5, False), (0.5, 0.25, 0.25, 0.5, True), (0.2, 0.6, 0.4, 0.3, False)]
    params = _params(*[[b[i] for b in boxes] for i in range(5)])
    size = 8
    out = crop_resize(x, params, size)
    for i, (x0, y0, w, h, flip) in enumerate(boxes):
        cols, rows = _expected_coords(x0, y0, w, h, flip, size)
        assert (out[i, 0] - cols).abs().max().item() < 1e-4
        assert (out[i, 1] - rows).abs().max().item() < 1e-4


def test_full_box_same_size_reproduces_input():
    x = _random_images(3, 32, seed=7)
    p = _params([0.0] * 3, [0.0] * 3, [1.0] * 3, [1.0] * 3, [False] * 3)
    torch.testing.assert_close(crop_resize(x, p, 32), x, rtol=0, atol=1e-5)


def test_box_beyond_image_is_zero_padded():
    x = _coordinate_image()
    size = 16
    x0, w = -0.5, 2.0  # an unclamped box twice the image width, centred
    out = crop_resize(x, _params([x0], [0.0], [w], [1.0], [False]), size)
    cols, _ = _expected_coords(x0, 0.0, w, 1.0, False, size)
    outside = (cols < -0.5 / RES) | (cols > 1 + 0.5 / RES)
    assert outside.any()
    assert out[0, :, outside].abs().max().item() == 0.0
    inside = (cols >= 0.5 / RES) & (cols <= 1 - 0.5 / RES)
    assert (out[0, 0][inside] - cols[inside]).abs().max().item() < 1e-4


# ---------------------------------------------------------------- crop sampling


def test_clamped_boxes_lie_inside_the_image():
    p = sample_crop_params(4000, AugmentConfig(clamp_crop=True), _gen(8))
    eps = 1e-6
    assert (p.w <= 1).all() and (p.h <= 1).all()
    assert (p.w > 0).all() and (p.h > 0).all()
    assert (p.x0 >= 0).all() and (p.y0 >= 0).all()
    assert (p.x0 + p.w <= 1 + eps).all() and (p.y0 + p.h <= 1 + eps).all()
    # some boxes hit the clamp (w or h exactly 1), i.e. the clamp is doing something
    assert ((p.w == 1) | (p.h == 1)).any()


def test_unclamped_boxes_follow_scale_and_ratio():
    cfg = AugmentConfig(clamp_crop=False, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    p = sample_crop_params(4000, cfg, _gen(9))
    area = p.w * p.h
    aspect = p.w / p.h
    assert area.min().item() >= 0.08 * (1 - 1e-5) and area.max().item() <= 1.0 * (1 + 1e-5)
    assert aspect.min().item() >= 0.75 * (1 - 1e-5) and aspect.max().item() <= 4 / 3 * (1 + 1e-5)
    # area uniform on the scale range, log-aspect uniform on the log-ratio range
    assert area.mean().item() == pytest.approx(0.54, abs=0.02)
    assert aspect.log().mean().item() == pytest.approx(0.0, abs=0.02)
    assert aspect.log().std().item() == pytest.approx(2 * math.log(4 / 3) / math.sqrt(12), rel=0.05)
    # with scale up to 1 and ratio != 1, some boxes are wider or taller than the image ...
    big = (p.w > 1) | (p.h > 1)
    assert big.any()
    # ... and then the box is shifted to cover the image along that axis (negative corner)
    wide = p.w > 1
    assert (p.x0[wide] <= 0).all() and (p.x0[wide] + p.w[wide] >= 1 - 1e-6).all()


def test_narrow_scale_range():
    cfg = AugmentConfig(clamp_crop=False, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    p = sample_crop_params(100, cfg, _gen(10))
    torch.testing.assert_close(p.w, torch.full((100,), 0.5))
    torch.testing.assert_close(p.h, torch.full((100,), 0.5))
    assert (p.x0 >= 0).all() and (p.x0 <= 0.5).all()


@pytest.mark.parametrize("flip_p, lo, hi", [(0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.5, 0.45, 0.55), (0.2, 0.16, 0.24)])
def test_flip_probability(flip_p, lo, hi):
    p = sample_crop_params(2000, AugmentConfig(flip_p=flip_p), _gen(11))
    frac = p.flip.float().mean().item()
    assert lo <= frac <= hi


# ---------------------------------------------------------------- determinism


def test_same_seed_same_output_different_seed_different_output():
    x = _random_images(6, 32, seed=12)
    cfg = AugmentConfig()
    a = augment(x, 24, cfg, _gen(123))
    b = augment(x, 24, cfg, _gen(123))
    c = augment(x, 24, cfg, _gen(124))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-3)


# ---------------------------------------------------------------- kinds


@pytest.mark.parametrize("size", [16, 24, 40])
def test_kind_none_is_plain_resize(size):
    x = _random_images(2, 32, seed=13)
    g = _gen(14)
    state = g.get_state()
    out = augment(x, size, AugmentConfig(kind="none"), g)
    want = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-6)
    assert torch.equal(g.get_state(), state)  # no randomness consumed
    assert torch.equal(augment(x, size, AugmentConfig(kind="none"), _gen(99)), out)


def test_resize_same_size_is_identity():
    x = _random_images(2, 16, seed=15)
    assert torch.equal(resize(x, 16), x)


def test_unknown_kind_raises():
    x = _random_images(1, 8, seed=16)
    with pytest.raises(ValueError):
        augment(x, 8, AugmentConfig(kind="autoaugment"), _gen(0))  # type: ignore[arg-type]


# ---------------------------------------------------------------- noise


def test_noise_p1_has_requested_std_and_mean():
    x = _random_images(8, 32, seed=17)
    noisy_cfg = AugmentConfig(noise_p=1.0, noise_std=0.2, noise_mean=0.1)
    clean_cfg = replace(noisy_cfg, noise_std=0.0, noise_mean=0.0)
    noisy = augment(x, 32, noisy_cfg, _gen(18))
    clean = augment(x, 32, clean_cfg, _gen(18))  # crops are drawn before the noise
    diff = noisy - clean
    # 8 * 3 * 32 * 32 = 24576 draws
    assert diff.std().item() == pytest.approx(0.2, rel=0.03)
    assert diff.mean().item() == pytest.approx(0.1, abs=0.01)
    for i in range(8):
        assert diff[i].std().item() > 0.15  # every sample got noise


def test_noise_p0_adds_nothing():
    x = _random_images(8, 32, seed=19)
    cfg = AugmentConfig(noise_p=0.0, noise_std=0.2, noise_mean=0.1)
    clean_cfg = replace(cfg, noise_std=0.0, noise_mean=0.0)
    torch.testing.assert_close(augment(x, 24, cfg, _gen(20)), augment(x, 24, clean_cfg, _gen(20)), rtol=0, atol=0)


def test_noise_is_applied_per_sample():
    x = torch.zeros(200, 3, 4, 4)
    cfg = AugmentConfig(noise_p=0.5, noise_std=0.2, noise_mean=0.0)
    out = add_noise(x, cfg, _gen(21))
    noisy = out.reshape(200, -1).abs().amax(dim=1) > 0
    # each sample is either untouched or noisy everywhere
    assert torch.equal(out[~noisy], torch.zeros_like(out[~noisy]))
    assert (out[noisy].reshape(int(noisy.sum()), -1) != 0).all()
    assert 70 <= int(noisy.sum()) <= 130


@pytest.mark.parametrize("size, channels", [(16, 3), (13, 3), (8, 1)])
@pytest.mark.parametrize("start, stop", [(0, 40), (0, 64), (10, 70), (64, 100), (5, 6), (0, 129)])
def test_views_drawn_only_as_far_as_asked_equal_the_whole_blocks(monkeypatch, size, channels, start, stop):
    import lgm.augment as A

    cfg = AugmentConfig(noise_p=0.5)
    x = torch.rand(stop - start, channels, 20, 20, generator=torch.Generator().manual_seed(1))
    fast = A.ViewAugmenter(cfg, size, torch.device("cpu")).augment_range(x, start, 77)
    monkeypatch.setattr(A, "_PREFIX_HOLDS", [False])  # every block's noise drawn whole
    whole = A.ViewAugmenter(cfg, size, torch.device("cpu")).augment_range(x, start, 77)
    assert torch.equal(fast, whole)
    assert A.normal_prefix_is_exact(torch.Generator(), 16) is False  # the patched check is what decides


def test_the_normal_prefix_check_holds_on_this_torch():
    import lgm.augment as A

    g = torch.Generator()
    assert A.normal_prefix_is_exact(g, 40 * 3 * 16 * 16)
    assert not A.normal_prefix_is_exact(g, 40 * 3 * 13 * 13)  # not a multiple of 16: the tail is redrawn
    whole = torch.randn(64, 3, 16, 16, generator=g.manual_seed(3))
    assert torch.equal(whole[:40], torch.randn(40, 3, 16, 16, generator=g.manual_seed(3)))


@pytest.mark.parametrize("start, stop", [(0, 40), (7, 33), (3, 9), (20, 20)])
def test_the_views_gradient_sums_each_images_tiles_in_order_on_several_threads(start, stop):
    """Views tile the images (view v shows image v mod N); the gradient an image gets is the sum of its views'
    gradients in view order, bit for bit, however many threads run (an index-accumulating backward was
    ordered by the threads: two identical 2-thread runs differed)."""
    import lgm.augment as A

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        n = 10
        x = torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(0), requires_grad=True)
        views = A.ViewAugmenter(AugmentConfig(kind="none", noise_std=0.0), 64, torch.device("cpu"))
        v = views.views(x, start, stop, step_seed=1)
        assert torch.equal(v.detach(), x.detach()[torch.arange(start, stop) % n])
        seen, stack = set(), [v.grad_fn]
        while stack:  # no node of the graph accumulates by index
            fn = stack.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            assert "Index" not in type(fn).__name__, type(fn).__name__
            stack.extend(f for f, _ in fn.next_functions)
        r = torch.randn(v.shape, generator=torch.Generator().manual_seed(1))
        (v * r).sum().backward()
        want = torch.zeros_like(x)
        for k in range(start, stop):
            want[k % n] += r[k - start]
        assert torch.equal(x.grad if x.grad is not None else torch.zeros_like(x), want)
    finally:
        torch.set_num_threads(before)
