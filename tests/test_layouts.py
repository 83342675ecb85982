"""Checkpoint layouts users download (Hugging Face transformers, torch.hub) and DINOv2's position-embedding
interpolation, on random weights at tiny resolutions.

The transformers layouts are written here from a timm state dict by converters
that follow transformers' own conversion scripts (convert_dinov2_to_hf.py,
convert_clip_original_pytorch_to_hf.py), independently of lgm's reader; the
loaded backbone must give the features of the timm-layout file of the same
weights.
"""

from __future__ import annotations

import json

import pytest
import torch

from lgm.backbones import load_backbone, weights_on_disk
from lgm.errors import LgmError, MissingResourceError

SIZES = {"dinov2_vits14": 28, "dinov2_vits14_reg": 28, "dinov2_vitb14": 28, "clip_vitb32": 64,
         "clip_vitb32_preproj": 64}


def random_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A timm-layout state dict of ``name`` (2 x 2 token grid) with every tensor drawn at unit-ish scale.

    timm initializes layer scale at 1e-5 and the tokens at 1e-6, where the blocks would hardly
    change the features; drawing everything makes a swapped or misplaced tensor visible.
    """
    net = load_backbone(name, random_init=True, input_size=SIZES[name]).model.net
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in net.state_dict().items():
        if not v.is_floating_point():
            state[k] = v.clone()
        elif k.endswith(("norm1.weight", "norm2.weight", "norm.weight", "norm_pre.weight", "ls1.gamma",
                         "ls2.gamma")):
            state[k] = 1 + 0.2 * torch.randn(v.shape, generator=g)
        elif v.dim() >= 2 and k.endswith(".weight"):  # Linear and patch-embedding Conv2d: unit-variance outputs
            state[k] = torch.randn(v.shape, generator=g) / v[0].numel() ** 0.5
        else:  # biases, tokens, position embedding
            state[k] = 0.5 * torch.randn(v.shape, generator=g)
    if "head.bias" in state:
        state["head.bias"].zero_()  # CLIP's projection has no bias
    return state


def images(size: int, n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def features(name: str, weights, size: int | None = None) -> torch.Tensor:
    size = size or SIZES[name]
    with torch.no_grad():
        return load_backbone(name, weights=str(weights), input_size=size).features(images(size))


def save_safetensors(state: dict[str, torch.Tensor], path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


# ---- transformers' names, written from timm's (as transformers' conversion scripts do) ----


def timm_to_official_dinov2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official DINOv2 layout: timm's names, with the register models' class-token embedding in pos_embed."""
    out = dict(state)
    if "reg_token" in out:
        # timm's register models add no position embedding to the class token; the official one does.
        # Any split of cls_token + pos[0] is the same network: put a random part into pos[0].
        pos_cls = torch.randn(1, 1, out["cls_token"].shape[-1], generator=torch.Generator().manual_seed(9))
        out["register_tokens"] = out.pop("reg_token")
        out["cls_token"] = out["cls_token"] - pos_cls
        out["pos_embed"] = torch.cat([pos_cls, out["pos_embed"]], dim=1)
    out["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
    return out


def official_to_hf_dinov2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' Dinov2Model / Dinov2WithRegistersModel names (convert_dinov2_to_hf.py)."""
    simple = {"cls_token": "embeddings.cls_token", "mask_token": "embeddings.mask_token",
              "register_tokens": "embeddings.register_tokens", "pos_embed": "embeddings.position_embeddings",
              "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
              "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
              "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"}
    per_block = {"norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
                 "attn.proj": "attention.output.dense"}
    out = {}
    for k, v in state.items():
        if k in simple:
            out[simple[k]] = v
            continue
        block, rest = k.split(".", 2)[1], k.split(".", 2)[2]
        hf = f"encoder.layer.{block}."
        if rest in ("ls1.gamma", "ls2.gamma"):
            out[hf + f"layer_scale{rest[2]}.lambda1"] = v
        elif rest.startswith("attn.qkv."):
            param = rest.rsplit(".", 1)[1]
            d = v.shape[0] // 3
            for i, part in enumerate(("query", "key", "value")):
                out[hf + f"attention.attention.{part}.{param}"] = v[i * d:(i + 1) * d]
        else:
            module, param = rest.rsplit(".", 1)
            out[hf + f"{per_block[module]}.{param}"] = v
    return out


def timm_to_hf_clip(state: dict[str, torch.Tensor], projection: bool = True, text: bool = True) -> dict:
    """transformers' CLIPModel names (CLIPVisionModel without the projection, without text tower either)."""
    vm = "vision_model."
    out = {
        vm + "embeddings.class_embedding": state["cls_token"].reshape(-1),
        vm + "embeddings.patch_embedding.weight": state["patch_embed.proj.weight"],
        vm + "embeddings.position_embedding.weight": state["pos_embed"][0],
        vm + "pre_layrnorm.weight": state["norm_pre.weight"], vm + "pre_layrnorm.bias": state["norm_pre.bias"],
        vm + "post_layernorm.weight": state["norm.weight"], vm + "post_layernorm.bias": state["norm.bias"],
    }
    if projection:
        out["visual_projection.weight"] = state["head.weight"]  # a bias-free Linear, embed x width
    if text:
        out.update({"text_model.embeddings.token_embedding.weight": torch.zeros(10, 512),
                    "text_model.encoder.layers.0.self_attn.q_proj.weight": torch.zeros(512, 512),
                    "text_model.final_layer_norm.weight": torch.ones(512),
                    "text_projection.weight": torch.zeros(512, 512), "logit_scale": torch.tensor(2.6592)})
    blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("blocks.")})
    for i in blocks:
        t, h = f"blocks.{i}.", f"{vm}encoder.layers.{i}."
        for ours, theirs in (("norm1", "layer_norm1"), ("norm2", "layer_norm2"), ("attn.proj", "self_attn.out_proj"),
                             ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            for p in ("weight", "bias"):
                out[f"{h}{theirs}.{p}"] = state[f"{t}{ours}.{p}"]
        for p in ("weight", "bias"):
            q, k, v = state[f"{t}attn.qkv.{p}"].chunk(3)
            out[f"{h}self_attn.q_proj.{p}"], out[f"{h}self_attn.k_proj.{p}"], out[f"{h}self_attn.v_proj.{p}"] = q, k, v
    return out


@pytest.fixture(scope="module")
def dinov2_s():
    return random_state("dinov2_vits14")


@pytest.fixture(scope="module")
def clip_b32():
    return random_state("clip_vitb32")


def test_hf_dinov2_matches_the_timm_layout(tmp_path, dinov2_s):
    save_safetensors(dinov2_s, tmp_path / "timm.safetensors")
    ref = features("dinov2_vits14", tmp_path / "timm.safetensors")
    hf = official_to_hf_dinov2(timm_to_official_dinov2(dinov2_s))
    assert "encoder.layer.3.attention.attention.key.bias" in hf and "embeddings.mask_token" in hf
    save_safetensors(hf, tmp_path / "hf.safetensors")
    torch.testing.assert_close(features("dinov2_vits14", tmp_path / "hf.safetensors"), ref, rtol=1e-5, atol=1e-5)
    # Dinov2ForImageClassification: the backbone under "dinov2.", a linear head beside it.
    wrapped = {f"dinov2.{k}": v for k, v in hf.items()}
    wrapped.update({"classifier.weight": torch.zeros(1000, 768), "classifier.bias": torch.zeros(1000)})
    torch.save(wrapped, tmp_path / "classifier.bin")
    torch.testing.assert_close(features("dinov2_vits14", tmp_path / "classifier.bin"), ref, rtol=1e-5, atol=1e-5)


def test_hf_dinov2_query_key_value_order_matters(tmp_path, dinov2_s):
    # The features are sensitive to the fusing order: swapped query and key give other features.
    hf = official_to_hf_dinov2(timm_to_official_dinov2(dinov2_s))
    q, k = "encoder.layer.0.attention.attention.query.weight", "encoder.layer.0.attention.attention.key.weight"
    save_safetensors(hf, tmp_path / "hf.safetensors")
    hf[q], hf[k] = hf[k], hf[q]
    save_safetensors(hf, tmp_path / "swapped.safetensors")
    assert not torch.allclose(features("dinov2_vits14", tmp_path / "swapped.safetensors"),
                              features("dinov2_vits14", tmp_path / "hf.safetensors"), rtol=1e-3, atol=1e-3)


def test_hf_dinov2_with_registers(tmp_path):
    state = random_state("dinov2_vits14_reg", seed=2)
    save_safetensors(state, tmp_path / "timm.safetensors")
    hf = official_to_hf_dinov2(timm_to_official_dinov2(state))
    assert hf["embeddings.position_embeddings"].shape == (1, 5, 384)  # covers the class token
    save_safetensors(hf, tmp_path / "hf.safetensors")
    torch.testing.assert_close(features("dinov2_vits14_reg", tmp_path / "hf.safetensors"),
                               features("dinov2_vits14_reg", tmp_path / "timm.safetensors"), rtol=1e-5, atol=1e-5)


def test_hf_clip_matches_the_timm_layout(tmp_path, clip_b32):
    save_safetensors(clip_b32, tmp_path / "timm.safetensors")
    ref = features("clip_vitb32", tmp_path / "timm.safetensors")
    ref_pre = features("clip_vitb32_preproj", tmp_path / "timm.safetensors")
    assert ref.shape == (3, 512) and ref_pre.shape == (3, 768)
    full = timm_to_hf_clip(clip_b32)  # CLIPModel: both towers
    save_safetensors(full, tmp_path / "clip.safetensors")
    torch.testing.assert_close(features("clip_vitb32", tmp_path / "clip.safetensors"), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(features("clip_vitb32_preproj", tmp_path / "clip.safetensors"), ref_pre,
                               rtol=1e-5, atol=1e-5)
    # CLIPVisionModelWithProjection, saved by an older transformers that kept the position ids.
    vision = timm_to_hf_clip(clip_b32, text=False)
    vision["vision_model.embeddings.position_ids"] = torch.arange(5)[None]
    torch.save(vision, tmp_path / "vision.bin")
    torch.testing.assert_close(features("clip_vitb32", tmp_path / "vision.bin"), ref, rtol=1e-5, atol=1e-5)
    # CLIPVisionModel has no projection: enough for the pre-projection feature, refused for the embedding.
    save_safetensors(timm_to_hf_clip(clip_b32, projection=False, text=False), tmp_path / "noproj.safetensors")
    torch.testing.assert_close(features("clip_vitb32_preproj", tmp_path / "noproj.safetensors"), ref_pre,
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(LgmError, match=r"read as Hugging Face transformers CLIP.*missing keys: "
                                       r"head\.weight, head\.bias"):
        features("clip_vitb32", tmp_path / "noproj.safetensors")


def test_wrong_models_are_refused_with_their_keys(tmp_path, dinov2_s, clip_b32):
    save_safetensors(official_to_hf_dinov2(timm_to_official_dinov2(dinov2_s)), tmp_path / "dinov2_small.safetensors")
    # A dinov2-small file for the base model: every tensor is there, at the small width.
    with pytest.raises(LgmError, match=r"(?s)dinov2_small\.safetensors \(read as Hugging Face transformers DINOv2\) "
                                       r"do not fit dinov2_vitb14.*wrong shapes: cls_token: file \(1, 1, 384\) vs "
                                       r"model \(1, 1, 768\)"):
        features("dinov2_vitb14", tmp_path / "dinov2_small.safetensors")
    # CLIP's visual tower for DINOv2: no layer scale, and a pre-norm and projection DINOv2 does not have.
    save_safetensors(timm_to_hf_clip(clip_b32), tmp_path / "clip.safetensors")
    with pytest.raises(LgmError) as e:
        features("dinov2_vits14", tmp_path / "clip.safetensors")
    msg = str(e.value)
    assert "read as Hugging Face transformers CLIP" in msg
    assert "missing keys: patch_embed.proj.bias, blocks.0.ls1.gamma" in msg
    unexpected = msg.split("unexpected keys: ")[1].split(";")[0].split(", ")
    assert sorted(unexpected) == ["head.bias", "head.weight", "norm_pre.bias", "norm_pre.weight"]
    # And DINOv2 for CLIP.
    with pytest.raises(LgmError, match=r"read as Hugging Face transformers DINOv2.*missing keys: norm_pre\.weight"):
        features("clip_vitb32_preproj", tmp_path / "dinov2_small.safetensors")
    # An incomplete query/key/value triple is reported, not silently fused.
    hf = official_to_hf_dinov2(timm_to_official_dinov2(dinov2_s))
    del hf["encoder.layer.2.attention.attention.value.weight"]
    save_safetensors(hf, tmp_path / "no_value.safetensors")
    with pytest.raises(LgmError, match=r"missing keys: blocks\.2\.attn\.qkv\.weight; unexpected keys: "
                                       r"encoder\.layer\.2\.attention\.attention\.(key|query)\.weight, "
                                       r"encoder\.layer\.2\.attention\.attention\.(key|query)\.weight\."):
        features("dinov2_vits14", tmp_path / "no_value.safetensors")


# ---- save_pretrained directories and the HF cache ----


def test_save_pretrained_directories(tmp_path, dinov2_s):
    save_safetensors(dinov2_s, tmp_path / "timm.safetensors")
    ref = features("dinov2_vits14", tmp_path / "timm.safetensors")
    hf = official_to_hf_dinov2(timm_to_official_dinov2(dinov2_s))
    config = {"architectures": ["Dinov2Model"], "model_type": "dinov2", "hidden_size": 384}
    st, pt, sharded = (tmp_path / d for d in ("st", "pt", "sharded"))
    for d in (st, pt, sharded):
        d.mkdir()
        (d / "config.json").write_text(json.dumps(config))
    save_safetensors(hf, st / "model.safetensors")
    torch.save(hf, pt / "pytorch_model.bin")
    keys = sorted(hf)
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for file, part in halves.items():
        save_safetensors({k: hf[k] for k in part}, sharded / file)
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, part in halves.items() for k in part}}))
    for d in (st, pt, sharded):
        torch.testing.assert_close(features("dinov2_vits14", d), ref, rtol=1e-5, atol=1e-5)

    (sharded / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(MissingResourceError, match=r"index\.json names shards that are not in .*: "
                                                   r"model-00002-of-00002\.safetensors"):
        features("dinov2_vits14", sharded)
    (st / "model.safetensors").unlink()
    (st / "tf_model.h5").write_bytes(b"")
    with pytest.raises(MissingResourceError, match=r"holds none of model\.safetensors, pytorch_model\.bin.*"
                                                   r"\(it holds: config\.json, tf_model\.h5\)"):
        features("dinov2_vits14", st)


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty HF and torch.hub caches, both looked up through their libraries' own settings."""
    from huggingface_hub import constants

    hf = tmp_path / "hf-hub"
    hf.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # no set_dir() from elsewhere
    return hf, tmp_path / "torch-home" / "hub" / "checkpoints"


def put_in_hf_cache(cache, repo_id: str, files: dict[str, object]) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, content in files.items():
        if name.endswith(".safetensors"):
            save_safetensors(content, snap / name)
        elif name.endswith(".bin"):
            torch.save(content, snap / name)
        else:
            (snap / name).write_text(json.dumps(content))


def test_transformers_repositories_in_the_hf_cache(tmp_path, caches, dinov2_s, clip_b32):
    hf_cache, _ = caches
    assert weights_on_disk("dinov2_vits14") is None
    save_safetensors(dinov2_s, tmp_path / "timm.safetensors")
    ref = features("dinov2_vits14", tmp_path / "timm.safetensors")
    put_in_hf_cache(hf_cache, "facebook/dinov2-small", {
        "config.json": {"model_type": "dinov2"},
        "model.safetensors": official_to_hf_dinov2(timm_to_official_dinov2(dinov2_s))})
    assert weights_on_disk("dinov2_vits14").parent.parent.parent.name == "models--facebook--dinov2-small"
    assert weights_on_disk("dinov2_vitb14") is None  # another size's repository
    with torch.no_grad():
        torch.testing.assert_close(load_backbone("dinov2_vits14", input_size=28).features(images(28)), ref,
                                   rtol=1e-5, atol=1e-5)
    # openai/clip-vit-base-patch32 as older snapshots hold it: pytorch_model.bin only.
    save_safetensors(clip_b32, tmp_path / "clip.safetensors")
    put_in_hf_cache(hf_cache, "openai/clip-vit-base-patch32", {"pytorch_model.bin": timm_to_hf_clip(clip_b32)})
    assert weights_on_disk("clip_vitb32").name == "pytorch_model.bin"
    assert weights_on_disk("clip_vitb32_preproj").name == "pytorch_model.bin"
    with torch.no_grad():
        torch.testing.assert_close(load_backbone("clip_vitb32", input_size=64).features(images(64)),
                                   features("clip_vitb32", tmp_path / "clip.safetensors"), rtol=1e-5, atol=1e-5)


# ---- the torch.hub cache ----


def test_official_files_in_the_torch_hub_cache(tmp_path, caches, monkeypatch, dinov2_s):
    _, checkpoints = caches
    save_safetensors(dinov2_s, tmp_path / "timm.safetensors")
    ref = features("dinov2_vits14", tmp_path / "timm.safetensors")
    checkpoints.mkdir(parents=True)
    torch.save(timm_to_official_dinov2(dinov2_s), checkpoints / "dinov2_vits14_pretrain.pth")
    assert weights_on_disk("dinov2_vits14") == checkpoints / "dinov2_vits14_pretrain.pth"
    assert weights_on_disk("dinov2_vits14_reg") is None and weights_on_disk("dinov2_vitb14") is None
    with torch.no_grad():
        torch.testing.assert_close(load_backbone("dinov2_vits14", input_size=28).features(images(28)), ref,
                                   rtol=1e-5, atol=1e-5)
    # Without TORCH_HOME, torch.hub looks under XDG_CACHE_HOME/torch.
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights_on_disk("dinov2_vits14") is None
    xdg = tmp_path / "xdg" / "torch" / "hub" / "checkpoints"
    xdg.mkdir(parents=True)
    (checkpoints / "dinov2_vits14_pretrain.pth").rename(xdg / "dinov2_vits14_pretrain.pth")
    assert weights_on_disk("dinov2_vits14") == xdg / "dinov2_vits14_pretrain.pth"
    # DINO's releases are found the same way.
    (xdg / "dino_vitbase8_pretrain.pth").write_bytes(b"")
    assert weights_on_disk("dino_vitb8").name == "dino_vitbase8_pretrain.pth"
    assert weights_on_disk("dino_vits8") is None


def test_missing_weights_name_every_place_searched(caches):
    hf_cache, checkpoints = caches
    with pytest.raises(MissingResourceError) as e:
        load_backbone("dinov2_vitb14_reg")
    msg = str(e.value)
    for part in ("timm/vit_base_patch14_reg4_dinov2.lvd142m",
                 str(hf_cache / "models--timm--vit_base_patch14_reg4_dinov2.lvd142m"),
                 "facebook/dinov2-with-registers-base", str(hf_cache / "models--facebook--dinov2-with-registers-base"),
                 "dinov2_vitb14_reg4_pretrain.pth", f"torch.hub cache ({checkpoints})", "model.safetensors",
                 "pytorch_model.bin", "--weights PATH", "--random-init"):
        assert part in msg, part
    with pytest.raises(MissingResourceError, match=r"openai/clip-vit-base-patch16 \(.*models--openai--clip-vit-base-"
                                                   r"patch16\) in the local Hugging Face cache, and lgm never "
                                                   r"downloads"):
        load_backbone("clip_vitb16")


def test_lgm_backbones_sees_the_torch_hub_and_transformers_caches(tmp_path):
    import os
    import subprocess
    import sys

    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "dino_deitsmall16_pretrain.pth").write_bytes(b"")
    put_in_hf_cache(tmp_path / "hub", "openai/clip-vit-base-patch32", {"model.safetensors": {"x": torch.zeros(1)}})
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "torch"), HF_HUB_CACHE=str(tmp_path / "hub"))
    r = subprocess.run([sys.executable, "-m", "lgm", "backbones"], capture_output=True, text=True, env=env,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    on_disk = {line.split()[0]: line.split()[3] for line in r.stdout.splitlines()
               if line.split() and line.split()[0] in ("dino_vits16", "dino_vitb16", "clip_vitb32", "clip_vitb16",
                                                       "clip_vitb32_preproj", "dinov2_vits14")}
    assert on_disk == {"dino_vits16": "yes", "dino_vitb16": "no", "clip_vitb32": "yes", "clip_vitb32_preproj": "yes",
                       "clip_vitb16": "no", "dinov2_vits14": "no"}


# ---- DINOv2's position embedding at 224 px ----


def official_interpolate_pos_encoding(pos_embed: torch.Tensor, w: int, h: int, patch_size: int = 14,
                                      interpolate_offset: float = 0.1, interpolate_antialias: bool = False):
    """facebookresearch/dinov2's DinoVisionTransformer.interpolate_pos_encoding, for an input of w x h pixels
    (``B, nc, w, h = x.shape`` there), with its embedding (class token first) as ``pos_embed``."""
    import math

    N = pos_embed.shape[1] - 1
    w0, h0 = w // patch_size, h // patch_size
    if w0 * h0 == N and w == h:
        return pos_embed
    pos_embed = pos_embed.float()
    class_pos_embed, patch_pos_embed = pos_embed[:, 0], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    M = int(math.sqrt(N))
    assert N == M * M
    if interpolate_offset:
        kwargs = {"scale_factor": (float(w0 + interpolate_offset) / M, float(h0 + interpolate_offset) / M)}
    else:
        kwargs = {"size": (w0, h0)}
    patch_pos_embed = torch.nn.functional.interpolate(
        patch_pos_embed.reshape(1, M, M, dim).permute(0, 3, 1, 2), mode="bicubic",
        antialias=interpolate_antialias, **kwargs)
    assert (w0, h0) == patch_pos_embed.shape[-2:]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def release_pos_embed(dim: int, seed: int = 4) -> torch.Tensor:
    """A 518-px (37 x 37) embedding with a class-token row: smooth waves plus noise, as learned ones look."""
    g = torch.Generator().manual_seed(seed)
    r, c = torch.meshgrid(torch.arange(37.0), torch.arange(37.0), indexing="ij")
    freq = 0.05 + 0.4 * torch.rand(2, dim, generator=g)
    phase = 6.28 * torch.rand(dim, generator=g)
    waves = torch.sin(r.reshape(-1, 1) * freq[0] + c.reshape(-1, 1) * freq[1] + phase)
    grid = waves + 0.1 * torch.randn(37 * 37, dim, generator=g)
    return torch.cat([torch.randn(1, dim, generator=g), grid])[None]


def test_dinov2_features_at_224_follow_the_official_interpolation(tmp_path, dinov2_s):
    from timm.layers import resample_abs_pos_embed

    official = timm_to_official_dinov2(dinov2_s)
    official["pos_embed"] = release_pos_embed(384)
    torch.save(official, tmp_path / "dinov2_vits14_pretrain.pth")
    bb = load_backbone("dinov2_vits14", weights=str(tmp_path / "dinov2_vits14_pretrain.pth"))
    assert bb.info.input_size == 224 and "official DINOv2 pos-embed interpolation" in bb.info.source
    expected = official_interpolate_pos_encoding(official["pos_embed"], 224, 224)
    assert expected.shape == (1, 257, 384)
    torch.testing.assert_close(bb.model.net.pos_embed.detach(), expected, rtol=1e-6, atol=1e-6)

    # The features, against a model given the officially interpolated embedding at its own grid.
    at_224 = {**dinov2_s, "pos_embed": expected}
    save_safetensors(at_224, tmp_path / "timm_224.safetensors")
    x = images(224, n=2)
    with torch.no_grad():
        ref = load_backbone("dinov2_vits14", weights=str(tmp_path / "timm_224.safetensors")).features(x)
        torch.testing.assert_close(bb.features(x), ref, rtol=1e-5, atol=1e-5)

    # timm's resampling (bicubic to 16 x 16 with antialias), what lgm used before, is another grid.
    timm_grid = resample_abs_pos_embed(official["pos_embed"], new_size=[16, 16], old_size=[37, 37],
                                       num_prefix_tokens=1, interpolation="bicubic", antialias=True)
    rel = (timm_grid - expected)[:, 1:].norm() / expected[:, 1:].norm()
    assert rel > 0.02, rel.item()
    save_safetensors({**dinov2_s, "pos_embed": timm_grid}, tmp_path / "timm_resampled.safetensors")
    with torch.no_grad():
        other = load_backbone("dinov2_vits14", weights=str(tmp_path / "timm_resampled.safetensors")).features(x)
    assert not torch.allclose(other, ref, rtol=1e-3, atol=1e-3)


def test_dinov2_register_models_follow_their_own_official_interpolation(tmp_path):
    # The register models' hub entries interpolate to an output size, with antialias.
    state = random_state("dinov2_vits14_reg", seed=3)
    official = timm_to_official_dinov2(state)
    official["pos_embed"] = release_pos_embed(384, seed=6)
    torch.save(official, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    bb = load_backbone("dinov2_vits14_reg", weights=str(tmp_path / "dinov2_vits14_reg4_pretrain.pth"))
    assert "antialias" in bb.info.source and "no antialias" not in bb.info.source
    expected = official_interpolate_pos_encoding(official["pos_embed"], 224, 224, interpolate_offset=0.0,
                                                 interpolate_antialias=True)
    # timm's register models carry the class token's embedding in the token itself.
    torch.testing.assert_close(bb.model.net.pos_embed.detach(), expected[:, 1:], rtol=1e-6, atol=1e-6)
    plain = official_interpolate_pos_encoding(official["pos_embed"], 224, 224)
    assert not torch.allclose(bb.model.net.pos_embed.detach(), plain[:, 1:], rtol=1e-3, atol=1e-3)
