"""Weight files on disk: reading them safely, finding them in the HF and torch.hub caches, fitting them to a model.

Nothing here touches the network: weights come from a file (or a
``save_pretrained`` directory) the user names, or from a Hugging Face hub cache
or torch.hub checkpoint folder that is already on disk.
"""

from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from lgm.errors import LgmError, MissingResourceError

# Official training checkpoints (DINO's full checkpoints) store their argparse
# options next to the tensors. Namespace is a plain attribute bag, so letting
# the weights-only unpickler rebuild it executes no code; nothing else is allowed.
_SAFE_GLOBALS = [argparse.Namespace]

# Files of a timm model repository on the hub, in the order timm itself prefers them.
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

RANDOM_INIT_HINT = "or run with --random-init (Python: random_init=True; tests and speed benchmarks only)"


def _is_safetensors(path: Path) -> bool:
    # A safetensors file starts with an 8-byte little-endian header length and a JSON header.
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


# A save_pretrained directory too large for one file holds an index naming the shard of every tensor.
HF_INDEX_FILES = tuple(f"{name}.index.json" for name in HF_WEIGHT_FILES)


def weights_in_directory(path: Path, what: str) -> list[Path]:
    """The weight files of a Hugging Face ``save_pretrained`` directory (one file, or the shards of an index)."""
    for name in HF_WEIGHT_FILES:
        if (path / name).is_file():
            return [path / name]
    for name in HF_INDEX_FILES:
        index = path / name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise LgmError(f"{index} is not a Hugging Face weight index (a JSON object with a "
                               f"'weight_map'): {e}") from None
            missing = [s for s in shards if not (path / s).is_file()]
            if missing:
                raise MissingResourceError(f"{what} weights: {index} names shards that are not in {path}: "
                                           + ", ".join(missing))
            return [path / s for s in shards]
    others = sorted(p.name for p in path.iterdir() if p.is_file())
    raise MissingResourceError(
        f"{what} weights: the directory {path} holds none of {', '.join(HF_WEIGHT_FILES + HF_INDEX_FILES)} "
        f"(it holds: {', '.join(others) or 'nothing'}). Give the weight file itself with --weights, or a "
        "directory written by save_pretrained (TensorFlow and Flax weights are not read)."
    )


def read_weights_file(path: str | Path, what: str) -> dict:
    """The object stored in a safetensors file or a weights-only torch checkpoint.

    ``path`` may also be a Hugging Face ``save_pretrained`` directory (its
    ``model.safetensors`` or ``pytorch_model.bin``, sharded or not). ``what``
    names the backbone, for error messages. Pickled Python objects are
    refused (``torch.load(weights_only=True)``); TorchScript archives are
    refused with the one-line conversion that turns them into a state dict.
    """
    path = Path(path)
    if path.is_dir():
        files = weights_in_directory(path, what)
        if len(files) == 1:
            return _read_one(files[0], what)
        state: dict = {}
        for f in files:
            state.update(_read_one(f, what))
        return state
    if not path.is_file():
        raise MissingResourceError(f"{what} weights not found at {path} (no such file or directory)")
    return _read_one(path, what)


def _read_one(path: Path, what: str) -> dict:
    if _is_safetensors(path):
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if _is_torchscript(path):
        raise LgmError(
            f"{path} is a TorchScript archive (the format of OpenAI's CLIP release); lgm loads plain state "
            "dicts only, so that no code inside a download is run. Convert it once, if you trust the file:\n"
            "  python -c \"import sys, torch; from safetensors.torch import save_file; "
            "sd = torch.jit.load(sys.argv[1], map_location='cpu').state_dict(); "
            "save_file({k: v.contiguous() for k, v in sd.items()}, sys.argv[2])\" "
            f"{path} {path.with_suffix('.safetensors')}\n"
            "and pass the .safetensors file with --weights."
        )
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch raises several types for foreign files)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LgmError(
            f"{path} could not be read as a weights-only checkpoint for {what} ({first}). lgm never unpickles "
            "arbitrary Python objects; save the state dict alone (torch.save(model.state_dict(), ...)) or as "
            "safetensors."
        ) from None


def hf_cache_dir() -> Path:
    """The hub cache huggingface_hub uses (HF_HUB_CACHE / HF_HOME respected), read at call time."""
    import os

    from huggingface_hub import constants

    # huggingface_hub reads these once, at its import; a later change of the environment still counts here.
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path(constants.HF_HUB_CACHE)


def hf_cache_entry(repo_id: str) -> Path:
    """Where the hub cache keeps ``repo_id`` (for messages; the folder need not exist)."""
    return hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def find_in_hf_cache(repo_id: str, filenames: tuple[str, ...] = HF_WEIGHT_FILES) -> Path | None:
    """The first of ``filenames`` already in the local hub cache for ``repo_id`` (revision main), or None.

    A pure file-system lookup: huggingface_hub's ``try_to_load_from_cache``
    never downloads.
    """
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        found = try_to_load_from_cache(repo_id, name, cache_dir=str(hf_cache_dir()))
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def torch_hub_checkpoints() -> Path:
    """Where torch.hub keeps downloaded checkpoints (torch.hub.get_dir(): TORCH_HOME, else
    XDG_CACHE_HOME/torch, else ~/.cache/torch; then hub/checkpoints), read at call time."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_in_torch_hub(filenames: Sequence[str]) -> Path | None:
    """The first of ``filenames`` in torch.hub's checkpoint folder (where the authors' hubconf puts
    the official releases), or None."""
    folder = torch_hub_checkpoints()
    for name in filenames:
        if (folder / name).is_file():
            return folder / name
    return None


def missing_hf_weights(what: str, repo_id: str | Sequence[str] | None, file_hint: str,
                       hub_files: Sequence[str] = ()) -> MissingResourceError:
    """The error for a backbone whose default weights are not on disk, naming every place searched.

    ``repo_id`` is the hub repository (or repositories, in the order searched)
    looked up in the local Hugging Face cache, ``hub_files`` the official file
    names looked for in torch.hub's checkpoint folder, and ``file_hint`` says
    which files --weights accepts for this backbone.
    """
    repos = [repo_id] if isinstance(repo_id, str) else list(repo_id or ())
    places = []
    if repos:
        places.append(f"{' or '.join(HF_WEIGHT_FILES)} of the hub repositor{'y' if len(repos) == 1 else 'ies'} "
                      + ", ".join(f"{r} ({hf_cache_entry(r)})" for r in repos) + " in the local Hugging Face cache")
    if hub_files:
        places.append(f"{' or '.join(hub_files)} in the torch.hub cache ({torch_hub_checkpoints()})")
    if places:
        where = f"no weights for {what}: looked for {'; and for '.join(places)}, and lgm never downloads."
    else:
        where = f"no weights for {what}: it has no hub repository, so the weights must come from a file."
    return MissingResourceError(
        f"{where} Provide them with --weights PATH (Python: weights=PATH), {file_hint}; {RANDOM_INIT_HINT}."
    )


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], what: str, source: str, layout: str) -> None:
    """Load ``state`` into ``model`` strictly, or explain exactly what does not fit.

    ``source`` is the file (or cache entry) and ``layout`` the layout it was
    read as, so that a wrong file is recognizable from the message alone.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong:

        def few(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" (and {len(items) - 5} more)" if len(items) > 5 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {few(unexpected)}")
        if wrong:
            parts.append(f"wrong shapes: {few(wrong)}")
        raise LgmError(
            f"the weights in {source} (read as {layout}) do not fit {what}: " + "; ".join(parts)
            + ". Is this the checkpoint of this backbone (same size and patch size)?"
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def create_for_loading(create: Callable[[], nn.Module]) -> nn.Module:
    """``create()`` without initializing the weights a checkpoint is about to replace.

    Random initialization is most of the time it takes to build a large ViT on
    the CPU (seconds for ViT-L), wasted when weights follow. The model is built
    on the meta device and given uninitialized CPU storage; buffers that are
    not in a state dict are recomputed through timm's
    ``init_non_persistent_buffers``, and every other tensor must then come from
    the checkpoint (:func:`fit_state_dict` loads strictly). A model with a
    non-persistent buffer that cannot be recomputed is built normally.
    """
    with torch.device("meta"):
        net = create()
    persistent = set(net.state_dict())
    owners = []
    for prefix, module in net.named_modules():
        names = [f"{prefix}.{b}" if prefix else b for b, _ in module.named_buffers(recurse=False)]
        if any(n not in persistent for n in names):
            if not hasattr(module, "init_non_persistent_buffers"):
                return create()
            owners.append(module)
    net.to_empty(device="cpu")
    for module in owners:
        module.init_non_persistent_buffers()
    return net
