"""Bulk no-grad feature passes of CPU convnets run a torch.compile'd copy of the model (lgm.backbones.base)."""

import shutil

import pytest
import torch

from lgm.backbones import base, load_backbone


class Recording(torch.nn.Module):
    """Stands in for torch.compile's result: the same model, with every input shape it was called on."""

    def __init__(self, model, fail=False):
        super().__init__()
        self.model, self.fail, self.shapes = model, fail, []

    def forward(self, x):
        if self.fail:
            raise RuntimeError("inductor: no C++ compiler")
        self.shapes.append(tuple(x.shape))
        return self.model(x)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setattr(base, "CPU_BATCH_PIXELS", 16 * 16 * 8)  # pieces of 8 images at 16 px
    monkeypatch.delenv("LGM_COMPILE_FEATURES", raising=False)
    made = []

    def fake_compile(model, **kwargs):
        made.append(Recording(model))
        return made[-1]

    monkeypatch.setattr(torch, "compile", fake_compile)
    bb = load_backbone("toy_cnn")
    assert bb.convolutional
    return bb, made


def test_a_bulk_pass_runs_compiled_in_fixed_pieces_and_gives_the_eager_features(toy):
    bb, made = toy
    x = torch.rand(37, 3, 16, 16)
    with torch.no_grad():
        eager = bb.features(x)
        with bb.bulk_inference(base.COMPILE_MIN_IMAGES):
            bulk = bb.features(x)
    assert len(made) == 1 and set(made[0].shapes) == {(8, 3, 16, 16)} and len(made[0].shapes) == 5
    torch.testing.assert_close(bulk, eager, rtol=0, atol=1e-6)  # the last piece's zero padding is dropped
    assert set(bb.state_dict()) == set(load_backbone("toy_cnn").state_dict())  # the copy is no submodule


@pytest.mark.parametrize("case", ["grad", "small scope", "outside", "switched off", "under a piece"])
def test_everything_else_stays_eager(toy, monkeypatch, case):
    bb, made = toy
    images = base.COMPILE_MIN_IMAGES - 1 if case == "small scope" else base.COMPILE_MIN_IMAGES
    n = 5 if case == "under a piece" else 20
    if case == "switched off":
        monkeypatch.setenv("LGM_COMPILE_FEATURES", "0")
    x = torch.rand(n, 3, 16, 16, requires_grad=case == "grad")
    with torch.set_grad_enabled(case == "grad"):
        if case == "outside":
            bb.features(x)
        else:
            with bb.bulk_inference(images):
                bb.features(x)
    assert not made or not made[0].shapes


def test_once_compiled_a_small_scope_uses_it_too(toy):
    bb, made = toy
    with torch.no_grad():
        with bb.bulk_inference(base.COMPILE_MIN_IMAGES):
            bb.features(torch.rand(8, 3, 16, 16))
        with bb.bulk_inference(10):
            bb.features(torch.rand(10, 3, 16, 16))
    assert len(made) == 1 and len(made[0].shapes) == 3


def test_a_failing_compilation_falls_back_to_eager_once_and_for_all(toy, monkeypatch, capsys):
    bb, _ = toy
    failing = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: failing.append(Recording(model, fail=True))
                        or failing[-1])
    x = torch.rand(16, 3, 16, 16)
    with torch.no_grad():
        eager = bb.features(x)
        with bb.bulk_inference(base.COMPILE_MIN_IMAGES):
            first = bb.features(x)
            second = bb.features(x)
    assert torch.equal(first, eager) and torch.equal(second, eager)
    assert len(failing) == 1 and "torch.compile of toy_cnn for feature extraction failed" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="inductor needs a C++ compiler on the CPU")
def test_the_real_compilation_matches_eager(monkeypatch, capsys):
    monkeypatch.setattr(base, "CPU_BATCH_PIXELS", 16 * 16 * 8)
    monkeypatch.delenv("LGM_COMPILE_FEATURES", raising=False)
    bb = load_backbone("toy_cnn")
    x = torch.rand(20, 3, 16, 16)
    with torch.no_grad():
        eager = bb.features(x)
        with bb.bulk_inference(base.COMPILE_MIN_IMAGES):
            compiled = bb.features(x)
    assert isinstance(bb._compiled, torch.nn.Module), capsys.readouterr().err  # it compiled, no fallback
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
