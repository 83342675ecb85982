"""Tests for lgm.synthetic: pyramid growth, pixels, color decorrelation, squash, state round trips."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lgm.synthetic import Pixels, Pyramid, default_grow_every, make_synthetic, num_levels_for
from lgm.synthetic.color import decorrelation_matrix, squash, to_correlated, unsquash

K = [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]]


# ---------------------------------------------------------------- helpers


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _apply_matrix_loop(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """out[n, c, h, w] = sum_j m[c, j] * s[n, j, h, w], one pixel at a time."""
    out = torch.zeros_like(s)
    n_img, _, hh, ww = s.shape
    for n in range(n_img):
        for i in range(hh):
            for j in range(ww):
                v = s[n, :, i, j]
                for c in range(3):
                    out[n, c, i, j] = sum(m[c, k] * v[k] for k in range(3))
    return out


def _set_levels_uniform(pyr: Pyramid, amplitude: float, seed: int) -> None:
    """Overwrite every level with U(-amplitude, amplitude), one extreme pixel each sign."""
    g = _gen(seed)
    with torch.no_grad():
        for p in pyr.pyramid:
            p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * amplitude)
            p.view(-1)[0] = amplitude
            p.view(-1)[-1] = -amplitude


# ---------------------------------------------------------------- schedule helpers


@pytest.mark.parametrize("r, levels", [(1, 1), (2, 2), (4, 3), (32, 6), (256, 9), (1024, 11)])
def test_num_levels_for_powers_of_two(r, levels):
    assert num_levels_for(r) == levels == int(round(math.log2(r))) + 1


@pytest.mark.parametrize("r", [0, -4, 3, 6, 24, 224, 255, 257])
def test_num_levels_for_rejects_non_powers_of_two(r):
    with pytest.raises(ValueError):
        num_levels_for(r)


@pytest.mark.parametrize(
    "steps, expected",
    [(5000, 200), (20000, 200), (4999, 200), (1000, 40), (2500, 100), (250, 10), (100, 4), (25, 1), (10, 1), (1, 1), (0, 1)],
)
def test_default_grow_every(steps, expected):
    # 4999 * 200 / 5000 = 199.96 -> 200 by rounding
    assert default_grow_every(steps) == expected


def test_default_grow_every_monotone_and_at_least_one():
    values = [default_grow_every(s) for s in range(0, 6000, 7)]
    assert min(values) >= 1
    assert all(a <= b for a, b in zip(values, values[1:]))


# ---------------------------------------------------------------- pyramid growth


def test_pyramid_growth_schedule():
    pyr = Pyramid(1, 256, False, _gen(0), grow_every=200)
    assert pyr.max_levels == 9
    assert pyr.levels == 1
    expected = [(0, 1, False), (199, 1, False), (200, 2, True), (200, 2, False), (1600, 9, True), (4999, 9, False)]
    for step, levels, grew in expected:
        assert pyr.grow_to(step, _gen(step + 1)) is grew, step
        assert pyr.levels == levels, step
        sides = [2**i for i in range(levels)]
        assert pyr.level_sides() == sides
        assert [tuple(p.shape) for p in pyr.pyramid] == [(1, 3, s, s) for s in sides]
    assert pyr.raw().shape == (1, 3, 256, 256)


def test_pyramid_levels_at():
    pyr = Pyramid(1, 16, False, _gen(0), grow_every=10)  # 5 levels max
    assert [pyr.levels_at(s) for s in (0, 9, 10, 19, 20, 39, 40, 41, 1000)] == [1, 1, 2, 2, 3, 4, 5, 5, 5]


def test_pyramid_rejects_bad_grow_every_and_resolution():
    with pytest.raises(ValueError):
        Pyramid(1, 16, False, _gen(0), grow_every=0)
    with pytest.raises(ValueError):
        Pyramid(1, 24, False, _gen(0), grow_every=10)


def test_pyramid_initial_level_scale():
    # a fresh pyramid is one 1x1 level drawn N(0, 1) / 1
    pyr = Pyramid(4000, 4, False, _gen(0), grow_every=1)
    assert pyr.pyramid[0].std().item() == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("old_levels", [4, 5])  # new side 16 (upsampled) and 32 (= resolution)
def test_pyramid_growth_renormalizes(old_levels):
    res = 32
    pyr = Pyramid(8, res, False, _gen(0), grow_every=1)
    pyr.grow_to(old_levels - 1, _gen(1))
    assert pyr.levels == old_levels
    before = [p.detach().clone() for p in pyr.pyramid]
    raw_before = pyr.raw().detach().clone()

    assert pyr.grow_to(old_levels, _gen(2)) is True
    new_levels = old_levels + 1
    assert pyr.levels == new_levels
    factor = old_levels / new_levels
    for p_old, p_now in zip(before, list(pyr.pyramid)[:old_levels]):
        assert torch.equal(p_now.detach(), p_old * factor)

    new = pyr.pyramid[-1].detach()
    side = 2**old_levels
    assert new.shape == (8, 3, side, side)
    # N(0, 1) / L_new: 8*3*side^2 >= 6144 draws, std error of the std < 1%
    assert new.std().item() == pytest.approx(1.0 / new_levels, rel=0.05)
    assert abs(new.mean().item()) < 0.05 / new_levels

    up = new if side == res else F.interpolate(new, size=(res, res), mode="bilinear", align_corners=False)
    torch.testing.assert_close(pyr.raw().detach(), raw_before * factor + up, rtol=0, atol=1e-6)


def test_pyramid_multi_level_jump_matches_common_scale():
    # jumping 1 -> 5 levels in one call rescales the 1x1 level by 1/2 * 2/3 * 3/4 * 4/5 = 1/5
    pyr = Pyramid(2, 16, False, _gen(0), grow_every=1)
    first = pyr.pyramid[0].detach().clone()
    assert pyr.grow_to(100, _gen(1)) is True
    assert pyr.levels == 5
    torch.testing.assert_close(pyr.pyramid[0].detach(), first / 5, rtol=1e-6, atol=0)
    # the 16x16 level was drawn last, directly at 1/5
    assert pyr.pyramid[-1].std().item() == pytest.approx(0.2, rel=0.1)


def test_pyramid_raw_of_constant_levels_is_sum():
    # bilinear upsampling preserves constants, so the raw image of constant levels is their sum
    pyr = Pyramid(2, 8, False, _gen(0), grow_every=1)
    pyr.grow_to(10, _gen(1))
    with torch.no_grad():
        for i, p in enumerate(pyr.pyramid):
            p.fill_(float(i + 1))
    torch.testing.assert_close(pyr.raw().detach(), torch.full((2, 3, 8, 8), 1.0 + 2 + 3 + 4), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- rendering


@pytest.mark.parametrize("decorrelate", [False, True])
def test_pyramid_render_strictly_inside_unit_interval(decorrelate):
    pyr = Pyramid(3, 16, decorrelate, _gen(0), grow_every=1)
    pyr.grow_to(10, _gen(1))
    assert pyr.levels == 5
    # |raw| <= 5 * 1.2 = 6: far outside the init scale, still representable by float32 sigmoid
    _set_levels_uniform(pyr, 1.2, seed=2)
    assert pyr.raw().abs().max().item() > 3.0
    out = pyr.render()
    assert out.shape == (3, 3, 16, 16)
    assert torch.isfinite(out).all()
    assert out.min().item() > 0.0 and out.max().item() < 1.0


@pytest.mark.parametrize("decorrelate", [False, True])
def test_pixels_render_strictly_inside_unit_interval(decorrelate):
    pix = Pixels(3, 8, decorrelate, _gen(0))
    with torch.no_grad():
        pix.pixels.mul_(6.0 / pix.pixels.abs().max())
    out = pix.render()
    assert out.shape == (3, 3, 8, 8)
    assert out.min().item() > 0.0 and out.max().item() < 1.0


@pytest.mark.parametrize("decorrelate", [False, True])
def test_render_huge_values_stays_finite_and_in_closed_range(decorrelate):
    # float32 sigmoid saturates to exactly 0 / 1 here; the point is no NaN / inf / overshoot
    pix = Pixels(2, 4, decorrelate, _gen(0))
    with torch.no_grad():
        pix.pixels.mul_(1e30)
    out = pix.render()
    assert torch.isfinite(out).all()
    assert out.min().item() >= 0.0 and out.max().item() <= 1.0


def test_render_applies_decorrelation_then_squash():
    pix = Pixels(2, 3, True, _gen(0))
    s = pix.pixels.detach()
    m = torch.tensor(K) / max(math.sqrt(sum(K[r][c] ** 2 for r in range(3))) for c in range(3))
    want = torch.sigmoid(2 * _apply_matrix_loop(m, s))
    torch.testing.assert_close(pix.render().detach(), want, rtol=1e-5, atol=1e-6)
    plain = Pixels(2, 3, False, _gen(0))
    torch.testing.assert_close(plain.render().detach(), torch.sigmoid(2 * s), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- color


def test_decorrelation_matrix_values():
    col_norms = [math.sqrt(sum(K[r][c] ** 2 for r in range(3))) for c in range(3)]
    max_norm = max(col_norms)
    assert max_norm == pytest.approx(0.461952, abs=1e-6)
    assert col_norms.index(max_norm) == 0
    m = decorrelation_matrix(dtype=torch.float64)
    want = torch.tensor(K, dtype=torch.float64) / max_norm
    torch.testing.assert_close(m, want, rtol=0, atol=1e-12)
    norms = m.norm(dim=0)
    assert norms.max().item() == pytest.approx(1.0, abs=1e-12)
    assert norms[0].item() == pytest.approx(1.0, abs=1e-12)
    assert (norms[1:] < 1).all()
    m32 = decorrelation_matrix()
    assert m32.dtype == torch.float32
    torch.testing.assert_close(m32, want.float())


def test_to_correlated_matches_pixel_loop():
    g = _gen(3)
    s = torch.randn(2, 3, 2, 3, generator=g, dtype=torch.float64)
    m = torch.randn(3, 3, generator=g, dtype=torch.float64)  # non-symmetric: catches a transpose
    torch.testing.assert_close(to_correlated(s, m), _apply_matrix_loop(m, s), rtol=0, atol=1e-12)
    md = decorrelation_matrix(dtype=torch.float64)
    torch.testing.assert_close(to_correlated(s, md), _apply_matrix_loop(md, s), rtol=0, atol=1e-12)


def test_squash_definitions():
    s = torch.linspace(-6, 6, 241, dtype=torch.float64)
    out = squash(s)
    torch.testing.assert_close(out, 1 / (1 + torch.exp(-2 * s)), rtol=0, atol=1e-14)
    torch.testing.assert_close(out, 0.5 + torch.tanh(s) / 2, rtol=0, atol=1e-14)
    assert squash(torch.zeros(1)).item() == 0.5


def test_unsquash_inverts_squash():
    s = torch.linspace(-3, 3, 121, dtype=torch.float64)
    torch.testing.assert_close(unsquash(squash(s)), s, rtol=0, atol=1e-10)
    s32 = s.float()
    torch.testing.assert_close(unsquash(squash(s32)), s32, rtol=0, atol=2e-4)
    # clamped away from 0 and 1: finite, and symmetric
    ends = unsquash(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert torch.isfinite(ends).all()
    assert ends[0].item() == pytest.approx(0.5 * math.log(1e-3 / (1 - 1e-3)), abs=1e-12)
    assert ends[1].item() == pytest.approx(-ends[0].item(), abs=1e-12)


# ---------------------------------------------------------------- state round trips


@pytest.mark.parametrize("decorrelate", [False, True])
def test_pyramid_state_round_trip(decorrelate):
    src = Pyramid(2, 16, decorrelate, _gen(0), grow_every=5)
    src.grow_to(17, _gen(1))
    assert src.levels == 4
    state = src.state_tensors()
    assert sorted(state) == ["level_1", "level_2", "level_4", "level_8"]

    dst = Pyramid(2, 16, decorrelate, _gen(99), grow_every=5)
    assert not torch.equal(dst.render(), src.render())
    dst.load_state_tensors(state)
    assert dst.levels == 4
    assert dst.level_sides() == [1, 2, 4, 8]
    assert torch.equal(dst.render(), src.render())
    # the loaded levels are trainable copies, not views of the source
    assert all(p.requires_grad for p in dst.pyramid)
    with torch.no_grad():
        src.pyramid[0].add_(1.0)
    assert not torch.equal(dst.render(), src.render())
    # and the growth schedule continues from the loaded state
    assert dst.grow_to(20, _gen(2)) is True
    assert dst.levels == 5


def test_pixels_state_round_trip():
    src = Pixels(2, 8, True, _gen(0))
    dst = Pixels(2, 8, True, _gen(1))
    assert not torch.equal(dst.render(), src.render())
    dst.load_state_tensors(src.state_tensors())
    assert torch.equal(dst.render(), src.render())
    assert dst.pixels.requires_grad
    with torch.no_grad():
        src.pixels.add_(1.0)
    assert not torch.equal(dst.render(), src.render())
    assert dst.levels == 1 and dst.grow_to(10_000, _gen(2)) is False


@pytest.mark.parametrize(
    "sides",
    [
        [1, 2, 4, 8, 16, 32],  # finer than the resolution
        [1, 4],  # gap
        [2, 4],  # no 1x1 level
        [],  # nothing
    ],
    ids=["too-fine", "gap", "no-root", "empty"],
)
def test_pyramid_load_rejects_levels_that_do_not_fit(sides):
    pyr = Pyramid(1, 16, False, _gen(0), grow_every=1)
    state = {f"level_{s}": torch.zeros(1, 3, s, s) for s in sides}
    with pytest.raises(ValueError):
        pyr.load_state_tensors(state)


# ---------------------------------------------------------------- gradients, factory


@pytest.mark.parametrize("decorrelate", [False, True])
def test_gradients_reach_every_pyramid_level(decorrelate):
    pyr = Pyramid(2, 16, decorrelate, _gen(0), grow_every=1)
    pyr.grow_to(10, _gen(1))
    assert pyr.levels == 5
    weight = torch.randn(2, 3, 16, 16, generator=_gen(2))
    (pyr.render() * weight).sum().backward()
    for p in pyr.pyramid:
        assert p.grad is not None, p.shape
        assert p.grad.shape == p.shape
        assert torch.isfinite(p.grad).all()
        assert p.grad.abs().sum().item() > 0


def test_make_synthetic():
    pyr = make_synthetic("pyramid", 2, 8, True, _gen(0), grow_every=3)
    assert isinstance(pyr, Pyramid) and pyr.grow_every == 3 and pyr.decorrelate
    pix = make_synthetic("pixels", 2, 8, False, _gen(0), grow_every=3)
    assert isinstance(pix, Pixels) and pix.pixels.shape == (2, 3, 8, 8)
    with pytest.raises(ValueError):
        make_synthetic("fourier", 2, 8, False, _gen(0), grow_every=3)


@pytest.mark.parametrize("kind", ["pyramid", "pixels"])
@pytest.mark.parametrize("decorrelate", [True, False])
def test_init_from_images_renders_those_images(kind, decorrelate):
    from lgm.synthetic import make_synthetic

    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 1, 16, 16, generator=g) * 0.9 + 0.05  # greyscale, away from the clamp
    syn = make_synthetic(kind, 4, 16, decorrelate, g, grow_every=5)
    syn.init_from_images(images)
    torch.testing.assert_close(syn.render(), images.expand(-1, 3, -1, -1), atol=1e-4, rtol=0)
    assert not syn.grow_to(10**6, g), "an image-initialized set has all its levels already"
    if kind == "pyramid":
        # Coarse levels carry the coarse content: the 1x1 level is the mean pre-activation per image.
        assert syn.pyramid[0].shape[-1] == 1 and syn.pyramid[0].abs().sum() > 0
