"""Variants of the matching objective (lgm.objectives) and the feature-space ceiling under them."""

import math

import pytest
import torch

from lgm.analysis.ceiling import feature_ceiling, head_sampler, initial_features, optimize_features
from lgm.errors import LgmError
from lgm.matching import head_gradient, meta_loss, sample_head
from lgm.objectives import MatchObjective, objective_loss, probe_trajectory, unrolled_heads
from lgm.probe import ProbeConfig

PROBE = ProbeConfig(views=1, epochs=300, patience=0)


def anisotropic(n, seed, classes=4, dim=16):
    # Class means are a poor classifier here (a few high-variance directions hide them), a linear probe a good
    # one: the data on which matching at small random heads (class-mean matching) falls short.
    g0 = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g0))
    scales = torch.ones(dim)
    scales[:4] = 4.0
    mu = torch.randn(classes, dim, generator=g0)
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    return (torch.randn(n, dim, generator=g) * scales + mu[y]) @ q.t(), y


def test_default_objective_is_the_plain_matching_loop():
    # The ceiling's default must be distillation's objective, drawn bit for bit as lgm.matching draws it.
    real, y = anisotropic(400, 1)
    feats, labels, losses = optimize_features(real, y, 4, ipc=2, steps=25, seed=3)
    g_init = torch.Generator().manual_seed((3 << 8) | 1)
    g_head = torch.Generator().manual_seed((3 << 8) | 2)
    syn = torch.nn.Parameter(initial_features(real, y, 4, 2, "real", g_init))
    opt = torch.optim.Adam([syn], lr=0.01 * float(real.std()))
    plain = []
    for _ in range(25):
        w, b = sample_head(4, real.shape[1], g_head, "normal001")
        loss = meta_loss(head_gradient(real, y, w, b), head_gradient(syn, labels, w, b))
        opt.zero_grad()
        loss.backward()
        opt.step()
        plain.append(float(loss.detach()))
    assert torch.equal(feats, syn.detach()) and losses == plain


def test_several_heads_average_the_loss_of_heads_drawn_in_turn():
    real, y = anisotropic(200, 1)
    syn, labels = real[:8].clone(), y[:8]
    sampler = head_sampler(MatchObjective(heads=3, head_scale=2.0), real, y, 4, "normal001", 0)
    got = objective_loss(sampler, torch.Generator().manual_seed(5), syn, labels)
    g = torch.Generator().manual_seed(5)
    want = []
    for _ in range(3):
        w, b = sample_head(4, 16, g, "normal001")
        w, b = 2 * w, 2 * b
        want.append(float(meta_loss(head_gradient(real, y, w, b), head_gradient(syn, labels, w, b))))
    assert float(got) == pytest.approx(sum(want) / 3, rel=1e-6)
    assert len(set(round(v, 6) for v in want)) == 3  # three different heads, not one drawn three times


def test_probe_trajectory_snapshots_a_probe_that_learns():
    real, y = anisotropic(2000, 1)
    test, ty = anisotropic(2000, 2)
    snaps = probe_trajectory(real, y, 4, (0, 50, 2000), torch.Generator().manual_seed(0))
    assert len(snaps) == 3 and not snaps[0][0].any() and not snaps[0][1].any()
    acc = [float(((test @ w.t() + b).argmax(1) == ty).float().mean()) for w, b in snaps]
    assert acc[0] == pytest.approx(0.25) and acc[2] > acc[1] > 0.5 and acc[2] > 0.85
    # A snapshot does not depend on which other steps are kept (one run, read at several points).
    again = probe_trajectory(real, y, 4, (50,), torch.Generator().manual_seed(0))
    assert torch.equal(again[0][0], snaps[1][0])


def test_trajectory_heads_raise_the_ceiling_above_class_means():
    real, y = anisotropic(4000, 1)
    test, ty = anisotropic(4000, 2)
    kw = dict(steps=400, probe=PROBE, probe_seeds=(0,), eval_heads=0, full=False)
    default = feature_ceiling(real, y, 4, test, ty, **kw).summary["sets"]
    traj = feature_ceiling(real, y, 4, test, ty, objective=MatchObjective(
        head_source="trajectory", trajectory_steps=(0, 50, 200, 1000, 3000)), **kw).summary
    means = default["class_means"]["top1"]["mean"]
    # Under small random heads the optimum is the class means; heads from the probe's path move past them.
    assert abs(default["ceiling"]["top1"]["mean"] - means) < 0.02
    assert traj["sets"]["ceiling"]["top1"]["mean"] > means + 0.03
    assert traj["objective"]["head_source"] == "trajectory" and "trajectory" in traj["objective"]["text"]


def test_trajectory_noise_and_unrolled_points_enter_the_loss():
    real, y = anisotropic(300, 1)
    syn, labels = real[:4].clone().requires_grad_(True), y[:4]
    base = MatchObjective(head_source="trajectory", trajectory_steps=(0, 20), heads=0)
    every = objective_loss(head_sampler(base, real, y, 4, "normal001", 0), torch.Generator(), syn, labels)
    snaps = probe_trajectory(real, y, 4, (0, 20), torch.Generator().manual_seed((0 << 8) | 4))
    with torch.no_grad():  # the reference value only
        want = sum(float(meta_loss(head_gradient(real, y, w, b), head_gradient(syn, labels, w, b))) for w, b in snaps) / 2
    assert float(every.detach()) == pytest.approx(want, rel=1e-6)
    noisy = head_sampler(MatchObjective(head_source="trajectory", trajectory_steps=(0,), head_noise=0.01), real, y, 4,
                         "normal001", 0)
    (w, b, g_real), = noisy.draw(torch.Generator().manual_seed(1))
    assert w.std() == pytest.approx(0.01, rel=0.1) and torch.equal(g_real, head_gradient(real, y, w, b))
    # Unrolled heads: sign steps along the synthetic gradient, each a further matching point.
    w0, b0 = sample_head(4, 16, torch.Generator().manual_seed(2))
    (w1, b1), (w2, _) = unrolled_heads(syn, labels, w0, b0, 2, 0.05)
    assert torch.allclose((w1 - w0).abs(), torch.full_like(w0, 0.05)) and not torch.equal(w2, w1)
    g = torch.Generator().manual_seed(3)
    un = objective_loss(head_sampler(MatchObjective(unroll=2, unroll_lr=0.05), real, y, 4, "normal001", 0), g, syn,
                        labels)
    w, b = sample_head(4, 16, torch.Generator().manual_seed(3))
    pts = [(w, b)] + unrolled_heads(syn, labels, w, b, 2, 0.05)
    with torch.no_grad():
        want = sum(float(meta_loss(head_gradient(real, y, a, c), head_gradient(syn, labels, a, c))) for a, c in pts) / 3
    assert float(un.detach()) == pytest.approx(want, rel=1e-6)
    un.backward()
    assert syn.grad is not None and torch.isfinite(syn.grad).all()


@pytest.mark.parametrize("kw, match", [
    (dict(heads=0), "heads"), (dict(head_scale=0.0), "head_scale"), (dict(head_source="nearest"), "head_source"),
    (dict(head_source="trajectory", trajectory_steps=()), "trajectory_steps"), (dict(unroll=-1), "unroll"),
    (dict(unroll_lr=math.nan), "unroll_lr")])
def test_bad_objectives_are_refused(kw, match):
    with pytest.raises(LgmError, match=match):
        MatchObjective(**kw).check()
