"""ONNX importer: a VGG-like classifier exported from Keras/TF or PyTorch → an :class:`FCN`.

onnx2torch turns the graph into a torch.fx ``GraphModule``; the fx importer reads the chain
as a :class:`~fcn_cam.layout.Layout` (NHWC input permute absorbed, ``Reshape`` with or
without a ``Shape``/``Gather``/``Concat`` subgraph as the flatten, ``Gemm`` or ``MatMul`` +
``Add`` as Linear, ``Mul`` + ``Add`` batch-norm folded, a final ``Softmax`` dropped and
recorded); the layout's references become onnxruntime running the ONNX file itself (on
the logits entering the final Softmax, made an extra graph output; on the probabilities
with ``keep_softmax``) and :func:`fcn_cam.convert` converts it and checks the maps against them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..conversion import convert
from ..errors import ConversionError
from ..surgery import FCN, IMAGENET_MEAN, IMAGENET_STD
from . import fx


def _require():
    try:
        import onnx
        import onnx2torch
        import onnxruntime
    except ImportError as e:
        raise ConversionError(
            f"reading ONNX files needs the onnx extra ({e.name} is missing): pip install 'fcn-cam[onnx]'"
        ) from None
    return onnx, onnx2torch, onnxruntime


def _input_layout(path: Path, graph, input_size) -> tuple[str, bool, tuple[int, int]]:
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ConversionError(f"{path}: expected one image input, found {[i.name for i in inputs]}")
    inp = inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise ConversionError(
            f"{path}: input `{inp.name}` has {len(dims)} dimensions, expected 4 (an image batch)"
        )
    if dims[3] == 3 and dims[1] != 3:
        channels_last, hw = True, dims[1:3]
    elif dims[1] == 3:
        channels_last, hw = False, dims[2:4]
    else:
        raise ConversionError(
            f"{path}: input `{inp.name}` has shape {dims}: neither NCHW nor NHWC with 3 channels"
        )
    if input_size is not None:
        size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        if any(f is not None and f != s for f, s in zip(hw, size)):
            raise ConversionError(
                f"{path}: input `{inp.name}` is fixed at {hw[0]}×{hw[1]}, not {size[0]}×{size[1]}"
            )
    elif None in hw:
        raise ConversionError(
            f"{path}: input `{inp.name}` has a free height/width ({dims}); pass input_size "
            "(--input-size), the size the model was trained at"
        )
    else:
        size = (hw[0], hw[1])
    return inp.name, channels_last, size


def _pick_output(path: Path, graph, output: int | str | None) -> str:
    names = [o.name for o in graph.output]
    if output is None:
        if len(names) != 1:
            raise ConversionError(
                f"{path}: the graph has outputs {names}; pass output= (--model-output) naming the class logits"
            )
        return names[0]
    if isinstance(output, int) and -len(names) <= output < len(names):
        return names[output]
    if output in names:
        return output
    raise ConversionError(f"{path}: no output {output!r}; the graph has {names}")


class _Runtime:
    """onnxruntime on the file: NCHW torch images → the chosen tensor."""

    def __init__(self, session, input_name: str, output_name: str, channels_last: bool) -> None:
        self.session, self.input_name, self.output_name = session, input_name, output_name
        self.channels_last = channels_last

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a = x.detach().cpu().float()
        a = a.permute(0, 2, 3, 1) if self.channels_last else a
        out = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(a.numpy())})[0]
        return torch.from_numpy(out)


def convert_onnx(
    path: str | os.PathLike,
    input_size: int | tuple[int, int] | None = None,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    class_names: Sequence[str] | None = None,
    flatten_order: str | None = None,
    output: int | str | None = None,
    keep_softmax: bool = False,
    output_stride: int | None = None,
    tolerance: float = 1e-4,
) -> FCN:
    """Read an ONNX classifier and convert it like :func:`fcn_cam.convert`.

    Args:
        path: the ``.onnx`` file.
        input_size: (H, W) the model was trained at; needed when the graph leaves it free.
        mean, std: the normalization of ``[0, 1]`` RGB pixels the model expects
            (``(0, 0, 0)``, ``(1, 1, 1)`` for Keras models that take ``[0, 1]`` pixels).
        class_names: optional labels, one per class.
        flatten_order: only to assert it; the order is read from the graph's Transpose.
        output: the graph output holding the class scores, if there are several.
        keep_softmax: keep a final Softmax as a channel-wise softmax over the class maps.
        output_stride, tolerance: as in :func:`fcn_cam.convert`.

    Returns:
        An :class:`FCN` taking NCHW images (an NHWC graph's transpose is absorbed), with
        ``info["exactness"]`` measured against onnxruntime on the file.
    """
    onnx, onnx2torch, ort = _require()
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: ONNX file not found")
    try:
        proto = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - protobuf raises many types on bad bytes
        raise ConversionError(f"{path}: not a readable ONNX file ({type(e).__name__}: {e})") from None
    graph = proto.graph
    input_name, channels_last, size = _input_layout(path, graph, input_size)
    out_name = _pick_output(path, graph, output)
    producer = next((n for n in graph.node if out_name in n.output), None)
    logits_name = out_name
    if producer is not None and producer.op_type in ("Softmax", "LogSoftmax") and not keep_softmax:
        logits_name = producer.input[0]  # check the logits entering the softmax
    try:
        gm = onnx2torch.convert(proto)
    except Exception as e:  # noqa: BLE001
        raise ConversionError(
            f"{path}: onnx2torch cannot read the graph ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None
    index = [o.name for o in graph.output].index(out_name)
    layout = fx.to_layout(
        gm, size, output=index if len(graph.output) > 1 else None, channels_last=channels_last
    )
    if flatten_order is not None and (layout.flatten_order or "chw") != flatten_order:
        raise ConversionError(
            f"{path}: the graph flattens in order {layout.flatten_order or 'chw'!r}, not {flatten_order!r}; "
            "drop flatten_order (it is read from the graph)"
        )
    ref_proto = onnx.load(str(path))  # the file itself, with the logits as an extra output
    if logits_name not in [o.name for o in ref_proto.graph.output]:
        ref_proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(logits_name))
    session = ort.InferenceSession(ref_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    # checked against the file itself, not the onnx2torch module
    layout.original = _Runtime(session, input_name, out_name, channels_last)
    layout.logits = _Runtime(session, input_name, logits_name, channels_last)
    fcn = convert(
        layout, size, flatten_order=layout.flatten_order, keep_softmax=keep_softmax,
        output_stride=output_stride, class_names=class_names, mean=mean, std=std,
        arch=path.name, weights=str(path), tolerance=tolerance,
    )
    fcn.info["source"] = {"format": "onnx", "channels_last": channels_last, "output": out_name,
                          "checked_on": logits_name, "checked_with": f"onnxruntime {ort.__version__}"}
    return fcn
