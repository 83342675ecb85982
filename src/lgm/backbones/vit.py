"""The paper's self-supervised ViTs (and CLIP, EVA-02), built through timm without touching the network.

timm knows every architecture and its pretrained config (mean, std, input
size, hub repository) offline; its weight download is never used
(``pretrained=False``). Weights come from a file or ``save_pretrained``
directory (--weights, any layout of :mod:`lgm.backbones.layouts`) or, by
default, from what is already on disk: timm's hub repository or the
transformers one (``facebook/dinov2-base``, ``openai/clip-vit-base-patch16``)
in the HF cache, or the official release file in torch.hub's checkpoint
folder (where the authors' hubconf puts ``dinov2_vitb14_pretrain.pth``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lgm.backbones.base import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, BackboneInfo
from lgm.backbones.layouts import dinov2_pos_embed, grid_of, sincos_2d_pos_embed, to_timm_layout, unwrap
from lgm.backbones.weights import (
    create_for_loading,
    find_in_hf_cache,
    find_in_torch_hub,
    fit_state_dict,
    missing_hf_weights,
    read_weights_file,
)
from lgm.errors import LgmError

IMAGENET_NORM = "ImageNet mean/std"
CLIP_NORM = "OpenAI CLIP mean/std"


@dataclass(frozen=True)
class VitSpec:
    name: str
    timm_name: str  # architecture.tag: the tag selects timm's pretrained config (mean, std, hub repository)
    feature: str  # "cls" | "patch_mean" | "clip_proj" | "clip_preproj"
    input_size: int
    width: int  # token width = feature dim except for CLIP's projected embedding (512)
    official: str  # the official release files --weights also accepts
    stats: str = "imagenet"  # native normalization: "imagenet" | "clip" (OpenAI CLIP statistics)
    sincos: bool = False  # MoCo v3: fixed 2-D sin-cos position embedding
    hub: bool = True  # timm has a hub repository for these weights
    hf_repos: tuple[str, ...] = ()  # transformers repositories of the same weights, searched after timm's
    hub_files: tuple[str, ...] = ()  # official release files, looked for in torch.hub's checkpoint folder
    # (interpolate_offset, interpolate_antialias) of the official model, whose run-time resampling of the
    # position embedding lgm reproduces at load; None: timm's resampling (bicubic, antialias).
    official_pos_interp: tuple[float, bool] | None = None


FEATURES = {
    "cls": "CLS token after the final norm",
    "patch_mean": "mean of the patch tokens, then fc_norm",
    "clip_proj": "CLIP image embedding (CLS after ln_post, projected)",
    "clip_preproj": "CLIP CLS token after ln_post, before the projection",
}

_DINOV2 = "the official dinov2_vit{}14{}_pretrain.pth"
# facebookresearch/dinov2, dinov2/hub/backbones.py: the defaults of the plain models, and the register models'.
_DINOV2_INTERP = (0.1, False)
_DINOV2_REG_INTERP = (0.0, True)
SPECS: list[VitSpec] = []
for _s, _arch, _dim in (("s", "small", 384), ("b", "base", 768), ("l", "large", 1024)):
    # The paper runs every backbone at 224 px; DINOv2's position embedding (518 px) is resampled as the
    # official model does it.
    SPECS.append(VitSpec(f"dinov2_vit{_s}14", f"vit_{_arch}_patch14_dinov2.lvd142m", "cls", 224, _dim,
                         _DINOV2.format(_s, "") + f" or transformers' facebook/dinov2-{_arch}",
                         hf_repos=(f"facebook/dinov2-{_arch}",), hub_files=(f"dinov2_vit{_s}14_pretrain.pth",),
                         official_pos_interp=_DINOV2_INTERP))
    SPECS.append(VitSpec(f"dinov2_vit{_s}14_reg", f"vit_{_arch}_patch14_reg4_dinov2.lvd142m", "cls", 224, _dim,
                         _DINOV2.format(_s, "_reg4") + f" or transformers' facebook/dinov2-with-registers-{_arch}",
                         hf_repos=(f"facebook/dinov2-with-registers-{_arch}",),
                         hub_files=(f"dinov2_vit{_s}14_reg4_pretrain.pth",), official_pos_interp=_DINOV2_REG_INTERP))
for _p in (16, 32):
    _off = (f"a state dict of OpenAI's ViT-B-{_p}.pt (converted from TorchScript), open_clip's openai weights "
            f"or transformers' openai/clip-vit-base-patch{_p}")
    _hf = (f"openai/clip-vit-base-patch{_p}",)
    SPECS.append(VitSpec(f"clip_vitb{_p}", f"vit_base_patch{_p}_clip_224.openai", "clip_proj", 224, 768, _off, "clip",
                         hf_repos=_hf))
    SPECS.append(VitSpec(f"clip_vitb{_p}_preproj", f"vit_base_patch{_p}_clip_224.openai", "clip_preproj", 224, 768,
                         _off, "clip", hf_repos=_hf))
for _s, _arch, _dim in (("t", "tiny", 192), ("s", "small", 384), ("b", "base", 768), ("l", "large", 1024)):
    SPECS.append(VitSpec(f"eva02_vit{_s}14", f"eva02_{_arch}_patch14_224.mim_in22k", "patch_mean", 224, _dim,
                         "a timm-layout state dict (the hub's model.safetensors) or the official EVA-02 MIM checkpoint",
                         "clip"))
for _s, _arch, _dim, _p, _off in (("s", "small", 384, 16, "deitsmall16"), ("b", "base", 768, 16, "vitbase16"),
                                  ("s", "small", 384, 8, "deitsmall8"), ("b", "base", 768, 8, "vitbase8")):
    SPECS.append(VitSpec(f"dino_vit{_s}{_p}", f"vit_{_arch}_patch{_p}_224.dino", "cls", 224, _dim,
                         f"the official dino_{_off}_pretrain.pth or a full DINO checkpoint (teacher)",
                         hub_files=(f"dino_{_off}_pretrain.pth",)))
SPECS.append(VitSpec("mocov3_vitb16", "vit_base_patch16_224", "cls", 224, 768,
                     "the official MoCo v3 checkpoint vit-b-300ep.pth.tar", sincos=True, hub=False))


def hub_id(spec: VitSpec) -> str | None:
    # timm's pretrained configs name their hub repository "timm/<architecture>.<tag>".
    return f"timm/{spec.timm_name}" if spec.hub else None


def hub_repos(spec: VitSpec) -> tuple[str, ...]:
    """Every HF hub repository whose cached files are this backbone's default weights, in search order."""
    return ((hub_id(spec),) if spec.hub else ()) + spec.hf_repos


def _pos_interp_words(interp: tuple[float, bool]) -> str:
    offset, antialias = interp
    how = f"scale factor (n + {offset:g}) / m for an m x m file grid" if offset else "to the n x n grid"
    return (f"official DINOv2 pos-embed interpolation (bicubic, {how}, "
            f"{'antialias' if antialias else 'no antialias'})")


def vit_info(spec: VitSpec) -> BackboneInfo:
    # Declared here rather than read from timm so that importing lgm does not
    # import timm (seconds); the tests check these against timm's configs.
    mean, std = (CLIP_MEAN, CLIP_STD) if spec.stats == "clip" else (IMAGENET_MEAN, IMAGENET_STD)
    places = [f"HF cache {' or '.join(hub_repos(spec))}"] if spec.hub else []
    if spec.hub_files:
        places.append(f"torch.hub cache {' or '.join(spec.hub_files)}")
    places.append(f"--weights ({spec.official})")
    weights = " or ".join(places) if len(places) < 3 else ", ".join(places[:-1]) + ", or " + places[-1]
    return BackboneInfo(
        name=spec.name,
        feature_dim=512 if spec.feature == "clip_proj" else spec.width,
        mean=mean,
        std=std,
        input_size=spec.input_size,
        weights=weights,
        feature=FEATURES[spec.feature],
        source=f"timm {spec.timm_name}" + (" + fixed 2-D sin-cos pos-embed" if spec.sincos else "")
        + (f" + {_pos_interp_words(spec.official_pos_interp)}" if spec.official_pos_interp else ""),
        normalization=CLIP_NORM if spec.stats == "clip" else IMAGENET_NORM,
    )


class TimmFeatures(nn.Module):
    """A timm model and the rule that turns its tokens into one feature vector.

    All the paper's rules are timm's own pooled pre-logits for the pooling the
    model is built with (``global_pool="token"``: CLS after the final norm;
    EVA-02 with ``"avg"``: mean of patch tokens, then fc_norm); CLIP's image
    embedding is timm's head, which holds the projection.
    """

    def __init__(self, net: nn.Module, project: bool = False) -> None:
        super().__init__()
        self.net = net
        self.project = project

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.net.forward_features(x)
        return self.net.forward_head(tokens, pre_logits=not self.project)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.net.set_grad_checkpointing(enable)


def default_weights(spec: VitSpec) -> Path | None:
    """The weights the backbone loads when no --weights is given, if they are on disk."""
    for repo in hub_repos(spec):
        found = find_in_hf_cache(repo)
        if found is not None:
            return found
    return find_in_torch_hub(spec.hub_files)


def _create(spec: VitSpec, input_size: int) -> nn.Module:
    import timm

    kwargs: dict = {"img_size": input_size}
    if spec.feature == "clip_proj":
        kwargs["num_classes"] = 512  # the head is CLIP's projection
    else:
        kwargs["num_classes"] = 0
    if spec.feature == "patch_mean":
        kwargs["global_pool"] = "avg"
    elif spec.feature == "cls":
        kwargs["global_pool"] = "token"
    net = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
    if spec.sincos:
        pe = sincos_2d_pos_embed(net.patch_embed.grid_size, net.embed_dim)
        net.pos_embed = nn.Parameter(pe, requires_grad=False)
    return net


def _adapt_pos_embed(state: dict, net: nn.Module, spec: VitSpec) -> None:
    """Bring the file's position embedding to the model's patch grid (in place)."""
    if getattr(net, "pos_embed", None) is None:
        return
    if "pos_embed" not in state:
        if spec.sincos:  # fixed, so a file may leave it out
            state["pos_embed"] = sincos_2d_pos_embed(net.patch_embed.grid_size, net.embed_dim)
        return
    have, want = state["pos_embed"], net.pos_embed
    if have.shape == want.shape:
        return
    prefix = 0 if getattr(net, "no_embed_class", False) else net.num_prefix_tokens
    if have.dim() != 3 or have.shape[-1] != want.shape[-1]:
        return  # a different model: fit_state_dict reports the shapes
    if spec.sincos:
        # A fixed embedding is recomputed for the new grid rather than interpolated.
        state["pos_embed"] = sincos_2d_pos_embed(net.patch_embed.grid_size, net.embed_dim)
        return
    try:
        old_grid = grid_of(have.shape[1] - prefix)
    except ValueError:
        return
    if spec.official_pos_interp is not None:
        offset, antialias = spec.official_pos_interp
        state["pos_embed"] = dinov2_pos_embed(have, tuple(net.patch_embed.grid_size), prefix, offset, antialias)
        return
    from timm.layers import resample_abs_pos_embed

    state["pos_embed"] = resample_abs_pos_embed(
        have.float(), new_size=list(net.patch_embed.grid_size), old_size=list(old_grid),
        num_prefix_tokens=prefix, interpolation="bicubic", antialias=True,
    )


def _eva_filter(state: dict, net: nn.Module) -> dict:
    # The official EVA-02 MIM checkpoints need timm's own conversion (rope buffers,
    # MIM-only keys, final norm -> fc_norm); timm-layout files pass through it unchanged.
    from timm.models.eva import checkpoint_filter_fn

    return checkpoint_filter_fn(state, net)


def build_vit(spec: VitSpec, random_init: bool, weights: str | None, input_size: int | None) -> nn.Module:
    size = input_size or spec.input_size
    if random_init:
        return TimmFeatures(_create(spec, size), project=spec.feature == "clip_proj")
    if weights is None:
        found = default_weights(spec)
        if found is None:
            raise missing_hf_weights(spec.name, hub_repos(spec),
                                     f"a timm/HF safetensors file or save_pretrained directory, or {spec.official}",
                                     spec.hub_files)
        weights = str(found)
    raw = read_weights_file(weights, spec.name)
    net = create_for_loading(lambda: _create(spec, size))
    try:
        if spec.feature == "patch_mean":
            state, layout = _eva_filter(unwrap(raw)[0], net), "EVA-02 checkpoint (timm's conversion)"
        else:
            state, layout = to_timm_layout(raw)
    except ValueError as e:
        raise LgmError(f"{weights} is not a checkpoint lgm can read for {spec.name}: {e}") from None
    if spec.feature == "clip_preproj":
        state = {k: v for k, v in state.items() if not k.startswith("head.")}  # the projection is not used
    _adapt_pos_embed(state, net, spec)
    fit_state_dict(net, state, f"{spec.name} (timm {spec.timm_name}, {size} px)", weights, layout)
    return TimmFeatures(net, project=spec.feature == "clip_proj")
