"""A user's own weights file and names, through every command (issue "Your weights, your data")."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lgm.backbone_spec import BackboneFlags, recorded_specs, weights_record, weights_sha256
from lgm.cli import main
from lgm.errors import LgmError, MissingResourceError, UnknownNameError

BB = "timm:test_resnet"  # timm's tiny test network: a real timm model, built in milliseconds


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    """A random-init timm model saved as the user's own safetensors file."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False)
    path = tmp_path_factory.mktemp("weights") / "my_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def run(*args: str) -> None:
    assert main(list(args)) == 0, args


def test_every_command_on_a_users_weights_file(fashion_root, weights_file, tmp_path, capsys):
    data = ["--data-root", str(fashion_root)]
    probe = ["--repeats", "1", "--views", "2", "--epochs", "3", "--val-per-class", "2", "--device", "cpu"]
    r, bl = tmp_path / "run", tmp_path / "bl"
    run("distill", "--dataset", "fashion-mnist", "--backbone", BB, "--weights", str(weights_file), *data,
        "--steps", "3", "--augs", "2", "--res", "32", "--crop", "32", "--no-progress", "--device", "cpu",
        "--out", str(r))
    meta = json.loads((r / "distilled.json").read_text())
    sha = weights_sha256(weights_file)
    assert meta["weights_file"] == {"path": str(weights_file.resolve()), "sha256": sha}

    run("eval", str(r), *data, *probe)  # no --weights: the recorded file, checked by its sha256
    stored = json.loads((r / "eval.json").read_text())
    assert stored[f"{BB}/spec"]["weights"] == f"sha256:{sha[:16]}"
    run("baselines", "--dataset", "fashion-mnist", "--backbone", BB, "--distilled", str(r), "--out", str(bl),
        "--random-seeds", "1", "--val-per-class", "2", "--device", "cpu", *data)
    assert json.loads((bl / "centroids" / "distilled.json").read_text())["weights_file"]["sha256"] == sha
    run("eval", str(bl / "centroids"), str(bl / "full"), "--backbone", BB, *data, *probe)
    run("crossmodel", str(r), str(bl / "centroids"), "--backbone", BB, "toy_cnn", "--out", str(tmp_path / "cm"),
        *data, *probe)
    run("align", "--dataset", "fashion-mnist", "--backbones", BB, "toy_cnn", "--weights", f"{BB}={weights_file}",
        "--n", "40", "--k", "3", "--res", "32", "--crop", "32", "--out", str(tmp_path / "al"), "--device", "cpu",
        *data)
    run("pca", str(r), "--n", "40", "--device", "cpu", *data)
    run("neighbors", str(r), "--n", "40", "--device", "cpu", *data)
    run("report", str(r), "--out", str(tmp_path / "report"))
    page = next((tmp_path / "report").glob("run*.html")).read_text()
    assert sha in page

    # The file moves: every command says which file (by sha256) to give, and takes it with --weights.
    moved = tmp_path / "elsewhere.safetensors"
    shutil.move(weights_file, moved)
    try:
        capsys.readouterr()
        assert main(["eval", str(r), *data, *probe]) == 1
        err = capsys.readouterr().err
        assert sha in err and "--weights" in err
        run("eval", str(r), "--weights", str(moved), *data, *probe)
    finally:
        shutil.move(moved, weights_file)


def test_a_changed_file_is_named_by_both_digests(weights_file, tmp_path):
    changed = tmp_path / "w.safetensors"
    shutil.copy(weights_file, changed)
    meta = {"backbone": BB, "weights_file": weights_record(changed)}
    with changed.open("r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(LgmError, match="has changed") as e:
        BackboneFlags().spec_for(BB, recorded_specs(meta))
    assert meta["weights_file"]["sha256"] in str(e.value) and weights_sha256(changed) in str(e.value)


def test_weights_flags_are_assigned_to_backbones(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    flags = BackboneFlags(weights=(f"x={a}", f"y={b}"))
    assert flags.weights_by_name(["x", "y"]) == {"x": str(a), "y": str(b)}
    assert BackboneFlags(weights=(str(a),)).weights_by_name(["x", "y"], own="y") == {"y": str(a)}
    with pytest.raises(LgmError, match="NAME=PATH"):
        BackboneFlags(weights=(str(a),)).weights_by_name(["x", "y"])
    with pytest.raises(LgmError, match="two files"):
        BackboneFlags(weights=(f"x={a}", f"x={b}")).weights_by_name(["x"])
    spec = BackboneFlags(weights=(f"y={b}",), normalization="imagenet").spec_for("y", names=["x", "y"])
    assert (spec.weights, spec.random_init, spec.normalization) == (str(b), False, "imagenet")
    assert BackboneFlags().spec_for("x", {"x": {"random_init": True}}).random_init
    with pytest.raises(MissingResourceError, match="no such file"):
        BackboneFlags(weights=(str(tmp_path / "nope"),)).spec_for("x")


def test_a_failed_start_leaves_out_as_it_was(fashion_root, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["distill", "--dataset", "fashion-mnist", "--backbone", BB, "--data-root", str(fashion_root),
            "--steps", "2", "--augs", "2", "--res", "32", "--crop", "32", "--no-progress", "--device", "cpu",
            "--out", str(out)]
    assert main(args + ["--weights", str(tmp_path / "missing.safetensors")]) == 1
    assert not out.exists()
    wrong = tmp_path / "wrong.safetensors"
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.zeros(3, 3)}, str(wrong))
    assert main(args + ["--weights", str(wrong)]) == 1
    assert "missing keys" in capsys.readouterr().err and not out.exists()
    # A run directory that exists already is not touched by a failed restart either.
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(args + ["--weights", str(wrong)]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_names_as_timm_users_expect():
    from lgm.backbones import BACKBONES

    with pytest.raises(UnknownNameError) as e:
        BACKBONES.get("resnet18")
    assert "Did you mean timm:resnet18" in str(e.value)
    with pytest.raises(UnknownNameError) as e:
        BACKBONES.get("timm:resnt18")
    assert "resnet18" in str(e.value) and len(str(e.value)) < 1000  # never timm's whole model list


def test_timm_hf_hub_name_from_the_local_cache(tmp_path, monkeypatch):
    import timm
    from safetensors.torch import save_file

    from lgm.backbones import load_backbone, weights_on_disk

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    name = "timm:hf-hub:someone/tiny_resnet"
    with pytest.raises(MissingResourceError, match="models--someone--tiny_resnet"):
        load_backbone(name)
    net = timm.create_model("test_resnet", pretrained=False).eval()
    entry = tmp_path / "models--someone--tiny_resnet"
    snap = entry / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("abc123")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(snap / "model.safetensors"))
    cfg = {"architecture": "test_resnet", "num_classes": 1000,
           "pretrained_cfg": {"input_size": [3, 96, 96], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    (snap / "config.json").write_text(json.dumps(cfg))
    bb = load_backbone(name)
    assert weights_on_disk(name) == snap / "model.safetensors"
    assert bb.info.input_size == 96 and bb.info.mean == (0.5, 0.5, 0.5)
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        want = net.forward_head(net.forward_features((x - 0.5) / 0.25), pre_logits=True)
        torch.testing.assert_close(bb(x), want)


def test_a_wrong_file_for_effnet_or_opennsfw_is_a_message(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    from safetensors.torch import save_file

    from lgm.backbones import load_backbone

    wrong = tmp_path / "wrong.safetensors"
    save_file({"fc.weight": torch.zeros(3, 3)}, str(wrong))
    with pytest.raises(LgmError, match="missing keys"):
        load_backbone("effnet_lite0", weights=str(wrong))
    pytest.importorskip("onnx2torch")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx graph at all")
    with pytest.raises(LgmError, match="not the open_nsfw ONNX graph"):
        load_backbone("opennsfw_resnet50", weights=str(bad))


def test_a_joint_run_takes_a_file_per_backbone(fashion_root, weights_file, tmp_path, capsys):
    """--weights NAME=PATH in a joint run: recorded per backbone and used (checked) by the later commands."""
    data = ["--data-root", str(fashion_root)]
    probe = ["--repeats", "1", "--views", "2", "--epochs", "3", "--val-per-class", "2", "--device", "cpu"]
    r = tmp_path / "joint"
    distill = ["distill", "--dataset", "fashion-mnist", "--backbone", f"{BB},toy_cnn", *data, "--steps", "2",
               "--augs", "2", "--res", "32", "--crop", "32", "--no-progress", "--device", "cpu", "--out", str(r)]
    capsys.readouterr()
    assert main([*distill, "--weights", str(weights_file)]) == 2  # a bare path: which backbone is it for?
    assert "--weights NAME=PATH" in capsys.readouterr().err and not r.exists()
    assert main([*distill, "--weights", f"{BB}={tmp_path / 'missing.safetensors'}"]) == 1
    assert "missing.safetensors" in capsys.readouterr().err and not r.exists()
    run(*distill, "--weights", f"{BB}={weights_file}")
    meta = json.loads((r / "distilled.json").read_text())
    entries = {e["name"]: e for e in meta["backbones"]}
    sha = weights_sha256(weights_file)
    assert entries[BB]["weights_file"] == {"path": str(weights_file.resolve()), "sha256": sha}
    assert "weights_file" not in entries["toy_cnn"]
    assert recorded_specs(meta)[BB]["weights_file"]["sha256"] == sha

    run("eval", str(r), "--backbone", BB, *data, *probe)  # the recorded file, found and checked, no --weights
    assert json.loads((r / "eval.json").read_text())[f"{BB}/spec"]["weights"] == f"sha256:{sha[:16]}"
    run("crossmodel", str(r), "--backbone", BB, "toy_cnn", "--out", str(tmp_path / "cm"), *data, *probe)
    run(*distill, "--weights", f"{BB}={weights_file}")  # the same run again: finished, nothing redone


def test_weights_have_one_normal_form_per_meaning():
    from lgm.config import DistillConfig

    single = DistillConfig(dataset="d", backbone="a", weights="/w/a.pt")
    assert DistillConfig(dataset="d", backbone="a", weights=("/w/a.pt",)).hash() == single.hash()
    assert DistillConfig(dataset="d", backbone="a", weights="a=/w/a.pt").weights == "/w/a.pt"
    joint = DistillConfig(dataset="d", backbone=("a", "b"), weights=("b=/w/b.pt", "a=/w/a.pt"))
    assert joint.weights == ("a=/w/a.pt", "b=/w/b.pt")  # --backbone order, whatever the flags' order
    assert joint.hash() == DistillConfig(dataset="d", backbone="a,b", weights=["a=/w/a.pt", "b=/w/b.pt"]).hash()
    assert (joint.weights_for("a"), joint.weights_for("b")) == ("/w/a.pt", "/w/b.pt")
    partial = DistillConfig(dataset="d", backbone=("a", "b"), weights="b=/w/b.pt")
    assert (partial.weights_for("a"), partial.weights_for("b")) == (None, "/w/b.pt")
    assert DistillConfig(dataset="d", backbone=("a",), weights="/w/a.pt").weights_for("a") == "/w/a.pt"
