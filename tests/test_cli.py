"""The `lgm` command line: a smoke run and error paths without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

from PIL import Image


def lgm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lgm", *args], capture_output=True, text=True, timeout=300)


def test_distill_smoke(fashion_root, tmp_path):
    out = tmp_path / "run"
    r = lgm("distill", "--dataset", "fashion-mnist", "--backbone", "toy_cnn", "--data-root", str(fashion_root),
            "--steps", "8", "--augs", "2", "--res", "16", "--crop", "12", "--no-decorrelate", "--param", "pixels",
            "--aug", "none", "--seed", "3", "--device", "cpu", "--out", str(out))
    assert r.returncode == 0, r.stderr
    config = json.loads((out / "config.json").read_text())
    assert (config["decorrelate"], config["param"], config["aug"], config["seed"]) == (False, "pixels", "none", 3)
    meta = json.loads((out / "distilled.json").read_text())
    assert meta["backbone"] == "toy_cnn" and meta["dataset"] == "fashion-mnist"
    with Image.open(out / "grid.png") as im:
        assert im.size[0] >= 10 * 64
    again = lgm("distill", "--dataset", "fashion-mnist", "--backbone", "toy_cnn", "--data-root", str(fashion_root),
                "--steps", "8", "--augs", "2", "--res", "16", "--crop", "12", "--no-decorrelate", "--param", "pixels",
                "--aug", "none", "--seed", "3", "--device", "cpu", "--out", str(out))
    assert again.returncode == 0 and "nothing to do" in again.stderr


def test_errors_are_messages_not_tracebacks(fashion_root, tmp_path):
    cases = [
        (["--backbone", "resnet5000", "--dataset", "fashion-mnist"], "unknown backbone 'resnet5000'"),
        (["--backbone", "toy_cnn", "--dataset", "fashion-mnist", "--steps", "-3"], "--steps must be positive"),
        (["--backbone", "toy_cnn", "--dataset", "fashion-mnist", "--res", "100", "--crop", "90"], "power of two"),
    ]
    for args, message in cases:
        r = lgm("distill", *args, "--data-root", str(fashion_root), "--out", str(tmp_path / "x"))
        assert r.returncode == 2, r.stderr
        assert message in r.stderr
        assert "Traceback" not in r.stderr


def test_help_lists_the_flags():
    r = lgm("distill", "--help")
    assert r.returncode == 0
    for flag in ("--ipc", "--steps", "--augs", "--lr", "--param", "--no-decorrelate", "--aug", "--res", "--crop",
                 "--seed", "--device", "--out", "--head-init", "--no-clamp-crop", "--noise-mean",
                 "--no-reset-adam-on-growth"):
        assert flag in r.stdout, flag


def test_help_and_version_do_not_import_torch():
    # Parsing comes before any torch import, so --help answers at once on a small machine.
    probe = ("import sys\nfrom lgm.cli import main\nfor argv in {argv!r}:\n    try:\n        main(argv)\n"
             "    except SystemExit:\n        pass\nprint('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    commands = [["--help"], ["--version"]] + [[c, "--help"] for c in
                                              ("distill", "eval", "baselines", "crossmodel", "align", "pca",
                                               "neighbors", "report", "cache-features", "demo", "datasets")]
    r = subprocess.run([sys.executable, "-c", probe.format(argv=commands)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "NO-TORCH"
    assert "--weights" in r.stdout and "--normalization" in r.stdout  # the shared backbone flags are listed
    v = lgm("--version")
    assert v.returncode == 0 and v.stdout.startswith("lgm ")
