"""Fault injection on every file lgm writes and later trusts: a clear error or a correct recovery, never a
silently different result. Locks with two real processes, SIGKILLs at chosen points, and the error style of
the command line (`lgm: error: ...`, no traceback)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import lgm.distillation
import lgm.rundir
from lgm.artifacts import DistilledSet, atomic_save_tensors, load_tensors, load_tensors_and_metadata
from lgm.backbones import load_backbone
from lgm.cli import main
from lgm.data import load_dataset
from lgm.distillation import distill
from lgm.errors import CorruptFileError, DatasetError, LgmError, MissingResourceError
from lgm.feature_store import FeatureStore
from lgm.locks import DirectoryInUseError, exclusive
from lgm.real_cache import CacheFeaturesConfig, RealFeatureCache, build_real_cache
from lgm.rundir import RunDir
from tests.conftest import TINY
from tests.test_distill import StopAfter

CPU = torch.device("cpu")


def run_tiny(root: Path, out: Path | None, **kw) -> DistilledSet:
    return distill("fashion-mnist", "toy_cnn", out=out, data_root=str(root), **{**TINY, "steps": 12, **kw})


def flip_bytes(path: Path, offset_from_end: int = 64, n: int = 8) -> None:
    """Invert ``n`` bytes near the end of the file (inside the tensor data, past the safetensors header)."""
    data = bytearray(path.read_bytes())
    for i in range(len(data) - offset_from_end, len(data) - offset_from_end + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def python(code: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def lgm_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lgm", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.communicate()}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def interrupted_run(root: Path, out: Path, monkeypatch, stop_after: int = 12, **kw) -> RunDir:
    StopAfter.n = stop_after
    with monkeypatch.context() as m:
        m.setattr(lgm.distillation, "StopSignals", StopAfter)
        with pytest.raises(lgm.rundir.Interrupted):
            run_tiny(root, out, steps=20, **kw)
    return RunDir(out)


# ------------------------------------------------------------------------------------------------ locks


def test_second_distill_on_the_same_out_is_refused_naming_the_holder(fashion_root, tmp_path):
    out = tmp_path / "run"
    cmd = ["distill", "--dataset", "fashion-mnist", "--backbone", "toy_cnn", "--data-root", str(fashion_root),
           "--steps", "100000", "--res", "16", "--crop", "14", "--augs", "2", "--checkpoint-every", "5",
           "--no-progress", "--out", str(out)]
    first = subprocess.Popen([sys.executable, "-m", "lgm", *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        wait_for(out / "checkpoint.json", first)
        t0 = time.monotonic()
        second = lgm_cli(*cmd)
        assert second.returncode != 0
        assert f"lgm: error: the run directory {out} is in use by another lgm process (pid {first.pid})" \
            in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        assert time.monotonic() - t0 < 60  # refused at start, not after doing the work
    finally:
        first.kill()
        first.communicate()
    # The OS released the lock with the killed holder: the run resumes, each step logged once.
    steps = [r["step"] for r in RunDir(out).read_metrics()]
    assert len(steps) == len(set(steps))


def test_second_cache_build_is_refused_and_a_dead_holder_releases_it(fashion_root, tmp_path):
    cfg = CacheFeaturesConfig(dataset="fashion-mnist", backbone="toy_cnn", views=1, res=16, crop=14, per_class=3,
                              batch=10, data_root=str(fashion_root), progress=False, out=str(tmp_path / "c"))
    holder = python(f"""
        import sys, time
        from lgm.locks import exclusive
        with exclusive({cfg.out!r}, "real-feature cache", ""):
            print("held", flush=True)
            time.sleep(120)
    """)
    try:
        assert holder.stdout.readline().strip() == "held"
        ds = load_dataset("fashion-mnist", str(fashion_root))
        with pytest.raises(DirectoryInUseError, match=f"in use by another lgm process \\(pid {holder.pid}\\)"):
            build_real_cache(cfg, ds, load_backbone("toy_cnn"), CPU, contextlib.nullcontext())
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    cache = build_real_cache(cfg, ds, load_backbone("toy_cnn"), CPU, contextlib.nullcontext())
    assert cache.features.shape == (30, 32)


def test_lock_is_released_when_the_call_returns_or_raises(tmp_path):
    with exclusive(tmp_path / "d", "run directory", "x"):
        with pytest.raises(DirectoryInUseError):  # a second open file description in the same process
            with exclusive(tmp_path / "d", "run directory", "x"):
                pass
    with exclusive(tmp_path / "d", "run directory", "x"):
        pass


# ------------------------------------------------------------------------------------------------ metrics


def _metrics_file(run: RunDir, n: int = 10) -> list[bytes]:
    run.path.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"step": i, "loss": 1.0 / (i + 1), "levels": 1, "seconds": i * 0.1}).encode() + b"\n"
             for i in range(n)]
    (run.path / RunDir.METRICS).write_bytes(b"".join(lines))
    return lines


def test_resume_truncates_later_steps_and_a_torn_tail_in_place_of_rewriting(tmp_path):
    run = RunDir(tmp_path / "run")
    lines = _metrics_file(run)
    path = run.path / RunDir.METRICS
    path.write_bytes(path.read_bytes() + b'{"step": 10, "lo')  # killed mid-line
    inode = path.stat().st_ino
    run.open_metrics(keep_before=7)
    run.close_metrics()
    assert path.read_bytes() == b"".join(lines[:7])
    assert path.stat().st_ino == inode  # truncated, not replaced or rewritten


def test_a_torn_middle_line_keeps_every_valid_line(tmp_path):
    run = RunDir(tmp_path / "run")
    lines = _metrics_file(run)
    torn = lines[:3] + [lines[3][:9]] + lines[4:]  # line 3 lost its end (and glues onto nothing)
    torn[3] = torn[3] + b"\n"
    (run.path / RunDir.METRICS).write_bytes(b"".join(torn) + b"\xff\xfe not utf-8\n[1, 2]\n")
    run.open_metrics(keep_before=8)
    run.log_metrics({"step": 8, "loss": 0.5})
    run.close_metrics()
    assert [r["step"] for r in run.read_metrics()] == [0, 1, 2, 4, 5, 6, 7, 8]


@pytest.mark.parametrize("where", ["truncate", "rewrite"])
def test_sigkill_during_the_metrics_cut_loses_no_valid_line(tmp_path, where):
    run = RunDir(tmp_path / "run")
    lines = _metrics_file(run)
    if where == "rewrite":  # a damaged middle line: the cut is a replacement through a temporary
        (run.path / RunDir.METRICS).write_bytes(b"".join(lines[:2]) + b"garbage\n" + b"".join(lines[2:]))
    before = (run.path / RunDir.METRICS).read_bytes()
    proc = python(f"""
        import os, signal
        import lgm.artifacts, lgm.rundir
        from lgm.rundir import RunDir

        def die(*a, **k):
            os.kill(os.getpid(), signal.SIGKILL)

        lgm.rundir.os.truncate = die          # the moment of the truncate
        lgm.artifacts.os.replace = die        # the moment of the rename
        RunDir({str(run.path)!r}).open_metrics(keep_before=6)
    """)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert (run.path / RunDir.METRICS).read_bytes() == before  # the old file, whole
    # The resumed run then cuts it and removes the stale temporary of the interrupted replacement.
    run.remove_stale_temporaries()
    assert not list(run.path.glob(".*.tmp"))
    run.open_metrics(keep_before=6)
    run.close_metrics()
    assert [r["step"] for r in run.read_metrics()] == list(range(6))


# ------------------------------------------------------------------------------------------------ clean-up


def test_stale_temporaries_of_the_run_are_removed_and_others_kept(fashion_root, tmp_path):
    out = tmp_path / "run"
    run_tiny(fashion_root, out, steps=5)
    own = [out / ".checkpoint.safetensors.k2j3.tmp", out / ".distilled.json.a1.tmp",
           out / ".metrics.jsonl.zz.tmp", out / "snapshots" / ".step_0000005.safetensors.q.tmp"]
    (out / "snapshots").mkdir()
    for p in own:
        p.write_bytes(b"\0" * 100)
    foreign = out / ".eval.json.b7.tmp"  # `lgm eval` may be writing it right now
    foreign.write_text("{}")
    run_tiny(fashion_root, out, steps=5)  # finished: nothing to do, but the leftovers go
    assert not any(p.exists() for p in own)
    assert foreign.exists()


def test_a_new_run_in_a_directory_of_only_leftovers_starts(fashion_root, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lgm.lock").write_text("12345\n")
    (out / ".config.json.x.tmp").write_text("{")
    run_tiny(fashion_root, out, steps=3)
    assert RunDir(out).finished() and not (out / ".config.json.x.tmp").exists()


def _cache_cfg(root: Path, **kw) -> CacheFeaturesConfig:
    return CacheFeaturesConfig(**{**dict(dataset="fashion-mnist", backbone="toy_cnn", views=2, res=16, crop=14,
                                         per_class=4, batch=9, data_root=str(root), progress=False), **kw})


def _build(cfg: CacheFeaturesConfig) -> RealFeatureCache:
    ds = load_dataset("fashion-mnist", cfg.data_root)
    return build_real_cache(cfg, ds, load_backbone("toy_cnn"), CPU, contextlib.nullcontext())


@pytest.mark.parametrize("kill_in", ["np.save", "first chunk"])
def test_cache_build_killed_early_restarts_or_resumes_in_its_default_location(fashion_root, tmp_path, kill_in):
    reference = _build(_cache_cfg(fashion_root, out=str(tmp_path / "ref")))
    cache_dir = tmp_path / "caches"
    hook = ("lgm.real_cache.np.save = lambda *a, **k: (real_save(*a, **k), die())" if kill_in == "np.save" else
            "Backbone.features = lambda self, x: die()")
    proc = python(f"""
        import contextlib, os, signal
        import torch
        import lgm.real_cache
        from lgm.backbones import Backbone, load_backbone
        from lgm.data import load_dataset
        from lgm.real_cache import CacheFeaturesConfig, build_real_cache

        def die(*a):
            os.kill(os.getpid(), signal.SIGKILL)

        real_save = lgm.real_cache.np.save
        {hook}
        cfg = CacheFeaturesConfig(dataset="fashion-mnist", backbone="toy_cnn", views=2, res=16, crop=14, per_class=4,
                                  batch=9, data_root={str(fashion_root)!r}, progress=False, cache_dir={str(cache_dir)!r})
        build_real_cache(cfg, load_dataset("fashion-mnist", cfg.data_root), load_backbone("toy_cnn"),
                         torch.device("cpu"), contextlib.nullcontext())
    """)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    (left,) = (cache_dir / "real").iterdir()
    assert (left / "meta.json").exists() == (kill_in == "first chunk")
    again = _build(_cache_cfg(fashion_root, cache_dir=str(cache_dir)))
    assert again.path == left
    assert torch.equal(again.features, reference.features) and torch.equal(again.labels, reference.labels)


def test_cache_dir_with_foreign_files_and_no_meta_is_still_refused(fashion_root, tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    (out / "my_notes.txt").write_text("mine")
    with pytest.raises(LgmError, match="holds no meta.json .*my_notes.txt"):
        _build(_cache_cfg(fashion_root, out=str(out)))
    assert (out / "my_notes.txt").read_text() == "mine"


# ------------------------------------------------------------------------------------------------ bounded inputs


@pytest.mark.parametrize("flag, value", [("--noise-std", "nan"), ("--lr", "nan"), ("--lr", "inf"),
                                         ("--noise-mean", "-inf")])
def test_non_finite_float_options_are_refused(fashion_root, tmp_path, capsys, flag, value):
    rc = main(["distill", "--dataset", "fashion-mnist", "--backbone", "toy_cnn", "--data-root", str(fashion_root),
               flag, value, "--out", str(tmp_path / "r")])
    assert rc != 0
    assert f"{flag} must be a finite number, got {value}" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_cache_features_refuses_non_finite_noise(fashion_root, tmp_path, capsys):
    rc = main(["cache-features", "--dataset", "fashion-mnist", "--backbone", "toy_cnn", "--noise-std", "nan",
               "--data-root", str(fashion_root), "--out", str(tmp_path / "c")])
    assert rc != 0 and "--noise-std must be a finite number" in capsys.readouterr().err


def test_a_data_root_that_does_not_exist_is_an_error(capsys):
    rc = main(["datasets", "--check", "fashion-mnist", "--data-root", "/nonexistent"])
    err = capsys.readouterr().err
    assert rc != 0 and "lgm: error: --data-root /nonexistent is not a directory" in err
    with pytest.raises(MissingResourceError):
        load_dataset("fashion-mnist", "/nonexistent")


def test_a_one_class_dataset_is_refused(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        (tmp_path / "one" / split / "cat").mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "one" / split / "cat" / f"{i}.png")
    with pytest.raises(DatasetError, match="1 class.*at least 2 classes"):
        load_dataset(f"folder:{tmp_path / 'one'}")


@pytest.mark.parametrize("field, value, message", [
    (("config", "res"), 4096, "config.res is 4096 but the images are 16 px wide"),
    (("config", "res"), 10**9, "config.res must be an integer in 1..4096"),
    (("config", "crop"), "big", "config.crop must be an integer"),
    (("num_images",), 7, "num_images is 7 but the file holds 10 images"),
    (("image_shape",), [3, 4096, 4096], "image_shape is"),
    (("config",), [1], "config must be an object"),
])
def test_artifact_metadata_is_checked_against_its_tensors(fashion_root, tmp_path, field, value, message):
    out = tmp_path / "run"
    run_tiny(fashion_root, out, steps=2)
    meta = json.loads((out / "distilled.json").read_text())
    target = meta
    for k in field[:-1]:
        target = target[k]
    target[field[-1]] = value
    (out / "distilled.json").write_text(json.dumps(meta))
    with pytest.raises(LgmError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DistilledSet.load(out)


def test_eval_of_an_artifact_claiming_4096_px_fails_before_allocating(fashion_root, tmp_path, capsys):
    out = tmp_path / "run"
    run_tiny(fashion_root, out, steps=2)
    meta = json.loads((out / "distilled.json").read_text())
    meta["config"]["res"] = meta["config"]["crop"] = 4096
    (out / "distilled.json").write_text(json.dumps(meta))
    rc = main(["eval", str(out), "--data-root", str(fashion_root), "--random-init", "--repeats", "1"])
    assert rc != 0 and "config.res is 4096" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ integrity


def test_a_corrupt_checkpoint_falls_back_to_the_previous_one_bit_identically(fashion_root, tmp_path, monkeypatch,
                                                                           capsys):
    reference = run_tiny(fashion_root, None, steps=20)
    out = tmp_path / "run"
    run = interrupted_run(fashion_root, out, monkeypatch)
    newest = run.load_checkpoint().step
    previous = RunDir._read_checkpoint(out / RunDir.PREVIOUS_CHECKPOINT).step
    assert previous < newest
    flip_bytes(out / RunDir.CHECKPOINT)
    capsys.readouterr()
    assert run.load_checkpoint().step == previous
    assert f"{out / RunDir.CHECKPOINT} is corrupt" in capsys.readouterr().err
    resumed = run_tiny(fashion_root, out, steps=20)
    assert torch.equal(resumed.images, reference.images)
    assert [r["step"] for r in RunDir(out).read_metrics()] == list(range(20))


def test_no_readable_checkpoint_is_an_error_naming_the_files(fashion_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run = interrupted_run(fashion_root, out, monkeypatch)
    flip_bytes(out / RunDir.CHECKPOINT)
    (out / RunDir.PREVIOUS_CHECKPOINT).write_bytes(b"\x00" * 10)  # truncated
    with pytest.raises(CorruptFileError, match=f"{out / RunDir.CHECKPOINT} is corrupt.*delete"):
        run.load_checkpoint()


def test_a_checkpoint_that_does_not_fit_the_run_is_an_error(fashion_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    interrupted_run(fashion_root, out, monkeypatch)
    tensors, metadata = load_tensors_and_metadata(out / RunDir.CHECKPOINT)
    key = next(k for k in tensors if k.startswith("syn.level_"))
    tensors[key] = torch.zeros(3, *tensors[key].shape[1:])  # a checksum-valid file of another run's shapes
    metadata.pop("lgm_sha256")
    for name in (RunDir.CHECKPOINT, RunDir.PREVIOUS_CHECKPOINT):
        atomic_save_tensors(out / name, tensors, metadata)
    with pytest.raises(LgmError, match="does not fit this run.*delete"):
        run_tiny(fashion_root, out, steps=20)


def test_a_corrupt_artifact_is_refused_naming_the_file(fashion_root, tmp_path):
    out = tmp_path / "run"
    run_tiny(fashion_root, out, steps=2)
    flip_bytes(out / "distilled.safetensors")
    with pytest.raises(CorruptFileError, match=f"{out / 'distilled.safetensors'} is corrupt"):
        DistilledSet.load(out)


def test_an_artifact_whose_tensors_were_swapped_is_refused(fashion_root, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run_tiny(fashion_root, a, steps=2)
    run_tiny(fashion_root, b, steps=2, seed=1)
    (a / "distilled.safetensors").write_bytes((b / "distilled.safetensors").read_bytes())
    with pytest.raises(CorruptFileError, match="does not hold the tensors"):
        DistilledSet.load(a)


def test_files_written_before_checksums_still_load(fashion_root, tmp_path):
    out = tmp_path / "run"
    result = run_tiny(fashion_root, out, steps=2)
    save_file({"images": result.images.contiguous(), "labels": result.labels}, str(out / "distilled.safetensors"))
    meta = json.loads((out / "distilled.json").read_text())
    del meta["tensors_sha256"]
    (out / "distilled.json").write_text(json.dumps(meta))
    assert torch.equal(DistilledSet.load(out).images, result.images)
    # A checkpoint without a checksum, too.
    tensors, metadata = load_tensors_and_metadata(out / RunDir.CHECKPOINT)
    del metadata["lgm_sha256"]
    save_file(tensors, str(out / RunDir.CHECKPOINT), metadata=metadata)
    assert RunDir(out).load_checkpoint().step == 2


def test_a_corrupt_per_run_feature_cache_is_recomputed(fashion_root, tmp_path, monkeypatch):
    kw = dict(real_features="cached", real_batch=100, cache_per_class=6)
    reference = run_tiny(fashion_root, None, steps=20, **kw)
    out = tmp_path / "run"
    interrupted_run(fashion_root, out, monkeypatch, **kw)
    cache = out / "real_features.safetensors"
    tensors, metadata = load_tensors_and_metadata(cache)
    tensors["labels"] = torch.zeros_like(tensors["labels"])  # labels zeroed, checksum left as it was
    save_file(tensors, str(cache), metadata=metadata)
    resumed = run_tiny(fashion_root, out, steps=20, **kw)
    assert torch.equal(resumed.images, reference.images)
    assert load_tensors(cache)["labels"].bincount().tolist() == [6 * 2] * 10


def test_standalone_cache_with_zeroed_labels_or_truncated_features_is_refused(fashion_root, tmp_path):
    cfg = _cache_cfg(fashion_root, out=str(tmp_path / "c"))
    reference = _build(cfg).features.clone()  # (the cache maps its file, which is changed below)
    labels = np.load(tmp_path / "c" / "labels.npy")
    np.save(tmp_path / "c" / "labels.npy", np.zeros_like(labels))
    with pytest.raises(CorruptFileError, match="labels.npy is corrupt"):
        RealFeatureCache.open(tmp_path / "c")
    np.save(tmp_path / "c" / "labels.npy", labels)
    feats = tmp_path / "c" / "features.f16"
    full = feats.read_bytes()
    feats.write_bytes(full[: len(full) // 2])
    with pytest.raises(CorruptFileError, match="features.f16 holds .* bytes"):
        RealFeatureCache.open(tmp_path / "c")
    rows = np.frombuffer(full, dtype=np.float16).reshape(reference.shape)
    feats.write_bytes(rows[::-1].tobytes())  # rows reversed: the right size, the wrong content
    with pytest.raises(CorruptFileError, match="features.f16 is corrupt"):
        RealFeatureCache.open(tmp_path / "c")
    # Building it again (the same command) recomputes it.
    again = _build(cfg)
    assert torch.equal(again.features, reference)


def test_a_corrupt_feature_store_entry_is_recomputed(tmp_path, capsys):
    store = FeatureStore(tmp_path)
    calls = []

    def compute(start, stop):
        calls.append((start, stop))
        return torch.arange(start * 4, stop * 4, dtype=torch.float32).reshape(-1, 4)

    key = {"what": "rows"}
    first = store.get_rows(key, 10, compute, chunk=5, batch=5)
    (path,) = tmp_path.glob("features/*.safetensors")
    tensors, metadata = load_tensors_and_metadata(path)
    save_file({"features": tensors["features"].flip(0)}, str(path), metadata=metadata)  # rows reversed
    calls.clear()
    again = store.get_rows(key, 10, compute, chunk=5, batch=5)
    assert torch.equal(again, first) and calls == [(0, 5), (5, 10)]
    assert f"feature-store entry {path} is unusable" in capsys.readouterr().err
    calls.clear()
    assert torch.equal(store.get_rows(key, 10, compute, chunk=5, batch=5), first) and calls == []


def test_checksum_cost_of_a_cache_sized_tensor():
    """Not a benchmark: a guard that hashing stays far below the cost of computing what it protects."""
    from lgm.artifacts import tensors_digest

    feats = torch.zeros(60_000, 256, dtype=torch.float16)  # 30 MB, a Fashion-MNIST view at 256 dims
    t0 = time.perf_counter()
    tensors_digest({"features": feats})
    assert time.perf_counter() - t0 < 5


# ------------------------------------------------------------------------------------------------ error style


def _finished(root: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    run_tiny(root, out, steps=2)
    return out


BAD_CONTENTS = {
    "non-utf-8": b"\xff\xfe{\x00}",
    "list": b"[1, 2, 3]",
    "string": b'"config"',
    "torn": b'{"dataset": "fash',
}


@pytest.mark.parametrize("bad", sorted(BAD_CONTENTS))
@pytest.mark.parametrize("name", ["config.json", "real_side.json", "distilled.json"])
def test_damaged_run_directory_json_is_an_error_not_a_traceback(fashion_root, tmp_path, capsys, name, bad):
    out = tmp_path / "run"
    interrupted_run_cli = ["distill", "--dataset", "fashion-mnist", "--backbone", "toy_cnn", "--data-root",
                           str(fashion_root), "--steps", "2", "--res", "16", "--crop", "14", "--augs", "2",
                           "--no-progress", "--out", str(out)]
    assert main(interrupted_run_cli) == 0
    if name == "real_side.json":  # read on resume: make the run unfinished
        (out / "distilled.safetensors").unlink()
    (out / name).write_bytes(BAD_CONTENTS[bad])
    capsys.readouterr()
    args = interrupted_run_cli if name != "distilled.json" else ["eval", str(out), "--data-root", str(fashion_root),
                                                                  "--random-init", "--repeats", "1"]
    rc = main(args)  # an exception escaping main would be a traceback
    err = capsys.readouterr().err
    assert rc != 0 and "lgm: error: " in err and str(out / name) in err, err


@pytest.mark.parametrize("field, value", [("steps", "many"), ("res", None), ("backbone", 3), ("lr", [1]),
                                          ("ipc", {"a": 1}), ("grow_every", "x"), ("unknown_key", 1)])
def test_fuzzed_config_fields_are_errors_not_tracebacks(fashion_root, tmp_path, capsys, field, value):
    out = tmp_path / "run"
    cli = ["distill", "--dataset", "fashion-mnist", "--backbone", "toy_cnn", "--data-root", str(fashion_root),
           "--steps", "2", "--res", "16", "--crop", "14", "--augs", "2", "--no-progress", "--out", str(out)]
    assert main(cli) == 0
    config = json.loads((out / "config.json").read_text())
    config[field] = value
    (out / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(cli) != 0
    assert "lgm: error: " in capsys.readouterr().err


@pytest.mark.parametrize("field, value", [("step", "x"), ("step", -4), ("seconds", None), ("num_params", "a"),
                                          ("step", 10**6)])
def test_fuzzed_checkpoint_metadata_is_an_error_not_a_traceback(fashion_root, tmp_path, monkeypatch, capsys,
                                                                field, value):
    out = tmp_path / "run"
    interrupted_run(fashion_root, out, monkeypatch)
    for name in (RunDir.CHECKPOINT, RunDir.PREVIOUS_CHECKPOINT):
        tensors, metadata = load_tensors_and_metadata(out / name)
        meta = json.loads(metadata["lgm"])
        meta[field] = value
        atomic_save_tensors(out / name, tensors, {"lgm": json.dumps(meta)})
    rc = main(["distill", "--dataset", "fashion-mnist", "--backbone", "toy_cnn", "--data-root", str(fashion_root),
               "--steps", "20", *sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in TINY.items()
                                      if k != "progress"), []), "--no-progress", "--out", str(out)])
    assert rc != 0 and "lgm: error: " in capsys.readouterr().err


def test_a_corrupt_eval_json_fails_before_any_probe_trains(fashion_root, tmp_path, monkeypatch):
    import lgm.evaluate
    from lgm.evaluate import EvalConfig, run_eval

    out = _finished(fashion_root, tmp_path)
    (out / "eval.json").write_text("[]")
    monkeypatch.setattr(lgm.evaluate, "evaluate_artifact", lambda *a, **k: pytest.fail("probes trained"))
    with pytest.raises(LgmError, match="eval.json is not an evaluation record"):
        run_eval((str(out),), EvalConfig(data_root=str(fashion_root), random_init=True))


def test_oserror_on_write_is_an_error_and_lgm_debug_shows_the_traceback(fashion_root, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    args = ["distill", "--dataset", "fashion-mnist", "--backbone", "toy_cnn", "--data-root", str(fashion_root),
            "--steps", "2", "--res", "16", "--crop", "14", "--augs", "2", "--out", str(blocker / "run")]
    r = lgm_cli(*args)
    assert r.returncode == 1 and "lgm: error: " in r.stderr and str(blocker) in r.stderr
    assert "Traceback" not in r.stderr
    debug = lgm_cli(*args, env={**os.environ, "LGM_DEBUG": "1"})
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_report_and_export_read_damaged_run_files_without_a_traceback(fashion_root, tmp_path, capsys):
    out = tmp_path / "run"
    run_tiny(fashion_root, out, steps=4, snapshot_every=2)
    metrics = (out / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    (out / "metrics.jsonl").write_bytes(metrics[0] + b"\xff\xfe\n" + b"".join(metrics[1:]))
    (out / "eval.json").write_bytes(b"[1]")
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    assert [r["step"] for r in RunDir(out).read_metrics()] == [0, 1, 2, 3]
    (out / "config.json").write_bytes(b'["not", "a", "config"]')
    capsys.readouterr()
    assert main(["export", str(out), "--timelapse", str(tmp_path / "t.gif")]) != 0
    assert f"lgm: error: {out / 'config.json'} is not a run configuration" in capsys.readouterr().err


def test_feature_store_removes_what_killed_writers_left_and_nothing_else(tmp_path, capsys):
    folder = tmp_path / "features"
    (folder / "abc.partial").mkdir(parents=True)
    # A writer SIGKILLed between writing its temporary and the rename: what a real kill leaves.
    code = ("import os, signal, sys, torch; from pathlib import Path; from lgm.artifacts import atomic_save_tensors;"
            "atomic_save_tensors(Path(sys.argv[1]), {'features': torch.zeros(3, 2)},"
            " before_commit=lambda: os.kill(os.getpid(), signal.SIGKILL))")
    proc = subprocess.run([sys.executable, "-c", code, str(folder / "abc.partial" / "0-3.safetensors")])
    assert proc.returncode == -9
    (killed,) = (folder / "abc.partial").glob(".*.tmp")
    live = folder / f".x.safetensors.{os.getpid()}.abcd1234.tmp"  # this process: a write in progress
    old_unnamed = folder / ".y.safetensors.abcd1234.tmp"  # no pid: written by an older lgm
    fresh_unnamed = folder / ".z.safetensors.efgh5678.tmp"
    for p in (live, old_unnamed, fresh_unnamed):
        p.write_bytes(b"partial")
    long_ago = time.time() - 2 * 3600
    for p in (killed, live, old_unnamed):
        os.utime(p, (long_ago, long_ago))
    FeatureStore(tmp_path).get({"what": "x"}, lambda: torch.ones(2, 2))
    assert not killed.exists() and not old_unnamed.exists()
    assert live.exists() and fresh_unnamed.exists()
    assert str(killed) in capsys.readouterr().err
