"""The probe trainer: learns, repeats are independent, selection never sees the test split."""

import dataclasses

import pytest
import torch

from lgm.evaluate import validation_split
from lgm.probe import ProbeConfig, ProbeResult, nearest_neighbor_top1, topk, train_probes
from lgm.selection import centroid_indices

FAST = ProbeConfig(epochs=60, batch=32, lr=1e-2, patience=10, views=3)


def linear_task(n: int, dim: int = 16, classes: int = 4, seed: int = 0, views: int = 3):
    g = torch.Generator().manual_seed(seed)
    rule = torch.randn(classes, dim, generator=g)
    base = torch.randn(n, dim, generator=g)
    labels = (base @ rule.t()).argmax(1)
    pool = base + 0.05 * torch.randn(views, n, dim, generator=g)  # a few "augmented" views per row
    return pool, labels, rule


def test_probe_recovers_a_known_linear_rule():
    pool, y, rule = linear_task(400)
    test = torch.randn(2000, 16, generator=torch.Generator().manual_seed(9))
    test_y = (test @ rule.t()).argmax(1)
    res = train_probes(pool, y, 4, dataclasses.replace(FAST, patience=0), [0])
    assert float(topk(res, test, test_y)[0]) > 0.9
    # Chance is 0.25: the untrained (zero) head would score about that.
    zero = ProbeResult(torch.zeros(1, 4, 16), torch.zeros(1, 4), torch.zeros(1), torch.zeros(1))
    assert float(topk(zero, test, test_y)[0]) < 0.5


def test_batched_repeats_equal_separate_runs():
    pool, y, _ = linear_task(100)
    val_x, val_y = pool[0, :30], y[:30]
    together = train_probes(pool, y, 4, FAST, [3, 7, 11], val=(val_x, val_y))
    for r, seed in enumerate([3, 7, 11]):
        alone = train_probes(pool, y, 4, FAST, [seed], val=(val_x, val_y))
        torch.testing.assert_close(together.weight[r], alone.weight[0], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(together.bias[r], alone.bias[0], rtol=1e-4, atol=1e-6)
        assert together.epoch[r] == alone.epoch[0]
    assert not torch.equal(together.weight[0], together.weight[1]), "different seeds must draw different batches"


def test_selection_never_reads_the_test_split():
    pool, y, rule = linear_task(200)
    val = (pool[0, :50], y[:50])
    test = torch.randn(500, 16, generator=torch.Generator().manual_seed(4))
    test_y = (test @ rule.t()).argmax(1)
    # The trainer has no test argument at all; poisoning the test labels changes the score, never the head.
    res = train_probes(pool, y, 4, FAST, [0], val=val)
    poisoned = (test_y + 1) % 4
    res_again = train_probes(pool, y, 4, FAST, [0], val=val)
    torch.testing.assert_close(res.weight, res_again.weight, rtol=0, atol=0)
    assert float(topk(res, test, poisoned)[0]) < float(topk(res, test, test_y)[0])


def test_early_stopping_keeps_the_best_validation_epoch():
    pool, y, _ = linear_task(60)
    # Validation labels that disagree with training: the best validation epoch is an early one.
    val = (pool[0], (y + 1) % 4)
    cfg = dataclasses.replace(FAST, epochs=200, patience=5)
    res = train_probes(pool, y, 4, cfg, [0], val=val)
    assert int(res.epoch[0]) < 100
    last = train_probes(pool, y, 4, dataclasses.replace(cfg, patience=0), [0])
    assert int(last.epoch[0]) == cfg.epochs - 1
    best_val = float(topk(res, *val)[0])
    assert best_val == pytest.approx(float(res.val_top1[0]))
    assert best_val >= float(topk(last, *val)[0])


def test_nonfinite_features_are_refused():
    pool, y, _ = linear_task(20)
    pool[0, 3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        train_probes(pool, y, 4, FAST, [0])


def test_top5_counts_any_of_the_five_best():
    w = torch.eye(6).unsqueeze(0)  # class c scores feature c
    res = ProbeResult(w, torch.zeros(1, 6), torch.zeros(1), torch.zeros(1))
    x = torch.tensor([[6.0, 5, 4, 3, 2, 1]])
    assert float(topk(res, x, torch.tensor([4]), 5)[0]) == 1.0
    assert float(topk(res, x, torch.tensor([5]), 5)[0]) == 0.0
    assert float(topk(res, x, torch.tensor([1]), 1)[0]) == 0.0


def test_one_nearest_neighbor_by_cosine():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    # (10, 1) is far from (1, 0) in L2 but close in angle: cosine must pick class 0.
    test = torch.tensor([[10.0, 1.0], [0.1, 0.3], [-1.0, 0.2]])
    assert nearest_neighbor_top1(train, labels, test, torch.tensor([0, 1, 1])) == pytest.approx(1.0)
    assert nearest_neighbor_top1(train, labels, test, torch.tensor([1, 1, 1])) == pytest.approx(2 / 3)


def test_centroid_is_the_member_nearest_the_class_mean():
    feats = torch.tensor([[0.0, 0], [2, 0], [0.9, 0.1], [10, 10], [12, 10], [30, 30]])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    # Class 0 mean (0.97, 0.03): row 2. Class 1 mean (17.3, 16.7): row 4 is nearer than 3 or 5.
    assert centroid_indices(feats, labels, 2).tolist() == [2, 4]


def test_validation_split_is_stratified_disjoint_and_deterministic():
    labels = torch.arange(5).repeat_interleave(20)
    train, val = validation_split(labels, 3, seed=1)
    assert torch.bincount(labels[val]).tolist() == [3] * 5
    assert set(train.tolist()).isdisjoint(val.tolist()) and len(train) + len(val) == 100
    assert torch.equal(validation_split(labels, 3, seed=1)[1], val)
    assert not torch.equal(validation_split(labels, 3, seed=2)[1], val)


def test_group_accuracy_finds_the_worst_group():
    from lgm.probe import group_top1

    w = torch.eye(2).unsqueeze(0)
    res = ProbeResult(w, torch.zeros(1, 2), torch.zeros(1), torch.zeros(1))
    x = torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [1.0, 0]])  # predicts 0, 0, 1, 0
    labels = torch.tensor([0, 0, 1, 1])
    groups = torch.tensor([0, 0, 1, 1])  # group 1's second image is misclassified
    acc = group_top1(res, x, labels, groups)
    assert float(acc[0][0]) == 1.0 and float(acc[1][0]) == 0.5


def test_per_repeat_pools_equal_separate_runs_on_each_pool():
    pool_a, y, _ = linear_task(80, seed=1)
    pool_b, _, _ = linear_task(80, seed=2)
    together = train_probes(torch.stack([pool_a, pool_b]), y, 4, dataclasses.replace(FAST, patience=0), [5, 6])
    for r, (pool, seed) in enumerate(((pool_a, 5), (pool_b, 6))):
        alone = train_probes(pool, y, 4, dataclasses.replace(FAST, patience=0), [seed])
        torch.testing.assert_close(together.weight[r], alone.weight[0], rtol=1e-4, atol=1e-6)
