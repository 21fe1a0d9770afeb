"""fcn_cam.export: the forward-only CAM graph against explain's maps and fcn_cam.maps, and the
written files (onnxruntime, torch.export) against the graph, at sizes other than the native one."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import NATIVE, randomize_batchnorm, small_vgg
from PIL import Image
from torch import nn

import fcn_cam
import fcn_cam.zoo
from fcn_cam.export import (
    CAMGraph,
    ExportError,
    compare,
    export,
    feature_padding,
    leading_padding,
    read_metadata,
)
from fcn_cam.geometry import feature_cover_padding, map_size
from fcn_cam.images import to_input
from fcn_cam.maps import cell_maps_of, forward

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(448, 448), (480, 672)]
TOL = 1e-4


def head_with(*layers: nn.Module, hidden: int = 64, seed: int = 3) -> nn.Sequential:
    """small_vgg with the head ``Linear → layers… → Linear``; BatchNorm1d gets folded."""
    model = small_vgg()
    torch.manual_seed(seed)
    model.classifier = nn.Sequential(nn.Linear(32 * 4 * 4, hidden), *layers, nn.Linear(hidden, 5))
    return randomize_batchnorm(model, seed=seed).eval()


def prelu_head() -> nn.Sequential:
    model = head_with(nn.BatchNorm1d(64), nn.PReLU(64))
    with torch.no_grad():
        model.classifier[2].weight.uniform_(-0.5, 0.5)  # per-channel slopes, some negative
    return model


def smooth_head() -> nn.Sequential:
    """GELU, Tanh, SiLU between three hidden layers: first-order cell maps."""
    model = small_vgg()
    model.classifier = nn.Sequential(
        nn.Linear(32 * 4 * 4, 48), nn.GELU(), nn.Linear(48, 40), nn.Tanh(), nn.Linear(40, 32),
        nn.SiLU(), nn.Linear(32, 5),
    )
    return model.eval()


def ending_in_a_gate() -> nn.Sequential:
    model = head_with(nn.LeakyReLU(0.1))
    model.classifier.append(nn.LeakyReLU(0.2))
    return model


def small_gap() -> nn.Sequential:
    features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    return nn.Sequential(OrderedDict(features=features, pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
                                     fc=nn.Linear(16, 5))).eval()


def _convert(model: nn.Module, **kw) -> fcn_cam.FCN:
    return fcn_cam.convert(model, NATIVE, class_names=[f"c{i}" for i in range(5)], **kw)


MODELS = {
    "vgg-like": lambda: _convert(small_vgg()),
    "prelu": lambda: _convert(prelu_head()),
    "leaky": lambda: _convert(head_with(nn.LeakyReLU(0.1), nn.Dropout())),
    "smooth": lambda: _convert(smooth_head()),
    "gate-last": lambda: _convert(ending_in_a_gate()),
    "gap": lambda: _convert(small_gap()),
    "os8": lambda: _convert(small_vgg(), output_stride=8),
    "demo-fc": lambda: fcn_cam.zoo.load_arch("demo-fc"),
    "demo-gap": lambda: fcn_cam.zoo.load_arch("demo-gap"),
}
_cache: dict[str, fcn_cam.FCN] = {}


def model(name: str) -> fcn_cam.FCN:
    if name not in _cache:
        _cache[name] = MODELS[name]()
    return _cache[name]


def photo(fcn: fcn_cam.FCN, size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A smooth random picture whose network input at scale ``size / native`` is ``size`` exactly."""
    g = np.random.default_rng(seed)
    small = g.integers(0, 256, (size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size[1], size[0]), Image.Resampling.BILINEAR)


def explained(fcn, image: Image.Image, size, target):
    """explain's raw maps for one scale: (cell map, score map of the class, class, scores)."""
    scale = min(size) / min(fcn.input_size)
    cells = fcn_cam.explain(fcn, image, scale=scale, maps="cells", target=target)
    scores = fcn_cam.explain(fcn, image, scale=scale, maps="scores", target=target)
    t = cells.targets[0]
    return t.cams[0], scores.targets[0].cams[0], t.index, cells


def graph_outputs(graph: CAMGraph, x: torch.Tensor, target: int) -> list[np.ndarray]:
    with torch.no_grad():
        return [o.numpy() for o in graph(x, torch.tensor([target]))]


def assert_matches_explain(fcn, got: list[np.ndarray], x: torch.Tensor, image, size, target, graph):
    """``got`` (the graph's or the file's outputs for ``x``) against explain's raw maps and
    fcn_cam.maps' score and cell maps, gates at a kink allowed (CAMGraph.kink_allowance)."""
    cam, score_map, index, exp = explained(fcn, image, size, None if target < 0 else target)
    assert int(got[2][0]) == index
    allow = graph.kink_allowance(x, torch.tensor([index]))["allowance"].numpy()
    c = compare(got, [None, None, got[2], cam[None]], allow)
    assert c["cells"] <= TOL, c
    # the score map of the class, and every class's maps against fcn_cam.maps
    np.testing.assert_allclose(got[0][0, index], score_map, rtol=0, atol=TOL * np.abs(score_map).max())
    pad = feature_cover_padding(fcn.features, fcn.head, *size)
    fw = forward(fcn, x, cells=True, pad=pad)
    want_scores = fw.scores.detach().numpy()
    assert compare(got, [want_scores, None, got[2], cam[None]], allow)["scores"] <= TOL
    cells = cell_maps_of(fw, torch.tensor([[index]]))[:, 0].numpy()
    assert compare(got, [None, None, got[2], cells], allow)["cells"] <= TOL
    assert got[1][0, index] == pytest.approx(exp.targets[0].score, rel=TOL, abs=TOL)
    top = [i for i, _, _ in exp.ranking]
    assert list(np.argsort(-got[1][0])[:len(top)]) == top


def network_input(fcn, image, size) -> torch.Tensor:
    x = to_input(image, min(size), fcn.info["mean"], fcn.info["std"])[None]
    assert tuple(x.shape[-2:]) == tuple(size)
    return x


@pytest.mark.parametrize("name", ["vgg-like", "os8", "gap", "demo-fc"])
def test_padding_in_the_graph_is_feature_cover_padding(name):
    fcn = model(name)
    for n in [*range(20, 200, 9), 448, 480, 672]:
        f = map_size(fcn.features, n, n)[0]
        top, bottom, left, right = feature_cover_padding(fcn.features, fcn.head, n, n)
        assert leading_padding(fcn) == (top, left)
        assert feature_padding(fcn, n, f, 0) == bottom and feature_padding(fcn, n, f, 1) == right, n


@pytest.mark.parametrize("target", [-1, 2])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", list(MODELS))
def test_module_matches_explain(name, size, target):
    fcn = model(name)
    graph = CAMGraph(fcn).eval()
    image = photo(fcn, size, seed=len(name))
    x = network_input(fcn, image, size)
    assert_matches_explain(fcn, graph_outputs(graph, x, target), x, image, size, target, graph)


def test_module_is_exact_for_piecewise_linear_heads_away_from_kinks():
    """ReLU heads: no allowance needed where no gate sits at a kink (the cells equal maps.py's)."""
    fcn = model("vgg-like")
    graph = CAMGraph(fcn).eval()
    x = torch.randn(2, 3, 100, 130, generator=torch.Generator().manual_seed(1))
    got = graph(x, torch.tensor([-1, 3]))
    fw = forward(fcn, x, cells=True, pad=feature_cover_padding(fcn.features, fcn.head, 100, 130))
    want = cell_maps_of(fw, got[2][:, None])[:, 0]
    allow = graph.kink_allowance(x, got[2])
    if allow["units"] == 0:
        torch.testing.assert_close(got[3], want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    torch.testing.assert_close(got[0], fw.scores.detach(), rtol=1e-4, atol=1e-5)
    assert got[2][1] == 3


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    return lambda name: _exported(root, name)


_files: dict[str, tuple[Path, dict]] = {}


def _exported(root: Path, name: str) -> tuple[Path, dict]:
    if name not in _files:
        path = root / f"{name}.onnx"
        _files[name] = (path, export(model(name), path, check_sizes=SIZES))
    return _files[name]


ONNX_MODELS = ["vgg-like", "prelu", "leaky", "smooth", "gate-last", "gap", "os8", "demo-fc", "demo-gap"]


@pytest.mark.parametrize("name", ONNX_MODELS)
def test_onnx_file_matches_explain(onnx_files, name):
    import onnxruntime

    fcn = model(name)
    path, report = onnx_files(name)
    assert [c["size"] for c in report["check"]] == [list(s) for s in SIZES]
    assert all(c["target_equal"] and c["cells"] <= TOL and c["scores"] <= TOL for c in report["check"])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph = CAMGraph(fcn).eval()
    for size in SIZES:
        image = photo(fcn, size, seed=7)
        x = network_input(fcn, image, size)
        for target in (-1, 1):
            got = session.run(None, {"image": x.numpy(), "target": np.array([target])})
            assert_matches_explain(fcn, got, x, image, size, target, graph)


def test_onnx_batch_mixes_given_and_top_targets(onnx_files):
    import onnxruntime

    fcn = model("vgg-like")
    path, _ = onnx_files("vgg-like")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 200, 264, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([-1, 4, 0])
    got = session.run(None, {"image": x.numpy(), "target": t.numpy()})
    graph = CAMGraph(fcn).eval()
    with torch.no_grad():
        want = [o.numpy() for o in graph(x, t)]
    c = compare(got, want, graph.kink_allowance(x, torch.as_tensor(want[2]))["allowance"].numpy())
    assert c["target_equal"] and c["scores"] <= TOL and c["cells"] <= TOL, c
    assert list(got[2][1:]) == [4, 0] and got[2][0] == want[1][0].argmax()


def test_metadata_places_the_cells(onnx_files):
    fcn = model("demo-fc")
    path, report = onnx_files("demo-fc")
    meta = read_metadata(path)
    assert meta == report["metadata"]
    assert meta["class_names"] == fcn.class_names and meta["mean"] == list(fcn.info["mean"])
    assert meta["input_size"] == list(fcn.input_size) and meta["rank"] == "max" and meta["pad"] == "features"
    import onnx

    m = onnx.load(str(path))
    assert meta["opset"] == {o.domain: o.version for o in m.opset_import}[""]
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input]
    assert all(isinstance(d, str) for d in dims[0][:1] + dims[0][2:]) and dims[0][1] == 3  # dynamic B, H, W
    # the geometry is explain's: cells at Geometry.of(features) shifted by the leading padding
    top, left = leading_padding(fcn)
    g = fcn_cam.Geometry.of(fcn.features).shifted(top * fcn.geometry.y.stride, left * fcn.geometry.x.stride)
    assert meta["cell_geometry"] == g.to_dict()


def test_torch_export_file(tmp_path):
    fcn = model("prelu")
    path = tmp_path / "m.pt2"
    report = export(fcn, path, format="torch-export", check_sizes=SIZES)
    assert path.is_file() and report["bytes"] == path.stat().st_size
    assert read_metadata(path)["class_names"] == fcn.class_names
    loaded = torch.export.load(str(path)).module()
    graph = CAMGraph(fcn).eval()
    for size in SIZES:
        image = photo(fcn, size, seed=3)
        x = network_input(fcn, image, size)
        for target in (-1, 0):
            with torch.no_grad():
                got = [o.numpy() for o in loaded(x, torch.tensor([target]))]
            assert_matches_explain(fcn, got, x, image, size, target, graph)


def test_a_disagreeing_file_is_not_written(tmp_path, monkeypatch):
    import fcn_cam.export as ex

    real = ex._onnx_runner

    def skewed(path):
        run = real(path)
        return lambda x, t: [o * 1.01 if o.dtype == np.float32 else o for o in run(x, t)]

    monkeypatch.setattr(ex, "_onnx_runner", skewed)
    with pytest.raises(ExportError, match="not written: the onnx graph disagrees"):
        export(model("vgg-like"), tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary


def test_refusals(tmp_path):
    fcn = model("vgg-like")
    (tmp_path / "x.onnx").write_bytes(b"old")
    with pytest.raises(ExportError, match="already exists"):
        export(fcn, tmp_path / "x.onnx")
    assert (tmp_path / "x.onnx").read_bytes() == b"old"
    with pytest.raises(ExportError, match="format must be one of"):
        export(fcn, tmp_path / "y.onnx", format="tflite")
    with pytest.raises(ExportError, match="pad must be one of"):
        CAMGraph(fcn, pad="cover")
    with pytest.raises(ValueError, match="rank must be one of"):
        CAMGraph(fcn, rank="median")
    with pytest.raises(ExportError, match=r"head layer 1 \(Softsign\) has no forward-only derivative"):
        CAMGraph(_convert(head_with(nn.Softsign())))
    softmax = small_vgg()
    softmax.classifier.append(nn.Softmax(dim=1))
    with pytest.raises(ExportError, match="ChannelSoftmax"):
        CAMGraph(_convert(softmax, keep_softmax=True))


def test_serve_onnx_example_runs_without_torch(onnx_files, tmp_path):
    """examples/serve_onnx.py: onnxruntime + numpy + PIL only, the overlay fcn-cam writes."""
    fcn = model("demo-fc")
    path, _ = onnx_files("demo-fc")
    image = photo(fcn, (150, 200), seed=11)
    image.save(tmp_path / "in.png")
    script = (
        "import runpy, sys; sys.argv = ['serve_onnx.py', *sys.argv[1:]]; "
        f"runpy.run_path({str(ROOT / 'examples' / 'serve_onnx.py')!r}, run_name='__main__')"
    )
    code = (f"import sys\ntry:\n    {script}\nexcept SystemExit as e:\n    assert not e.code, e\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\nprint('no torch')")
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"),
         "--heatmap", str(tmp_path / "heat.npy")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("no torch")
    record = json.loads(out.stdout.splitlines()[0])
    exp = fcn_cam.explain(fcn, image)  # the defaults: cell maps, scales 1 and 2, pad="features"
    assert record["class_index"] == exp.targets[0].index and record["class_name"] == exp.targets[0].name
    heat = np.load(tmp_path / "heat.npy")
    ref = exp.targets[0].heatmap
    assert np.abs(heat - ref).max() <= 1e-3 * np.abs(ref).max()
    from fcn_cam.render import overlay

    want = np.asarray(overlay(image, ref), np.int16)
    got = np.asarray(Image.open(tmp_path / "out.png"), np.int16)
    assert got.shape == want.shape and np.abs(got - want).max() <= 1


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["alexnet", "vgg16"])
def test_torchvision_models_random_weights(arch, tmp_path):
    import onnxruntime

    fcn = fcn_cam.zoo.load_arch(arch, "random")
    size = (448, 448) if arch == "vgg16" else (480, 672)
    path = tmp_path / f"{arch}.onnx"
    report = export(fcn, path, check_sizes=[size])
    assert report["check"][0]["cells"] <= TOL
    graph = CAMGraph(fcn).eval()
    image = photo(fcn, size)
    x = network_input(fcn, image, size)
    assert_matches_explain(fcn, graph_outputs(graph, x, -1), x, image, size, -1, graph)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy(), "target": np.array([7])})
    assert_matches_explain(fcn, got, x, image, size, 7, graph)


GATE_LAYERS = [nn.ReLU(), nn.ReLU6(), nn.Hardtanh(-0.5, 1.5), nn.LeakyReLU(0.1), nn.PReLU(3), nn.ELU(0.7),
               nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.Mish(), nn.Sigmoid(), nn.Tanh(),
               nn.Softplus(beta=2.0, threshold=3.0), nn.Hardswish(), nn.Hardsigmoid(), nn.Identity(),
               nn.Dropout()]


@pytest.mark.parametrize("layer", GATE_LAYERS, ids=lambda m: repr(m))
def test_gate_table_matches_the_layer_and_autograd(layer):
    """Each gate's forward is the layer's and its derivative autograd's, at the kinks too
    (torch's convention there: ReLU's derivative at 0 is 0, LeakyReLU's the slope, …)."""
    from fcn_cam.export import GATES, kinks

    assert set(map(type, GATE_LAYERS)) == set(GATES)
    layer.eval()
    if isinstance(layer, nn.PReLU):
        with torch.no_grad():
            layer.weight.copy_(torch.tensor([0.2, -0.3, 0.5]))
    fwd, deriv = GATES[type(layer)](layer)
    x = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(0)) * 4
    for i, (k, _) in enumerate(kinks(layer)):
        x = torch.where((x - k).abs() < 1e-3, x + 0.01, x)
        x[0, :, 0, i] = k  # exactly on it
    x.requires_grad_(True)
    y = layer(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    with torch.no_grad():
        torch.testing.assert_close(fwd(x), y)
        torch.testing.assert_close(deriv(x), grad, rtol=1e-5, atol=1e-6)


def test_export_command(tmp_path):
    """`fcn-cam export MODEL -o model.onnx`: written once checked, its metadata readable,
    an existing file kept."""
    from typer.testing import CliRunner

    from fcn_cam.cli import app

    model_file = fcn_cam.save(fcn_cam.convert(small_vgg(), NATIVE, class_names=[f"c{i}" for i in range(5)]),
                              tmp_path / "m.pt")
    out = tmp_path / "m.onnx"
    r = CliRunner().invoke(app, ["export", str(model_file), "-o", str(out), "--check-size", "96",
                                 "--check-size", "80x112"])
    assert r.exit_code == 0, r.output
    assert "matches the PyTorch module at 96×96, 80×112" in r.output
    assert read_metadata(out)["class_names"] == [f"c{i}" for i in range(5)]
    before = out.read_bytes()
    r = CliRunner().invoke(app, ["export", str(model_file), "-o", str(out)])
    assert r.exit_code == 2 and "already exists" in r.output and out.read_bytes() == before
