"""Official checkpoint layouts of the paper's ViTs, rewritten into timm's VisionTransformer layout.

Each release stores the same network under its own names:

- timm / HF hub (``model.safetensors``): timm's own names; nothing to do.
- DINO (facebookresearch/dino): the released backbones already use timm's
  names; the full training checkpoints hold ``{"teacher": ..., "student": ...}``
  with ``backbone.`` (teacher) / ``module.backbone.`` (student) prefixes and a
  ``head.`` projection head. The teacher is the one DINO evaluates.
- DINOv2 (facebookresearch/dinov2): timm's names plus a pretraining-only
  ``mask_token``; the register variants keep ``register_tokens`` and a
  position embedding that covers the class token, while timm's register
  models add position embeddings to patches only.
- MoCo v3 (facebookresearch/moco-v3): ``{"state_dict": ...}`` with
  ``module.base_encoder.`` (the encoder used downstream), plus the momentum
  encoder and predictor, and a projection MLP under ``head.``.
- OpenAI CLIP (state dict of ``ViT-B-16.pt`` etc., also open_clip's
  ``openai`` files): ``visual.*`` names of OpenAI's own modules next to the text
  tower, and the projection as a bare matrix ``visual.proj`` (width x embed).
- Hugging Face transformers ``Dinov2Model`` / ``Dinov2WithRegistersModel``
  (``facebook/dinov2-base``, ``save_pretrained`` directories): DINOv2's
  modules renamed (``embeddings.*``, ``encoder.layer.N.*``, ``layernorm``),
  query, key and value as three Linears, layer scale as ``lambda1``; under
  ``dinov2.`` (or ``dinov2_with_registers.``) next to a ``classifier`` in the
  image-classification models. Same numbers as the official release, whose
  layout it is mapped back to.
- Hugging Face transformers ``CLIPModel`` / ``CLIPVisionModel(WithProjection)``
  (``openai/clip-vit-base-patch16``): the visual tower under ``vision_model.``
  with q/k/v/out projections as four Linears, the position embedding as an
  ``nn.Embedding`` table, and the projection ``visual_projection`` a
  bias-free Linear (embed x width, already timm's convention).

:func:`to_timm_layout` detects the layout from the keys, so any of these files
can be given with --weights; the result still has to fit the model exactly.
"""

from __future__ import annotations

import math
import re

import torch

Tensor = torch.Tensor


def _strip(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Keys under ``prefix`` with the prefix removed; every other key dropped."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def unwrap(obj: object) -> tuple[dict[str, Tensor], list[str]]:
    """Descend into the containers training scripts wrap state dicts in."""
    notes = []
    while isinstance(obj, dict):
        for key in ("teacher", "state_dict", "model", "model_ema"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                notes.append(f"[{key!r}]")
                break
        else:
            break
    if not isinstance(obj, dict) or not any(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError("the file holds no state dict (no tensors at the top level or under "
                         "'teacher', 'state_dict', 'model')")
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}, notes


def _from_openai_clip(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    renames = [
        ("conv1.", "patch_embed.proj."),
        ("ln_pre.", "norm_pre."),
        ("ln_post.", "norm."),
        ("transformer.resblocks.", "blocks."),
        (".ln_1.", ".norm1."),
        (".ln_2.", ".norm2."),
        (".attn.in_proj_weight", ".attn.qkv.weight"),
        (".attn.in_proj_bias", ".attn.qkv.bias"),
        (".attn.out_proj.", ".attn.proj."),
        (".mlp.c_fc.", ".mlp.fc1."),
        (".mlp.c_proj.", ".mlp.fc2."),
    ]
    out = {}
    for k, v in _strip(state, prefix).items():  # the text tower lies outside the prefix and is dropped
        if k == "class_embedding":
            out["cls_token"] = v.reshape(1, 1, -1)
        elif k == "positional_embedding":
            out["pos_embed"] = v.unsqueeze(0)
        elif k == "proj":
            # OpenAI computes x @ proj; timm's head is a Linear (y = x W^T + b) without a bias in CLIP.
            out["head.weight"] = v.t().contiguous()
            out["head.bias"] = torch.zeros(v.shape[1], dtype=v.dtype)
        else:
            for old, new in renames:
                k = k.replace(old, new)
            out[k] = v
    return out


def _from_dinov2(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for k, v in state.items():
        if k == "mask_token":  # masked-image-modelling token, pretraining only
            continue
        # Chunked checkpoints (block_chunks > 0) name blocks "blocks.<chunk>.<index>."; index is global.
        k = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k)
        # The giant model's SwiGLU MLP: w12 (fused gate and value) and w3 map to timm's fc1 and fc2.
        k = re.sub(r"\.mlp\.w12\.", ".mlp.fc1.", k)
        k = re.sub(r"\.mlp\.w3\.", ".mlp.fc2.", k)
        out[k] = v
    if "register_tokens" in out:
        # DINOv2: x = [cls + pos[0], registers, patches + pos[1:]]; timm's register models
        # (no_embed_class) add pos to patches only, so the class token absorbs pos[0].
        pos = out.pop("pos_embed")
        out["reg_token"] = out.pop("register_tokens")
        out["cls_token"] = out["cls_token"] + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
    return out


_Pieces = dict[tuple[str, str], dict[str, tuple[str, Tensor]]]


def _fuse_qkv(out: dict[str, Tensor], pieces: _Pieces) -> None:
    """timm's fused ``qkv`` Linear from separate query/key/value Linears (rows in q, k, v order).

    ``pieces`` maps (timm prefix, "weight"|"bias") to {"q": (file key, tensor), "k": ..., "v": ...}.
    An incomplete triple keeps the file's names, for fit_state_dict to report.
    """
    for (prefix, param), parts in pieces.items():
        if set(parts) == {"q", "k", "v"}:
            out[f"{prefix}qkv.{param}"] = torch.cat([parts[r][1] for r in "qkv"], dim=0)
        else:
            out.update(parts.values())


# transformers' DINOv2 names -> the official DINOv2 names (inverse of transformers' convert_dinov2_to_hf.py).
_HF_DINOV2_RENAMES = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.mask_token$", "mask_token"),
    (r"^embeddings\.register_tokens$", "register_tokens"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.layer_scale1\.lambda1$", r"blocks.\1.ls1.gamma"),
    (r"^encoder\.layer\.(\d+)\.layer_scale2\.lambda1$", r"blocks.\1.ls2.gamma"),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.mlp\.weights_in\.", r"blocks.\1.mlp.w12."),  # SwiGLU (giant)
    (r"^encoder\.layer\.(\d+)\.mlp\.weights_out\.", r"blocks.\1.mlp.w3."),
    (r"^encoder\.layer\.(\d+)\.", r"blocks.\1."),  # norm1, norm2, mlp.fc1, mlp.fc2
    (r"^layernorm\.", "norm."),
]
_HF_QKV = {"query": "q", "key": "k", "value": "v"}


def _renamed(key: str, rules: list[tuple[str, str]]) -> str:
    """``key`` rewritten by the first rule whose pattern matches it (unchanged when none does)."""
    for pattern, new in rules:
        key, n = re.subn(pattern, new, key)
        if n:
            break
    return key


def _from_hf_dinov2(state: dict[str, Tensor]) -> dict[str, Tensor]:
    official: dict[str, Tensor] = {}
    pieces: _Pieces = {}
    for k, v in state.items():
        m = re.match(r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$", k)
        if m:
            pieces.setdefault((f"blocks.{m[1]}.attn.", m[3]), {})[_HF_QKV[m[2]]] = (k, v)
            continue
        official[_renamed(k, _HF_DINOV2_RENAMES)] = v
    _fuse_qkv(official, pieces)
    return _from_dinov2(official)


_HF_CLIP_RENAMES = [
    (r"^embeddings\.patch_embedding\.", "patch_embed.proj."),
    (r"^pre_layrnorm\.", "norm_pre."),  # sic: transformers' spelling
    (r"^post_layernorm\.", "norm."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layers\.(\d+)\.layer_norm([12])\.", r"blocks.\1.norm\2."),
    (r"^encoder\.layers\.(\d+)\.mlp\.", r"blocks.\1.mlp."),  # fc1, fc2 as in timm
]


def _from_hf_clip(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    pieces: _Pieces = {}
    if "visual_projection.weight" in state:
        # A bias-free Linear (embed x width): timm's head with a zero bias.
        w = state["visual_projection.weight"]
        out["head.weight"] = w
        out["head.bias"] = torch.zeros(w.shape[0], dtype=w.dtype)
    for k, v in _strip(state, "vision_model.").items():  # the text tower lies outside and is dropped
        m = re.match(r"^encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", k)
        if m:
            pieces.setdefault((f"blocks.{m[1]}.attn.", m[3]), {})[m[2]] = ("vision_model." + k, v)
        elif k == "embeddings.class_embedding":
            out["cls_token"] = v.reshape(1, 1, -1)
        elif k == "embeddings.position_embedding.weight":  # an nn.Embedding table, one row per token
            out["pos_embed"] = v.unsqueeze(0)
        elif k == "embeddings.position_ids":
            continue  # the token indices, a buffer older transformers versions saved
        else:
            out[_renamed(k, _HF_CLIP_RENAMES)] = v
    _fuse_qkv(out, pieces)
    return out


def _hf_dinov2_prefix(state: dict[str, Tensor]) -> str | None:
    """The prefix under which a transformers DINOv2 model lies in ``state``, or None if it holds none."""
    for prefix in ("", "dinov2.", "dinov2_with_registers."):
        if f"{prefix}embeddings.patch_embeddings.projection.weight" in state and any(
                k.startswith(f"{prefix}encoder.layer.") and k.endswith(".layer_scale1.lambda1") for k in state):
            return prefix
    return None


def to_timm_layout(obj: object) -> tuple[dict[str, Tensor], str]:
    """(state dict in timm's names, the layout it was read as)."""
    state, notes = unwrap(obj)
    where = "".join(notes)
    if any(k.startswith("module.base_encoder.") for k in state):
        enc = _strip(state, "module.base_encoder.")
        return {k: v for k, v in enc.items() if not k.startswith("head.")}, "MoCo v3 checkpoint (base encoder)"
    for prefix in ("visual.", "module.visual."):
        if prefix + "class_embedding" in state:
            return _from_openai_clip(state, prefix), f"OpenAI CLIP state dict{where}"
    if "vision_model.embeddings.class_embedding" in state:
        return _from_hf_clip(state), f"Hugging Face transformers CLIP{where}"
    hf_prefix = _hf_dinov2_prefix(state)
    if hf_prefix is not None:
        # The image-classification models keep the backbone under a prefix, beside a "classifier." head.
        return (_from_hf_dinov2(_strip(state, hf_prefix) if hf_prefix else state),
                f"Hugging Face transformers DINOv2{where}" + (f" ({hf_prefix} prefix)" if hf_prefix else ""))
    if notes and notes[0] == "['teacher']":
        # DINO/DINOv2 training checkpoint: backbone under "backbone.", projection head under "head."
        # ("module." in front when the teacher was wrapped in DistributedDataParallel).
        if all(k.startswith("module.") for k in state):
            state = _strip(state, "module.")
        state = _strip(state, "backbone.") if any(k.startswith("backbone.") for k in state) else state
        layout = "DINO training checkpoint (teacher backbone)"
        if "mask_token" in state or "register_tokens" in state:
            return _from_dinov2(state), "DINOv2 training checkpoint (teacher backbone)"
        return {k: v for k, v in state.items() if not k.startswith("head.")}, layout
    if all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = _strip(state, "module.")
        where += " (module. prefix)"
    if "mask_token" in state or "register_tokens" in state:
        return _from_dinov2(state), f"DINOv2 release{where}"
    return state, f"timm layout{where}"


def sincos_2d_pos_embed(grid: tuple[int, int], dim: int, temperature: float = 10000.0) -> Tensor:
    """MoCo v3's fixed position embedding: (1, 1 + h*w, dim), zeros for the class token.

    The first half of the channels encodes the row of a patch (sin, cos) and the
    second half its column, with frequencies temperature^(-k / (dim/4)); tokens
    are in timm's row-major patch order. This matches the tensor stored in the
    official checkpoints (it is a frozen parameter there).
    """
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos position embedding needs dim divisible by 4, got {dim}")
    h, w = grid
    rows = torch.arange(h, dtype=torch.float64).repeat_interleave(w)
    cols = torch.arange(w, dtype=torch.float64).repeat(h)
    quarter = dim // 4
    omega = temperature ** -(torch.arange(quarter, dtype=torch.float64) / quarter)
    a, b = rows[:, None] * omega, cols[:, None] * omega
    pe = torch.cat([a.sin(), a.cos(), b.sin(), b.cos()], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), pe]).unsqueeze(0).float()


def dinov2_pos_embed(pos: Tensor, grid: tuple[int, int], num_prefix: int, offset: float, antialias: bool) -> Tensor:
    """DINOv2's position embedding for a ``grid`` of patches, as the official model computes it at run time.

    facebookresearch/dinov2 (``DinoVisionTransformer.interpolate_pos_encoding``)
    resamples its 37 x 37 grid on every forward pass: bicubic, with
    ``interpolate_antialias`` and, when ``interpolate_offset`` is set, a scale
    factor (n + offset) / 37 instead of an output size (a historical work-around
    the released models keep; it moves the sampling points by a fraction of a
    cell). Its hub models use offset 0.1 without antialias, the register models
    offset 0 with antialias. The input size of a built backbone is fixed, so
    computing this once gives the same numbers. The first ``num_prefix`` tokens
    (class token) are kept as they are; ``grid`` is (rows, columns).
    """
    prefix, patches = pos[:, :num_prefix], pos[:, num_prefix:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} position tokens do not form a square grid")
    rows, cols = grid
    if patches.shape[1] == rows * cols and rows == cols:
        return pos  # the official model uses its embedding as it is
    dim = patches.shape[-1]
    if offset:
        size_or_scale: dict = {"scale_factor": ((rows + offset) / side, (cols + offset) / side)}
    else:
        size_or_scale = {"size": (rows, cols)}
    out = torch.nn.functional.interpolate(
        patches.float().reshape(1, side, side, dim).permute(0, 3, 1, 2), mode="bicubic", antialias=antialias,
        **size_or_scale,
    )
    if tuple(out.shape[-2:]) != (rows, cols):
        raise ValueError(f"the interpolated position embedding has a {tuple(out.shape[-2:])} grid, not {grid}")
    out = out.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
    return torch.cat([prefix.float(), out], dim=1).to(pos.dtype)


def grid_of(tokens: int) -> tuple[int, int]:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"{tokens} position tokens do not form a square grid")
    return side, side
