"""ONNX importer: Keras-pattern and torch-exported graphs, checked against onnxruntime."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import NATIVE, small_vgg
from typer.testing import CliRunner

import fcn_cam
from fcn_cam import ConversionError
from fcn_cam.cli import app

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
import keras_style_vgg  # noqa: E402

from fcn_cam.importers.onnx import convert_onnx  # noqa: E402


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "keras_vgg.onnx"
    onnx.save(keras_style_vgg.build(), str(path))
    return path


def run_ort(path: Path, x: torch.Tensor, output: str | None = None, nhwc: bool = True) -> np.ndarray:
    proto = onnx.load(str(path))
    if output is not None:
        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(output))
    s = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    a = (x.permute(0, 2, 3, 1) if nhwc else x).numpy()
    return s.run([output or proto.graph.output[0].name], {s.get_inputs()[0].name: a})[0]


def test_keras_pattern_matches_onnxruntime(keras_file):
    fcn = convert_onnx(keras_file, mean=(0, 0, 0), std=(1, 1, 1))
    info = fcn.info
    assert info["flatten_order"] == "hwc" and info["dropped"] == ["Softmax"]
    assert info["source"]["channels_last"] and info["source"]["checked_on"] == "logits"
    assert info["exactness"]["rel_diff"] <= 1e-4 and info["input_size"] == [32, 32]
    # Mul/Add batch-norm and MatMul/Add are folded: the head is convs and a ReLU only
    assert info["head_layers"] == ["Conv2d", "ReLU", "Conv2d"]
    # an independent probe: NCHW images into the FCN, NHWC into onnxruntime
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    ref = run_ort(keras_file, x, output="logits")
    with torch.no_grad():
        got = fcn(x).mean((-2, -1)).numpy()
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    probs = run_ort(keras_file, x)
    np.testing.assert_allclose(torch.from_numpy(got).softmax(1).numpy(), probs, rtol=1e-4, atol=1e-6)


def test_keras_pattern_geometry_with_asymmetric_pad(keras_file):
    """TF "same" padding on a stride-2 conv pads 0 before, 1 after: the FCN's map size and cell
    centres come from an explicit ConstantPad2d layer."""
    fcn = convert_onnx(keras_file)
    assert isinstance(fcn.features[0], torch.nn.ConstantPad2d) and fcn.features[0].padding == (0, 1, 0, 1)
    for h, w in ((32, 32), (64, 48), (57, 41)):
        with torch.no_grad():
            assert tuple(fcn(torch.zeros(1, 3, h, w)).shape[-2:]) == fcn.map_size(h, w)
    g = fcn.geometry
    # conv3/s2 with no top pad: centre 1; conv3 pad 1: +0; pool 2/s2: +0.5·2 → offset 2, stride 4,
    # then the 8×8 head conv: + 3.5·4 = 16
    assert (g.y.stride, g.y.offset) == (4, 16.0)


def test_keep_softmax_checks_probabilities(keras_file):
    fcn = convert_onnx(keras_file, keep_softmax=True)
    assert fcn.info["source"]["checked_on"] == "probs" and fcn.info["exactness"]["rel_diff"] <= 1e-4


def test_free_input_size_needs_input_size(tmp_path):
    path = tmp_path / "free.onnx"
    onnx.save(keras_style_vgg.build(free_size=True), str(path))
    with pytest.raises(ConversionError, match=r"free height/width .* pass input_size \(--input-size\)"):
        convert_onnx(path)
    fcn = convert_onnx(path, 32)
    assert fcn.info["exactness"]["rel_diff"] <= 1e-4


def test_torch_export_nchw(tmp_path):
    model = small_vgg()
    path = tmp_path / "small.onnx"
    buf = io.BytesIO()
    torch.onnx.export(model, torch.randn(1, 3, NATIVE, NATIVE), buf, dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    path.write_bytes(buf.getvalue())
    fcn = convert_onnx(path, class_names=[f"c{i}" for i in range(5)])
    assert not fcn.info["source"]["channels_last"] and fcn.info["flatten_order"] == "chw"
    assert fcn.info["exactness"]["rel_diff"] <= 1e-4
    x = torch.randn(2, 3, NATIVE, NATIVE)
    with torch.no_grad():
        ref = model(x)
        assert (fcn(x).mean((-2, -1)) - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_cli_convert_onnx(keras_file, tmp_path):
    out = tmp_path / "k.pt"
    r = CliRunner().invoke(app, ["convert", str(keras_file), "-o", str(out), "--scale-01"])
    assert r.exit_code == 0, r.output
    assert "flatten order hwc" in r.output and "dropped Softmax" in r.output
    fcn = fcn_cam.load(out)
    assert fcn.info["mean"] == [0, 0, 0] and fcn.info["flatten_order"] == "hwc"
    args = ["convert", str(keras_file), "-o", str(tmp_path / "x.pt"), "--flatten-order", "chw"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "flattens in order 'hwc', not 'chw'" in r.output
    assert not (tmp_path / "x.pt").exists()
    # --scale-01, --mean, --std, --input-size and --classes apply to every model (issue 18); the
    # graph's own options do not
    r = CliRunner().invoke(app, ["convert", "vgg11", "-o", str(tmp_path / "y.pt"), "--flatten-order", "hwc"])
    assert r.exit_code == 2 and "apply to ONNX files" in r.output
