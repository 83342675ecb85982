"""The distillation loop on a toy backbone: artifacts, resume, atomic checkpoints, errors."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import lgm.artifacts
import lgm.distillation
import lgm.rundir
import lgm.synthetic_side
from lgm.artifacts import DistilledSet
from lgm.config import JOINT_KEYS, LATER_KEYS, DistillConfig
from lgm.distillation import distill
from lgm.errors import LgmError, MissingResourceError, NonFiniteLossError, UnknownNameError
from lgm.rundir import RunDir
from tests.conftest import TINY


def run_tiny(root: Path, out: Path | None, **kw) -> DistilledSet:
    settings = {**TINY, "steps": 20, **kw}
    return distill("fashion-mnist", "toy_cnn", out=out, data_root=str(root), **settings)


def test_run_directory_contents(fashion_root, tmp_path):
    out = tmp_path / "run"
    result = run_tiny(fashion_root, out, steps=12)
    for name in ("config.json", "metrics.jsonl", "checkpoint.safetensors", "checkpoint.json",
                 "distilled.safetensors", "distilled.json", "grid.png"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    # Every setting spelled out, except the joint-run keys, which a single-backbone run leaves out (at their
    # defaults) so that its config and hash are those of runs made before joint distillation existed; the same
    # for keys added later (at their defaults).
    assert set(config) == {f for f in DistillConfig.__dataclass_fields__} - set(JOINT_KEYS) - set(LATER_KEYS)
    assert config["grow_every"] > 0  # auto value resolved, not 0
    rows = RunDir(out).read_metrics()
    assert [r["step"] for r in rows] == list(range(12))
    assert all({"loss", "levels", "seconds"} <= set(r) for r in rows)
    loaded = DistilledSet.load(out)
    assert torch.equal(loaded.images, result.images)
    assert loaded.images.min() >= 0 and loaded.images.max() <= 1
    assert loaded.labels.tolist() == list(range(10))
    assert loaded.class_names[0] == "T-shirt/top"
    for key in ("backbone", "dataset", "config_hash", "lgm_version", "random_init"):
        assert key in loaded.meta
    assert loaded.meta["random_init"] is True  # toy backbone: never pretrained
    # Artifacts are meant to be shared: readable by everyone, whatever the writer library does.
    for name in ("checkpoint.safetensors", "distilled.safetensors", "distilled.json", "grid.png"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name


def test_finished_run_is_not_redone(fashion_root, tmp_path, capsys):
    out = tmp_path / "run"
    first = run_tiny(fashion_root, out, steps=6)
    before = (out / "metrics.jsonl").read_text()
    again = run_tiny(fashion_root, out, steps=6)
    assert "nothing to do" in capsys.readouterr().err
    assert torch.equal(first.images, again.images)
    assert (out / "metrics.jsonl").read_text() == before


def test_different_config_is_refused(fashion_root, tmp_path):
    out = tmp_path / "run"
    run_tiny(fashion_root, out, steps=6)
    with pytest.raises(LgmError, match=r"lr: 0\.002 -> 0\.01"):
        run_tiny(fashion_root, out, steps=6, lr=0.01)


class StopAfter(lgm.rundir.StopSignals):
    """Pretends SIGTERM arrived once the loop has asked ``n`` times."""

    n = 0

    def __init__(self) -> None:
        super().__init__()
        self._asked = 0

    @property
    def signal(self):
        self._asked += 1
        return signal.SIGTERM if self._asked > self.n else None

    @signal.setter
    def signal(self, value):
        pass


@pytest.mark.parametrize("mode", [{"real_features": "live"},
                                  {"real_features": "cached", "real_batch": 300, "cache_per_class": 15}])
def test_resume_from_checkpoint_equals_uninterrupted(fashion_root, tmp_path, monkeypatch, mode):
    reference = run_tiny(fashion_root, None, steps=23, **mode)
    out = tmp_path / "run"
    StopAfter.n = 13
    monkeypatch.setattr(lgm.distillation, "StopSignals", StopAfter)
    with pytest.raises(lgm.rundir.Interrupted, match=r"stopped by SIGTERM at step (\d+)/23") as info:
        run_tiny(fashion_root, out, steps=23, **mode)
    stopped = int(re.search(r"step (\d+)/23", str(info.value)).group(1))
    assert 5 < stopped < 23 and stopped % 5 != 0  # between periodic checkpoints
    assert RunDir(out).load_checkpoint().step == stopped
    monkeypatch.undo()
    resumed = run_tiny(fashion_root, out, steps=23, **mode)
    assert torch.equal(resumed.images, reference.images)
    assert [r["step"] for r in RunDir(out).read_metrics()] == list(range(23))


def test_feature_cache_matches_direct_features(fashion_root, tmp_path):
    from lgm.artifacts import load_tensors

    out = tmp_path / "run"
    run_tiny(fashion_root, out, steps=2, real_features="cached", cache_per_class=4, cache_views=3)
    cache = load_tensors(out / "real_features.safetensors")
    assert cache["features"].shape == (3 * 40, 32) and cache["features"].dtype == torch.float16
    assert torch.bincount(cache["labels"]).tolist() == [12] * 10
    assert cache["features"].float().std() > 0


@pytest.mark.parametrize("real_aug", ["same", "none"])
def test_real_aug_none_caches_whole_images(fashion_root, tmp_path, real_aug):
    from lgm.artifacts import load_tensors

    out = tmp_path / real_aug
    run_tiny(fashion_root, out, steps=2, real_features="cached", cache_per_class=4, cache_views=2, real_aug=real_aug)
    feats = load_tensors(out / "real_features.safetensors")["features"]
    distinct = torch.unique(feats, dim=0).shape[0]
    # none: both views of an image are the same whole image; same: every view is its own random crop
    assert distinct == (40 if real_aug == "none" else 80)
    assert ("real_aug" in json.loads((out / "config.json").read_text())) == (real_aug == "none")


def test_real_aug_is_in_the_hash_only_when_set():
    base = DistillConfig("d", "b")
    assert "real_aug" not in base.to_dict()
    assert DistillConfig("d", "b", real_aug="none").hash() != base.hash()
    assert DistillConfig.from_dict(DistillConfig("d", "b", real_aug="none").to_dict()).real_aug == "none"


def test_full_real_gradient_is_the_gradient_over_the_whole_cache():
    from lgm.features import CachedReal
    from lgm.matching import head_gradient

    g = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(300, 8, generator=g).half(), torch.randint(0, 5, (300,), generator=g)
    w, b = torch.randn(5, 8, generator=g) * 0.1, torch.zeros(5)
    real = CachedReal(feats, labels, torch.device("cpu"))
    from lgm.config import DistillConfig
    from lgm.real_side import real_batch_size

    n = real_batch_size(DistillConfig("d", "b", real_features="cached", real_gradient="full"), 5)
    full = real.gradient(w, b, n, torch.Generator(), torch.Generator())
    torch.testing.assert_close(full, head_gradient(feats.float(), labels, w, b))
    part = real.gradient(w, b, 100, torch.Generator().manual_seed(1), torch.Generator())
    assert not torch.allclose(part, full), "a sampled batch differs from the exact gradient"


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if time.time() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.01)


def _start_cli(root: Path, out: Path, steps: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lgm", "distill", "--dataset", "fashion-mnist", "--backbone", "toy_cnn",
           "--data-root", str(root), "--steps", str(steps), "--res", "16", "--crop", "14", "--augs", "2",
           "--checkpoint-every", "20", "--no-progress", "--out", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_bit_identical(fashion_root, tmp_path, sig):
    steps = 600
    out = tmp_path / "killed"
    proc = _start_cli(fashion_root, out, steps)
    _wait_for(out / "checkpoint.json")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert not (out / "distilled.safetensors").exists(), "run finished before it could be killed"
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert "stopped by SIGTERM" in err
        # SIGTERM writes a checkpoint at the step it stopped, usually past the last periodic one.
        meta = json.loads((out / "checkpoint.json").read_text())
        assert meta["step"] == RunDir(out).load_checkpoint().step
    resumed = run_tiny(fashion_root, out, steps=steps, checkpoint_every=20)
    reference = run_tiny(fashion_root, None, steps=steps, checkpoint_every=20)
    assert torch.equal(resumed.images, reference.images)
    rows = RunDir(out).read_metrics()
    assert [r["step"] for r in rows] == list(range(steps))


def test_interrupted_checkpoint_write_keeps_previous(fashion_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run_tiny(fashion_root, out, steps=5, checkpoint_every=5)
    run = RunDir(out)
    before = run.load_checkpoint()

    def torn_write(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00garbage, half a checkpoint")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(lgm.artifacts, "save_file", torn_write)
    with pytest.raises(OSError):
        run.save_checkpoint(before)
    after = run.load_checkpoint()
    assert after.step == before.step
    for key, value in before.tensors().items():
        assert torch.equal(after.tensors()[key], value)
    assert not list(out.glob(".*.tmp")), "temporary file left behind"


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(fashion_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_loss = lgm.synthetic_side.meta_loss
    calls = {"n": 0}

    def poisoned(g_real, g_syn):
        calls["n"] += 1
        loss = real_loss(g_real, g_syn)
        return loss * float("nan") if calls["n"] >= 8 else loss

    monkeypatch.setattr(lgm.synthetic_side, "meta_loss", poisoned)  # the synthetic side computes the loss
    with pytest.raises(NonFiniteLossError, match="step 7.*last good checkpoint \\(step 5\\)"):
        run_tiny(fashion_root, out, steps=20, checkpoint_every=5)
    ckpt = RunDir(out).load_checkpoint()
    assert ckpt.step == 5
    assert all(torch.isfinite(v).all() for v in ckpt.synthetic.values())
    assert not (out / "distilled.safetensors").exists()


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"steps": 0}, "--steps must be positive"),
        ({"lr": 0.0}, "--lr must be positive"),
        ({"lr": -1.0}, "--lr must be positive"),
        ({"res": 24, "crop": 20}, "power of two"),
        ({"crop": 32}, "cannot exceed --res"),
        ({"augs": 100}, "larger than the training set"),
        ({"real_gradient": "full", "real_features": "live"}, "needs --real-features cached"),
    ],
)
def test_bad_settings_are_explained(fashion_root, tmp_path, kw, message):
    with pytest.raises(LgmError, match=message):
        run_tiny(fashion_root, tmp_path / "run", **kw)


def test_pixels_need_no_power_of_two(fashion_root):
    result = run_tiny(fashion_root, None, steps=3, param="pixels", res=20, crop=16)
    assert result.images.shape == (10, 3, 20, 20)


def test_unknown_names_list_the_known_ones(fashion_root, tmp_path):
    with pytest.raises(UnknownNameError, match="Did you mean toy_cnn"):
        distill("fashion-mnist", "toy_cn", out=tmp_path / "a", data_root=str(fashion_root), **TINY)
    with pytest.raises(UnknownNameError, match="Known datasets: .*fashion-mnist"):
        distill("imagenet-7", "toy_cnn", out=tmp_path / "b", **TINY)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_missing_dataset_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(lgm.data.idx, "DEBIAN_FASHION_DIR", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()  # a data root that does not exist is an error of its own (tests/test_faults.py)
    with pytest.raises(MissingResourceError, match="apt-get install dataset-fashion-mnist"):
        run_tiny(tmp_path / "empty", None)


def test_truncated_idx_file_is_reported(tmp_path):
    from lgm.data.idx import read_idx

    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\x00" * 100)
    with pytest.raises(LgmError, match="truncated"):
        read_idx(bad)


def test_missing_weights_file_is_explained():
    from lgm.backbones import load_backbone

    with pytest.raises(MissingResourceError, match="weights not found at /nonexistent/w.pth"):
        load_backbone("effnet_lite0", weights="/nonexistent/w.pth")


import lgm.data.idx  # noqa: E402  (monkeypatched above)


def test_init_from_real_starts_at_real_images(fashion_root, tmp_path):
    from lgm.data import load_dataset

    result = run_tiny(fashion_root, tmp_path / "run", steps=1, init="real", lr=1e-12)
    idx = torch.tensor(result.meta["init_indices"])
    ds = load_dataset("fashion-mnist", str(fashion_root))
    assert ds.train.labels[idx].tolist() == list(range(10))
    # One step at a negligible learning rate: the images are still those real ones.
    torch.testing.assert_close(result.images, ds.train.load(idx, 16).expand(-1, 3, -1, -1), atol=2e-3, rtol=0)


def test_two_identical_runs_on_two_threads_give_the_same_bits(fashion_root):
    """The same run in three fresh 2-thread processes, at sizes where the CPU kernels split work between the
    threads: identical images (the synthetic views' backward once took its sums in thread order)."""
    import hashlib
    import os
    import subprocess
    import sys

    script = ("import hashlib, sys, torch; from lgm.distillation import distill; torch.set_num_threads(2); "
              "r = distill('fashion-mnist', 'toy_cnn', data_root=sys.argv[1], steps=4, res=64, crop=64, augs=4, "
              "progress=False, device='cpu'); "
              "print(hashlib.sha256(r.images.contiguous().numpy().tobytes()).hexdigest())")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    digests = {subprocess.run([sys.executable, "-c", script, str(fashion_root)], env=env, check=True, timeout=300,
                              capture_output=True, text=True).stdout.split()[-1] for _ in range(3)}
    assert len(digests) == 1, digests
