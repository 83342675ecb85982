"""Tests for lgm.matching: closed-form head gradients, cosine meta loss, head sampling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lgm.matching import head_gradient, head_gradient_sums, meta_loss, sample_head

DTYPES = [
    pytest.param(torch.float32, id="float32"),
    pytest.param(torch.float64, id="float64"),
]
# relative tolerances per dtype
RTOL = {torch.float32: 1e-5, torch.float64: 1e-12}
RTOL_META = {torch.float32: 1e-4, torch.float64: 1e-10}

SHAPES = [(1, 3, 2), (7, 5, 4), (32, 16, 10)]  # (batch, feature_dim, num_classes)


# ---------------------------------------------------------------- helpers


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _problem(batch: int, feat: int, classes: int, dtype: torch.dtype, seed: int, head_scale: float = 0.5):
    """Random features, labels and head drawn from a seeded generator."""
    g = _gen(seed)
    z = torch.randn(batch, feat, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (batch,), generator=g)
    w = torch.randn(classes, feat, generator=g, dtype=dtype) * head_scale
    b = torch.randn(classes, generator=g, dtype=dtype) * head_scale
    return z, y, w, b


def _autograd_head_grad(z, y, w, b, create_graph: bool = False) -> torch.Tensor:
    """cat(vec(dL/dW), dL/db) of the mean cross-entropy, by autograd."""
    w_ = w.detach().clone().requires_grad_(True)
    b_ = b.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(z @ w_.t() + b_, y)
    gw, gb = torch.autograd.grad(loss, (w_, b_), create_graph=create_graph)
    return torch.cat([gw.reshape(-1), gb])


def _one_minus_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.reshape(-1), b.reshape(-1)
    return 1.0 - (a @ b) / (a.norm() * b.norm())


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# ---------------------------------------------------------------- head_gradient


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}f{}C{}".format(*s))
def test_head_gradient_matches_autograd(shape, dtype):
    batch, feat, classes = shape
    for seed in (0, 1):
        z, y, w, b = _problem(batch, feat, classes, dtype, seed)
        got = head_gradient(z, y, w, b)
        want = _autograd_head_grad(z, y, w, b)
        assert got.shape == (classes * feat + classes,)
        assert got.dtype == dtype
        assert _rel_err(got, want) < RTOL[dtype]


def test_head_gradient_layout_is_vec_w_then_b():
    # One sample, two classes, zero head: softmax = (1/2, 1/2), P = p - onehot(y).
    z = torch.tensor([[2.0, -3.0, 5.0]])
    y = torch.tensor([1])
    w = torch.zeros(2, 3)
    b = torch.zeros(2)
    p = torch.tensor([0.5, -0.5])
    want = torch.cat([torch.outer(p, z[0]).reshape(-1), p])
    torch.testing.assert_close(head_gradient(z, y, w, b), want, rtol=0, atol=1e-7)


def test_head_gradient_promotes_low_precision_features():
    z, y, w, b = _problem(8, 6, 3, torch.float32, seed=5)
    z16 = z.to(torch.bfloat16)
    got = head_gradient(z16, y, w, b)
    assert got.dtype == torch.float32
    want = _autograd_head_grad(z16.float(), y, w, b)
    assert _rel_err(got, want) < 1e-5


# ---------------------------------------------------------------- meta loss gradient


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES[1:], ids=lambda s: "B{}f{}C{}".format(*s))
def test_meta_loss_gradient_matches_double_backward(shape, dtype):
    batch, feat, classes = shape
    z_r, y_r, w, b = _problem(2 * batch, feat, classes, dtype, seed=10)
    g = _gen(11)
    z_s = torch.randn(batch, feat, generator=g, dtype=dtype).requires_grad_(True)
    y_s = torch.randint(0, classes, (batch,), generator=g)
    g_real = _autograd_head_grad(z_r, y_r, w, b)

    loss_closed = meta_loss(g_real, head_gradient(z_s, y_s, w, b))
    (grad_closed,) = torch.autograd.grad(loss_closed, z_s)

    g_s_auto = _autograd_head_grad(z_s, y_s, w, b, create_graph=True)
    loss_auto = _one_minus_cos(g_real, g_s_auto)
    (grad_auto,) = torch.autograd.grad(loss_auto, z_s)

    assert abs(loss_closed.item() - loss_auto.item()) < RTOL_META[dtype] * max(1.0, abs(loss_auto.item()))
    assert grad_auto.norm() > 0
    assert _rel_err(grad_closed, grad_auto) < RTOL_META[dtype]


# ---------------------------------------------------------------- meta loss values


def test_meta_loss_identical_opposite_orthogonal():
    g = torch.randn(50, generator=_gen(3), dtype=torch.float64)
    assert meta_loss(g, g.clone()).item() == pytest.approx(0.0, abs=1e-12)
    assert meta_loss(g, -g).item() == pytest.approx(2.0, abs=1e-12)
    e0 = torch.zeros(4, dtype=torch.float64)
    e1 = torch.zeros(4, dtype=torch.float64)
    e0[0], e1[1] = 1.0, 1.0
    assert meta_loss(e0, e1).item() == pytest.approx(1.0, abs=1e-12)


def test_meta_loss_matches_cosine_formula_and_is_scale_invariant():
    gen = _gen(4)
    a = torch.randn(30, generator=gen, dtype=torch.float64)
    b = torch.randn(30, generator=gen, dtype=torch.float64)
    base = meta_loss(a, b).item()
    assert base == pytest.approx(_one_minus_cos(a, b).item(), abs=1e-12)
    for s_a, s_b in [(3.0, 1.0), (1.0, 1e-3), (250.0, 7.0)]:
        assert meta_loss(s_a * a, s_b * b).item() == pytest.approx(base, abs=1e-12)
    # negative scaling flips the cosine: loss -> 2 - loss
    assert meta_loss(a, -2.0 * b).item() == pytest.approx(2.0 - base, abs=1e-12)


def test_meta_loss_flattens_shapes():
    a = torch.randn(4, 5, generator=_gen(6), dtype=torch.float64)
    b = torch.randn(20, generator=_gen(7), dtype=torch.float64)
    assert meta_loss(a, b).item() == pytest.approx(_one_minus_cos(a, b).item(), abs=1e-12)


# ---------------------------------------------------------------- sample_head


@pytest.mark.parametrize("init", ["normal001", "normal1", "torch"])
def test_sample_head_shapes_and_dtype(init):
    w, b = sample_head(7, 11, _gen(0), init=init)
    assert w.shape == (7, 11) and b.shape == (7,)
    assert w.dtype == torch.float32 and b.dtype == torch.float32
    w64, b64 = sample_head(7, 11, _gen(0), init=init, dtype=torch.float64)
    assert w64.dtype == torch.float64 and b64.dtype == torch.float64


def test_sample_head_normal001_statistics():
    w, b = sample_head(100, 200, _gen(1), init="normal001")
    # 20000 draws: the sample std's standard error is ~0.01 / sqrt(40000) = 5e-5
    assert w.std().item() == pytest.approx(0.01, rel=0.03)
    assert abs(w.mean().item()) < 5e-4
    assert torch.count_nonzero(b) == 0


def test_sample_head_normal1_statistics():
    w, b = sample_head(100, 200, _gen(2), init="normal1")
    assert w.std().item() == pytest.approx(1.0, rel=0.03)
    assert abs(w.mean().item()) < 0.05
    assert torch.count_nonzero(b) == 0


def test_sample_head_torch_is_uniform_within_bound():
    feat = 64
    bound = 1.0 / math.sqrt(feat)
    w, b = sample_head(200, feat, _gen(3), init="torch")
    assert w.abs().max().item() <= bound
    assert b.abs().max().item() <= bound
    # uniform on (-bound, bound): std = bound / sqrt(3), fills the range
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)
    assert w.abs().max().item() > 0.99 * bound
    assert torch.count_nonzero(b) == b.numel()  # the bias is random, not zero
    assert (b > 0).any() and (b < 0).any()


@pytest.mark.parametrize("init", ["normal001", "normal1", "torch"])
def test_sample_head_reproducible_from_generator_state(init):
    w1, b1 = sample_head(5, 9, _gen(42), init=init)
    w2, b2 = sample_head(5, 9, _gen(42), init=init)
    assert torch.equal(w1, w2) and torch.equal(b1, b2)
    # restoring a saved state reproduces the draw; continuing does not
    g = _gen(42)
    state = g.get_state()
    w3, _ = sample_head(5, 9, g, init=init)
    w4, _ = sample_head(5, 9, g, init=init)
    g.set_state(state)
    w5, _ = sample_head(5, 9, g, init=init)
    assert torch.equal(w3, w5)
    assert not torch.equal(w3, w4)
    w6, _ = sample_head(5, 9, _gen(43), init=init)
    assert not torch.equal(w1, w6)


def test_sample_head_unknown_init_raises():
    with pytest.raises(ValueError):
        sample_head(3, 4, _gen(0), init="xavier")  # type: ignore[arg-type]


# ---------------------------------------------------------------- head_gradient_sums


def test_head_gradient_sums_compose_over_chunks():
    z, y, w, b = _problem(24, 8, 5, torch.float32, seed=8)
    gw_all, gb_all = head_gradient_sums(z, y, w, b)
    gw_1, gb_1 = head_gradient_sums(z[:10], y[:10], w, b)
    gw_2, gb_2 = head_gradient_sums(z[10:], y[10:], w, b)
    torch.testing.assert_close(gw_1 + gw_2, gw_all, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gb_1 + gb_2, gb_all, rtol=1e-5, atol=1e-6)
    assert gw_all.shape == (5, 8) and gb_all.shape == (5,)
    # the sums are B times the mean gradient (the autograd one)
    want = _autograd_head_grad(z, y, w, b) * z.shape[0]
    got = torch.cat([gw_all.reshape(-1), gb_all])
    assert _rel_err(got, want) < 1e-5
    # rows of P sum to zero, so the bias gradient sums to zero
    assert abs(gb_all.sum().item()) < 1e-5
