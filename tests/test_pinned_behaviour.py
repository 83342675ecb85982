"""Behaviour pinned across the redesign of the distillation core (issue 20).

The literals here were computed with the code *before* the redesign (main at
6547829): config hashes name run directories and caches, so an unchanged hash
is what lets an existing run resume; the image digests say that a short run
computes, bit for bit, what it computed before (a run started before the
change and resumed after it takes the same steps as an uninterrupted one; the
bit-identical resume tests in test_distill/test_joint cover the checkpoint
round trip itself).
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from lgm.command_configs import DEMO_DISTILL
from lgm.config import DistillConfig
from lgm.distillation import distill
from tests.conftest import TINY
from tests.test_joint import toy_variant

HASHES = [
    (dict(dataset="fashion-mnist", backbone="toy_cnn"), "74844f66632238ed"),
    # The demo's configuration of that time (it has since gone from 750 to 500 steps, a new run and hash).
    (DEMO_DISTILL | {"steps": 750}, "b9942560f7471d27"),
    (dict(dataset="fashion-mnist", backbone=("effnet_lite0", "toy_cnn"), backbone_weights=(1.0, 3.0),
          backbone_schedule="sample", steps=300), "43b9e13aad2afea7"),
    (dict(dataset="fashion-mnist", backbone=["toy_cnn"]), "2282d004ee0d0058"),
    (dict(dataset="fashion-mnist", backbone="effnet_lite0", weights="weights/effnet_lite0.safetensors"),
     "55b9cc083bde6a47"),
    (dict(dataset="imagenette", backbone="dinov2_vitb14", ipc=10, chunk=16, real_features="cached",
          real_gradient="full", cache_per_class=100, amp="bf16"), "74bb7589ca3cf6a0"),
]


@pytest.mark.parametrize("fields, expected", HASHES)
def test_config_hashes_of_existing_configurations_are_unchanged(fields, expected):
    assert DistillConfig(**fields).hash() == expected


def _joint_toys():
    return [toy_variant("toy_a"), toy_variant("fixed24", 24, dim=12, seed=1)]


# (backbone, settings, sha256 prefix of the final images' float32 bytes, their mean and std)
RUNS = {
    "live": ("toy_cnn", dict(steps=12), "07e39a84c82a8a8f", 0.4862443804740906, 0.10658984631299973),
    "cached-full-chunk": ("toy_cnn", dict(steps=12, real_features="cached", real_gradient="full",
                                          cache_per_class=6, chunk=7),
                          "2a0e2b46c804292d", 0.487055242061615, 0.1077440083026886),
    "joint-sample-cached": ("joint", dict(steps=12, backbone_schedule="sample", backbone_weights=(1.0, 3.0),
                                          real_features="cached", real_batch=60, cache_per_class=6),
                            "ca4c8e03f5570918", 0.4869834780693054, 0.10591922700405121),
    "joint-all-chunk": ("joint", dict(steps=12, chunk=5), "bf0abef920493078", 0.4881860911846161,
                        0.10401355475187302),
}
# Bits depend on the kernels: the digests hold where they were computed (this torch, this CPU kernel set);
# elsewhere the images are compared by their statistics only.
PINNED_ON = ("2.14.1+cu130", "AVX2")


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", list(RUNS))
def test_a_short_run_computes_the_images_it_computed_before_the_redesign(fashion_root, name, one_thread):
    backbone, kw, digest, mean, std = RUNS[name]
    bb = _joint_toys() if backbone == "joint" else backbone
    images = distill("fashion-mnist", bb, data_root=str(fashion_root), **{**TINY, "device": "cpu", **kw}).images
    assert float(images.mean()) == pytest.approx(mean, abs=1e-4)
    assert float(images.std()) == pytest.approx(std, abs=1e-4)
    if (torch.__version__, torch.backends.cpu.get_cpu_capability()) == PINNED_ON:
        got = hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()[:16]
        assert got == digest
