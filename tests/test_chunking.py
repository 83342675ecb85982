"""Exact chunked meta-gradient: any chunk size gives the unchunked step's gradient."""

import contextlib

import pytest
import torch

from lgm.augment import VIEW_BLOCK, AugmentConfig, ViewAugmenter
from lgm.backbones import load_backbone
from lgm.synthetic_side import synthetic_backward
from lgm.matching import head_gradient, sample_head
from lgm.synthetic import make_synthetic


def test_any_slice_of_views_gets_the_draws_it_gets_in_the_whole_batch():
    aug = ViewAugmenter(AugmentConfig(), 12, torch.device("cpu"))
    images = torch.rand(7, 3, 16, 16)
    m = 7 * 23  # spans several VIEW_BLOCKs, not a multiple of one
    whole = aug.views(images, 0, m, step_seed=123)
    for start, stop in ((0, 5), (3, VIEW_BLOCK + 9), (VIEW_BLOCK - 1, m), (m - 1, m)):
        torch.testing.assert_close(aug.views(images, start, stop, step_seed=123), whole[start:stop], rtol=0, atol=0)
    assert not torch.equal(aug.views(images, 0, m, step_seed=124), whole), "another step seed, other views"
    # Views of one image differ from each other (independent per-view draws).
    assert not torch.allclose(whole[0], whole[7])


@pytest.mark.parametrize("chunk", [1, 7, 16, 33])
def test_chunked_gradient_equals_unchunked(chunk):
    torch.manual_seed(0)  # only for the synthetic init below; the step itself uses explicit generators
    # float64 end to end, so that the comparison measures the method, not float32 summation order.
    bb = load_backbone("toy_cnn").double()
    g = torch.Generator().manual_seed(1)
    n_cls, augs = 5, 7
    labels = torch.arange(n_cls).repeat(augs)
    w, b = sample_head(n_cls, bb.feature_dim, g, "normal1", dtype=torch.float64)
    z_real = torch.randn(200, bb.feature_dim, generator=g, dtype=torch.float64)
    g_real = head_gradient(z_real, torch.randint(0, n_cls, (200,), generator=g), w, b)
    views = ViewAugmenter(AugmentConfig(), 14, torch.device("cpu"))
    grads, losses = [], []
    for c in (0, chunk):
        syn = make_synthetic("pyramid", n_cls, 16, True, torch.Generator().manual_seed(3), 2)
        syn.grow_to(4, torch.Generator().manual_seed(4))
        syn.double()
        loss = synthetic_backward(syn, labels, bb, g_real, w, b, views, 99, c, contextlib.nullcontext())
        grads.append([p.grad.clone() for p in syn.parameters()])
        losses.append(float(loss))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for full, chunked in zip(*grads):
        assert full.abs().max() > 0
        rel = (full - chunked).norm() / full.norm()
        assert rel < 1e-10, float(rel)
