"""`--protocol authors` against a plain re-implementation of the authors' evaluation loop.

The reference below is written the way their eval.py reads (nn.Linear head with
N(0, 0.01^2) weights and zero bias, Adam at 0.001 * loader batch / 256 with the
loader batch min(100, N), CosineAnnealingLR stepped once per epoch, a shuffled
loader without drop_last, a freshly augmented batch every epoch, the last
epoch's head), one seed at a time, without any of lgm's batching. Random
numbers are taken in the order lgm takes them (head first, then one
permutation per epoch), so the two must agree to float rounding.
"""

import json

import pytest
import torch
import torch.nn.functional as F

from lgm.augment import augment
from lgm.backbones import load_backbone
from lgm.cli import main
from lgm.data import load_dataset
from lgm.evaluate import EvalConfig, EvalContext, full_probe
from lgm.probe import ProbeConfig, train_probes
from tests.test_evaluate import band_artifact


def authors_reference(epoch_features, labels, num_classes, seed, epochs, loader_batch=100):
    """One probe as the authors' loop trains it; ``epoch_features[e]`` holds epoch e's view of every image."""
    n, dim = epoch_features.shape[1:]
    g = torch.Generator().manual_seed(seed)
    fc = torch.nn.Linear(dim, num_classes)
    with torch.no_grad():
        fc.weight.copy_(torch.randn(num_classes, dim, generator=g) * 0.01)
        fc.bias.zero_()
    batch = min(loader_batch, n)
    opt = torch.optim.Adam(fc.parameters(), lr=0.001 * batch / 256, weight_decay=0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs, eta_min=0)
    for e in range(epochs):
        x = epoch_features[e % len(epoch_features)]
        order = torch.randperm(n, generator=g)
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            loss = F.cross_entropy(fc(x[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return fc.weight.detach(), fc.bias.detach()


def task(n, dim=16, classes=5, views=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = 2 * torch.randn(classes, dim, generator=g)
    labels = torch.arange(n) % classes
    return centers[labels] + torch.randn(views, n, dim, generator=g), labels


def assert_matches_reference(res, pool, labels, classes, seeds, epochs, loader_batch):
    for r, seed in enumerate(seeds):
        w, b = authors_reference(pool, labels, classes, seed, epochs, loader_batch)
        torch.testing.assert_close(res.weight[r], w, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(res.bias[r], b, rtol=1e-4, atol=1e-6)


def test_learning_rate_follows_the_loader_batch():
    authors = ProbeConfig.named("authors")
    assert authors.learning_rate(10) == pytest.approx(3.90625e-5)  # 0.001 * 10 / 256, not 3.9e-4
    assert authors.learning_rate(1000) == pytest.approx(3.90625e-4)
    assert ProbeConfig().learning_rate(10) == pytest.approx(3.90625e-4)  # spec: the batch setting, unchanged
    assert authors.views == authors.epochs and authors.patience == 0


@pytest.mark.parametrize("n", [12, 250])  # one step per epoch; several, with a short last batch
def test_authors_protocol_matches_the_reference_on_fresh_views(n):
    epochs, seeds = 12, [0, 3, 8]
    pool, labels = task(n, views=epochs)  # a different view of every image in every epoch
    cfg = ProbeConfig.named("authors", epochs=epochs)
    res = train_probes(pool, labels, 5, cfg, seeds, val=(pool[0, :20], labels[:20]))
    assert_matches_reference(res, pool, labels, 5, seeds, epochs, 100)
    assert res.epoch.tolist() == [epochs - 1] * 3  # the last epoch, whatever the validation split says


def test_authors_full_probe_matches_the_reference_on_fixed_features():
    # The full-dataset reference trains on one fixed (center) view per image: batch 128, 100 epochs.
    pool, labels = task(300)
    cfg = full_probe("authors")
    assert (cfg.batch, cfg.epochs, cfg.views, cfg.learning_rate(300)) == (128, 100, 1, pytest.approx(5e-4))
    res = train_probes(pool[0], labels, 5, cfg, [0, 1])
    assert_matches_reference(res, pool, labels, 5, [0, 1], 100, 128)


def test_reference_check_can_fail():
    # The spec protocol (zero head, lr from batch 100, random view draws) is not the authors' loop.
    pool, labels = task(12, views=12)
    res = train_probes(pool, labels, 5, ProbeConfig(epochs=12, patience=0, views=12), [0])
    with pytest.raises(AssertionError):
        assert_matches_reference(res, pool, labels, 5, [0], 12, 100)


def test_authors_crops_are_unclamped_and_noiseless():
    white = torch.ones(512, 1, 32, 32)
    authors = augment(white, 32, ProbeConfig.named("authors").augmentation, torch.Generator().manual_seed(0))
    clamped = augment(white, 32, ProbeConfig(noise=False).augmentation, torch.Generator().manual_seed(0))
    # No noise: every pixel is 1 or a blend of 1 with the zero padding.
    assert authors.max() <= 1.0 + 1e-6 and authors.min() >= -1e-6
    # Boxes wider or taller than the image sample pure zero padding; a clamped box only ever samples within
    # half a pixel outside the image (a blend with the padding of at most 1/2 per axis, 1/4 at a corner).
    assert (authors == 0).any()
    assert clamped.min() >= 0.25 - 1e-6


def test_augmented_path_trains_on_a_fresh_view_each_epoch(fashion_root, monkeypatch):
    monkeypatch.setenv("LGM_DATA_ROOT", str(fashion_root))
    ds = load_dataset("fashion-mnist")
    bb = load_backbone("toy_cnn")
    art = band_artifact(ds)
    cfg = EvalConfig(protocol="authors", epochs=15).probe()
    ctx = EvalContext.build(ds, bb, 16, 14, torch.device("cpu"), cfg, val_per_class=3)
    seeds = [0, 1]
    pools = [ctx.view_pool(art.images, s) for s in seeds]
    assert pools[0].shape[:2] == (15, 10)
    assert torch.unique(pools[0].flatten(1), dim=0).shape[0] == 15, "every epoch's views must be new"
    scores = ctx.score_images(art.images, art.labels, seeds)
    for r, seed in enumerate(seeds):
        w, b = authors_reference(pools[r], art.labels, 10, seed, 15)
        acc = float(((ctx.test_features @ w.t() + b).argmax(1) == ctx.test_labels).float().mean())
        assert scores["top1"]["values"][r] == pytest.approx(acc, abs=1e-9)


def test_eval_cli_records_the_authors_protocol(fashion_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LGM_DATA_ROOT", str(fashion_root))
    band_artifact(load_dataset("fashion-mnist")).save(tmp_path / "sel" / "distilled")
    cache = tmp_path / "cache"
    common = [str(tmp_path / "sel"), "--repeats", "1", "--epochs", "6", "--val-per-class", "3", "--device", "cpu",
              "--cache-dir", str(cache)]
    assert main(["eval", *common, "--views", "4"]) == 0
    assert main(["eval", *common, "--protocol", "authors"]) == 0
    stored = json.loads((tmp_path / "sel" / "eval.json").read_text())
    spec, authors = stored["toy_cnn/spec"]["protocol"], stored["toy_cnn/authors"]["protocol"]
    assert authors["lr_resolved"] == pytest.approx(0.001 * 10 / 256) and authors["lr_rule"].startswith("0.001 * min(")
    assert (authors["head_init"], authors["schedule"], authors["clamp_crop"], authors["noise"]) == \
        ("normal001", "epoch", False, False)
    assert authors["views"] == 6 and authors["selection"] == "last epoch"
    assert spec["lr_resolved"] == pytest.approx(0.001 * 100 / 256) and spec["head_init"] == "zeros"
    # test + validation features, then one view pool per protocol: the authors' views are separate entries
    assert len(list((cache / "features").glob("*.safetensors"))) == 4
