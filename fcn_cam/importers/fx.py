"""torch.fx importer: a traceable classifier → :class:`~fcn_cam.layout.Layout`.

The model is traced and run once on a probe input; every node's value is recorded. The
path from the input to the chosen output must be one chain of tensors (no branches) with a
single point where the ``[B, C, H, W]`` map becomes a ``[B, N]`` vector: a reshape
(``torch.flatten``, ``view``, ``reshape``, ONNX ``Reshape``/``Flatten``), optionally after a
``permute`` whose axes give the flatten order, or a spatial mean (a GAP head). Each node is
recognised by what it computes on the probe, not by its name:

- before the flatten, a node becomes a standard layer (its module, or the module of its
  function: ``F.relu`` → ``nn.ReLU``, ``F.max_pool2d`` → ``nn.MaxPool2d``, ``F.pad`` →
  ``nn.ConstantPad2d``), checked to reproduce the node's recorded output;
- after it, a node that is affine per feature (``x·a + c``: ``Mul``/``Add`` with constants,
  batch-norm) becomes :class:`~fcn_cam.layers.ChannelAffine`; one that is affine across
  features (``Linear``, ``F.linear``, ``MatMul``, ``Gemm``) becomes ``nn.Linear`` with the
  matrix read off by probing with unit vectors; a final softmax over the features becomes
  ``nn.Softmax(1)``; anything else is kept as a module for surgery to test channel-wise.

Surgery then converts the layout and checks it against the traced original.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

import torch
import torch.fx as fx
from torch import nn

from ..errors import ConversionError
from ..geometry import SPATIAL
from ..layers import SOFTMAX, ChannelAffine, channelwise, eval_mode, leaves
from ..layout import Layout, permute_order

BATCH = 2  # the probe's batch size: tells data tensors from shape arithmetic


class _ChannelsLast(nn.Module):
    """Feeds an NHWC model from NCHW images."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.permute(0, 2, 3, 1))


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[fx.Node, object] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        self.values[n] = out
        return out


def _describe(n: fx.Node) -> str:
    target = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
    return f"node `{n.name}` ({n.op} {target})"


def trace(model: nn.Module) -> fx.GraphModule:
    """``torch.fx.symbolic_trace`` in eval mode (dropout flags are baked in at trace time)."""
    if isinstance(model, fx.GraphModule):
        return model
    try:
        with eval_mode(model):
            return fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - tracing fails in many ways
        raise ConversionError(
            f"torch.fx cannot trace {type(model).__name__} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}); make its forward traceable (no control flow on "
            "tensor values) or pass nn.Sequential(features, nn.Flatten(), classifier)"
        ) from None


def _select_output(gm: fx.GraphModule, output: int | str | None) -> fx.Node:
    val = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    if isinstance(val, fx.Node):
        if output not in (None, 0):
            raise ConversionError(f"output={output!r}: the model returns a single tensor; drop output=")
        return val
    if isinstance(val, dict):
        keys = list(val)
        if output is None and len(keys) == 1:
            output = keys[0]
        if output not in val:
            raise ConversionError(
                f"the model returns a dict with keys {keys}; pass output=<key> naming the class logits"
            )
        return val[output]
    if isinstance(val, (tuple, list)):
        if output is None and len(val) == 1:
            output = 0
        if not isinstance(output, int) or not -len(val) <= output < len(val):
            raise ConversionError(
                f"the model returns {len(val)} outputs; pass output=0…{len(val) - 1} "
                "to pick the class logits"
            )
        return val[output]
    raise ConversionError(f"cannot read the model's output {val!r}; pass output=")


def _with_output(gm: fx.GraphModule, node: fx.Node) -> fx.GraphModule:
    """A GraphModule sharing ``gm``'s modules that returns ``node``."""
    graph, env = fx.Graph(), {}
    for n in gm.graph.nodes:
        if n.op == "output":
            continue
        env[n] = graph.node_copy(n, lambda a: env[a])
        if n is node:
            break
    graph.output(env[node])
    out = fx.GraphModule(gm, graph)
    out.graph.eliminate_dead_code()
    out.recompile()
    return out


def _is_data(v: object) -> bool:
    return isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() >= 2 and v.shape[0] == BATCH


def _close(a: object, b: torch.Tensor) -> bool:
    if not isinstance(a, torch.Tensor) or a.shape != b.shape:
        return False
    scale = b.abs().max().item() if b.numel() else 0.0
    return torch.allclose(a, b, rtol=1e-5, atol=1e-6 * max(scale, 1.0))


def _permutation(x: torch.Tensor, y: torch.Tensor) -> tuple[int, ...] | None:
    """The axes ``p`` with ``x.permute(p) == y`` (batch fixed), if any."""
    if x.dim() != 4 or y.dim() != 4:
        return None
    for p in itertools.permutations((1, 2, 3)):
        q = (0, *p)
        if tuple(x.shape[i] for i in q) == tuple(y.shape) and torch.equal(x.permute(q), y):
            return q
    return None


# Functions and tensor methods with a standard layer of the same meaning, by name.
def _function_layer(name: str, kw: dict) -> nn.Module | None:
    kw = {k: v for k, v in kw.items() if k not in ("input", "inplace", "_stacklevel", "dtype")}
    if kw.get("stride") in ([], ()):  # the op schema's "same as kernel"
        kw["stride"] = None
    name = name.rstrip("_")
    simple = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "silu": nn.SiLU, "mish": nn.Mish,
              "hardswish": nn.Hardswish, "relu6": nn.ReLU6, "selu": nn.SELU, "hardsigmoid": nn.Hardsigmoid}
    if name in simple:
        return simple[name]()
    if name == "gelu":
        return nn.GELU(approximate=kw.get("approximate", "none"))
    if name == "leaky_relu":
        return nn.LeakyReLU(kw.get("negative_slope", 0.01))
    if name == "elu":
        return nn.ELU(kw.get("alpha", 1.0))
    if name == "softplus":
        return nn.Softplus(kw.get("beta", 1.0), kw.get("threshold", 20.0))
    if name == "max_pool2d" and not kw.get("return_indices"):
        kw.pop("return_indices", None)
        return nn.MaxPool2d(**kw)
    if name == "avg_pool2d":
        return nn.AvgPool2d(**kw)
    if name == "adaptive_avg_pool2d":
        return nn.AdaptiveAvgPool2d(kw["output_size"])
    if name == "pad" and len(kw.get("pad", ())) == 4:
        pad, mode = tuple(kw["pad"]), kw.get("mode", "constant")
        if mode == "constant":
            return nn.ConstantPad2d(pad, kw.get("value") or 0.0)
        return {"reflect": nn.ReflectionPad2d, "replicate": nn.ReplicationPad2d}.get(mode, lambda p: None)(pad)
    return None


def _plain_layers(m: nn.Module) -> list[nn.Module]:
    """A module as standard layers: Sequentials expanded, onnx2torch's static pad made plain."""
    if isinstance(m, nn.Sequential):
        return [leaf for c in m for leaf in _plain_layers(c)]
    if type(m).__name__ == "OnnxPadStatic" and m.mode == "constant" and len(m.pads) == 4:
        return [nn.ConstantPad2d(tuple(int(p) for p in m.pads), float(m.constant_value))]
    return [m]


class _Importer:
    def __init__(self, gm: fx.GraphModule, values: dict[fx.Node, object]) -> None:
        self.gm, self.values = gm, values

    def data_input(self, n: fx.Node, data: set[fx.Node]) -> fx.Node:
        inputs = [a for a in n.all_input_nodes if a in data]
        if len(inputs) != 1:
            raise ConversionError(
                f"{_describe(n)} combines {len(inputs)} computed tensors; the fx importer follows one "
                "chain from the image to the logits (no branches such as residual additions): "
                "pass nn.Sequential(features, nn.Flatten(), classifier) instead"
            )
        return inputs[0]

    def call(self, n: fx.Node, x_node: fx.Node, x: torch.Tensor) -> object:
        """Re-run node ``n`` with its data input replaced by ``x`` (constants as recorded)."""
        def sub(a):
            return x if a is x_node else self.values[a]

        args, kwargs = fx.node.map_arg(n.args, sub), fx.node.map_arg(n.kwargs, sub)
        if n.op == "call_module":
            return self.gm.get_submodule(n.target)(*args, **kwargs)
        if n.op == "call_function":
            return n.target(*args, **kwargs)
        return getattr(args[0], n.target)(*args[1:], **kwargs)

    def only_input(self, n: fx.Node, x_node: fx.Node) -> bool:
        return n.all_input_nodes == [x_node] and len(n.args) == 1 and not n.kwargs

    def layers(self, n: fx.Node, x_node: fx.Node) -> list[nn.Module]:
        """Standard layers equal to node ``n`` (checked on the recorded values)."""
        x, y = self.values[x_node], self.values[n]
        if x.shape == y.shape and torch.equal(x, y):
            return []  # dropout in eval, contiguous, identity, …
        layers = None
        if n.op == "call_module" and self.only_input(n, x_node):
            layers = _plain_layers(self.gm.get_submodule(n.target))
        else:
            layer = self.function_layer(n, x_node)
            layers = [layer] if layer is not None else None
        if layers is not None:
            with torch.no_grad():
                out = nn.Sequential(*layers).eval()(x.clone())
            if _close(out, y):
                return layers
        raise ConversionError(
            f"{_describe(n)} in the convolutional part has no standard layer fcn-cam can rebuild "
            "(conv, pool, pad, batch-norm or an activation); make it an nn.Module layer, or pass "
            "nn.Sequential(features, nn.Flatten(), classifier)"
        )

    def function_layer(self, n: fx.Node, x_node: fx.Node) -> nn.Module | None:
        """The standard layer of a function/method node (``F.max_pool2d(x, 2)`` → ``MaxPool2d(2)``)."""
        if n.op not in ("call_function", "call_method"):
            return None
        name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", "")
        if len(n.args) == 1 and not n.kwargs:
            kw: dict | None = {}
        else:
            try:
                pair = n.normalized_arguments(self.gm, normalize_to_only_use_kwargs=True)
            except Exception:  # noqa: BLE001 - not every callable has a schema
                pair = None
            kw = dict(pair.kwargs) if pair is not None else None
            if kw is None or kw.get("input") is not x_node or any(
                isinstance(v, fx.Node) for k, v in kw.items() if k != "input"
            ):
                return None
        return _function_layer(name, kw)

    @torch.no_grad()
    def head_layer(self, n: fx.Node, x_node: fx.Node, last: bool) -> nn.Module | None:
        """Node ``n`` acting on ``[B, N]`` vectors as a layer surgery understands."""
        x, y = self.values[x_node], self.values[n]
        if not (isinstance(y, torch.Tensor) and y.dim() == 2):
            raise ConversionError(
                f"{_describe(n)} in the head gives {tuple(getattr(y, 'shape', ()))}, not [B, N]"
            )
        if x.shape == y.shape and torch.equal(x, y):
            return None  # dropout in eval, identity
        own = n.op == "call_module" and self.only_input(n, x_node)
        module = self.gm.get_submodule(n.target) if own else None
        if isinstance(module, (nn.Linear, nn.BatchNorm1d)):
            return module
        if last and _close(x.softmax(1), y):
            return nn.Softmax(1)
        if last and _close(x.log_softmax(1), y):
            return nn.LogSoftmax(1)
        fn = (lambda v: self.call(n, x_node, v))  # noqa: E731
        n_in = x.shape[1]
        g = torch.Generator().manual_seed(1)
        r = torch.randn(3, n_in, generator=g).to(x.device, x.dtype) * 3
        zero = torch.zeros(1, n_in, dtype=x.dtype, device=x.device)
        c = fn(zero)
        if y.shape == x.shape:
            a = fn(torch.ones_like(zero)) - c
            if _close(fn(r), r * a + c) and _close(y, x * a + c):  # per-feature affine: x·a + c
                return ChannelAffine(a[0].clone(), c[0].clone())
            layer = module if module is not None else self.function_layer(n, x_node)
            if layer is not None and channelwise(layer, n_in, x) and _close(layer(x.clone()), y):
                return layer  # an activation; surgery keeps it
        # affine across features: x Wᵀ + b, W read off with unit vectors, in chunks
        cols = []
        for i in range(0, n_in, 512):
            k = min(512, n_in - i)
            eye = torch.zeros(k, n_in, dtype=x.dtype, device=x.device)
            eye[torch.arange(k), i + torch.arange(k)] = 1
            cols.append(fn(eye) - c)
        w = torch.cat(cols).T
        if _close(fn(r), r @ w.T + c) and _close(y, x @ w.T + c):
            lin = nn.Linear(n_in, w.shape[0], device=x.device, dtype=x.dtype)
            lin.weight.copy_(w)
            lin.bias.copy_(c[0])
            return lin
        raise ConversionError(
            f"{_describe(n)} in the head is neither affine (Linear, MatMul, Mul/Add with constants) "
            "nor a known activation; make it an nn.Module acting on the channel axis"
        )


def to_layout(
    model: nn.Module,
    input_size: tuple[int, int],
    *,
    output: int | str | None = None,
    channels_last: bool = False,
) -> Layout:
    """Trace ``model`` and read it as a :class:`Layout`: body layers, pool, head layers.

    The layout's ``original`` is the traced model restricted to the chosen output (NCHW
    input), its ``logits`` the same up to the input of a final softmax.

    Args:
        model: an ``nn.Module`` torch.fx can trace (or a ``GraphModule``, e.g. from onnx2torch).
        input_size: (H, W) of the probe input, the model's native size.
        output: which output holds the class logits when ``forward`` returns several.
        channels_last: the model takes ``[B, H, W, 3]`` images and permutes them to NCHW
            first (Keras/TF exports); that permute is absorbed.

    Raises:
        ConversionError: naming the node where the rewrite stopped and why.
    """
    gm = trace(model)
    gm = _with_output(gm, _select_output(gm, output))
    p = next((q for q in gm.parameters()), None)
    if p is None:
        p = next((b for b in gm.buffers()), torch.zeros(()))
    shape = (BATCH, *input_size, 3) if channels_last else (BATCH, 3, *input_size)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(p.device, p.dtype)
    rec = _Recorder(gm)
    try:
        with torch.no_grad(), eval_mode(gm):
            rec.run(x)
    except Exception as e:  # noqa: BLE001
        raise ConversionError(
            f"{type(model).__name__} fails on a {'×'.join(map(str, shape))} probe "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); pass the model's native input_size"
        ) from None
    values = rec.values
    imp = _Importer(gm, values)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    data = {placeholders[0]}
    for n in gm.graph.nodes:
        if n.op not in ("placeholder", "get_attr", "output") and _is_data(values.get(n)) and any(
            a in data for a in n.all_input_nodes
        ):
            data.add(n)
    chain = [n for n in gm.graph.nodes if n in data and n.op != "placeholder"]
    prev = placeholders[0]
    inputs = {}
    for n in chain:
        inputs[n] = imp.data_input(n, data)
        if inputs[n] is not prev:
            raise ConversionError(
                f"{_describe(n)} uses `{inputs[n].name}`, not the previous step `{prev.name}`: the "
                "fx importer follows one chain (no branches); pass "
                "nn.Sequential(features, nn.Flatten(), classifier)"
            )
        prev = n
    start = 0
    if channels_last:
        if not chain or _permutation(values[inputs[chain[0]]], values[chain[0]]) != (0, 3, 1, 2):
            raise ConversionError("channels_last: the model does not begin by permuting NHWC to NCHW")
        start = 1
    flat = None
    for i in range(start, len(chain)):
        xin, y = values[inputs[chain[i]]], values[chain[i]]
        if xin.dim() == 4 and y.dim() == 2:
            if _close(y, xin.reshape(BATCH, -1)):
                flat, gap = i, False
            elif _close(y, xin.mean(dim=(2, 3))):
                flat, gap = i, True
            else:
                raise ConversionError(
                    f"{_describe(chain[i])} turns the {tuple(xin.shape[1:])} map into a vector by "
                    "something other than a flatten or a spatial mean"
                )
            break
    if flat is None:
        raise ConversionError(
            "found no point where the [B, C, H, W] feature map becomes a [B, N] vector (torch.flatten, "
            ".view, .reshape, a spatial mean) on the path to the output; if forward returns several "
            "outputs pass output=, else pass nn.Sequential(features, nn.Flatten(), classifier)"
        )
    body_end, order, permute_node = flat, None, None
    # a permute right before the flatten (no-ops such as .contiguous() in between) sets the order
    j = flat - 1
    while j >= start and values[chain[j]].shape == values[inputs[chain[j]]].shape and torch.equal(
        values[chain[j]], values[inputs[chain[j]]]
    ):
        j -= 1
    if j >= start:
        perm = _permutation(values[inputs[chain[j]]], values[chain[j]])
        if perm is not None and not gap:
            order = permute_order(perm)
            body_end, permute_node = j, chain[j].name
    body: list[tuple[str, nn.Module]] = []
    for n in chain[start:body_end]:
        if _permutation(values[inputs[n]], values[n]) not in (None, (0, 1, 2, 3)):
            raise ConversionError(
                f"{_describe(n)} permutes the feature map inside the convolutional part; only a "
                "permute right before the flatten (the flatten order) or at the input (channels_last) is read"
            )
        for k, layer in enumerate(imp.layers(n, inputs[n])):
            body.append((f"{n.name}__{k}" if k else n.name, layer))
    for name, layer in body:
        if not isinstance(layer, SPATIAL) and any(isinstance(m, SPATIAL) for m in layer.modules()):
            raise ConversionError(f"layer `{name}` hides convolutions inside {type(layer).__name__}")
    head: list[tuple[str, nn.Module]] = []
    for i in range(flat + 1, len(chain)):
        layer = imp.head_layer(chain[i], inputs[chain[i]], last=i == len(chain) - 1)
        if layer is not None:
            head.append((chain[i].name, layer))
    pool = None
    if gap:
        pool = nn.AdaptiveAvgPool2d(1)
    elif body and isinstance(body[-1][1], (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        pool = body.pop()[1]  # e.g. VGG's avgpool: bypassed by FC surgery (identity at input_size)
    layers = leaves([layer for _, layer in head])
    outputs = _ChannelsLast(gm) if channels_last else gm
    logits = None
    if layers and isinstance(layers[-1], SOFTMAX):
        logits = _with_output(gm, inputs[chain[-1]])
        logits = _ChannelsLast(logits) if channels_last else logits
    return Layout(
        nn.Sequential(OrderedDict(body)), pool, layers, order, original=outputs, logits=logits,
        permute_node=permute_node, arch=type(outputs).__name__,
    )


__all__ = ["to_layout", "trace"]
