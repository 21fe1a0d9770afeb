"""Running the converted net: GEMM head, devices, precision that never backfires."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
import torchvision
from conftest import NATIVE, small_vgg
from typer.testing import CliRunner

import fcn_cam
from fcn_cam import runtime
from fcn_cam.cli import app
from fcn_cam.head import gemm_compatible, run_head_gemm
from fcn_cam.maps import score_maps

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.fixture
def cpu_flags(monkeypatch):
    """Pretend the CPU has the given flags (and a known bf16 speed)."""

    def set_flags(flags: set[str], ratio: float = 0.0025) -> None:
        monkeypatch.setattr(runtime, "cpu_name_and_flags", lambda: ("Test CPU", set(flags)))
        monkeypatch.setattr(runtime, "bf16_speed_ratio", lambda: ratio)

    return set_flags


@pytest.mark.parametrize("output_stride", [None, 16])
def test_gemm_head_equals_conv_head_on_vgg16_shapes(output_stride):
    fcn = fcn_cam.convert(torchvision.models.vgg11(weights=None).eval(), output_stride=output_stride)
    assert gemm_compatible(fcn.head)
    x = torch.randn(1, 3, 288, 320)
    with torch.inference_mode():
        f = fcn.features(x)
        got, want = run_head_gemm(fcn.head, f), fcn.head(f)
    assert got.shape == want.shape and got.shape[-1] > 1
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 5, 40])
def test_blocked_products_equal_one_product(rows, monkeypatch):
    """The first layer's forward (blocks of output channels) and backward (blocks of columns)
    give the one product's values, whatever the block and the leftover block."""
    from fcn_cam import head

    monkeypatch.setattr(head, "ROW_BLOCK", 7)
    monkeypatch.setattr(head, "COL_BLOCK", 9)
    g = torch.Generator().manual_seed(rows)
    x, w, b = torch.randn(rows, 50, generator=g), torch.randn(30, 50, generator=g), torch.randn(30, generator=g)
    torch.testing.assert_close(head.blocked_product(x, w, b), torch.nn.functional.linear(x, w, b))
    gr = torch.randn(rows, 30, generator=g)
    torch.testing.assert_close(head.blocked_product(gr, w, transpose=False), gr @ w)
    monkeypatch.setattr(head, "COL_BLOCK_ROWS", 4)  # beyond it: one product
    torch.testing.assert_close(head.blocked_product(gr, w, transpose=False), gr @ w)


def test_native_size_gemm_head_is_the_original_classifier_call():
    """At the native size the GEMM head is the original Linear arithmetic: bit-identical."""
    model = torchvision.models.vgg11(weights=None).eval()
    fcn = fcn_cam.convert(model)
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(fcn(x)[..., 0, 0], model(x))
    assert fcn.info["exactness"]["max_abs_diff"] == 0.0


def test_too_small_input_names_the_problem():
    fcn = fcn_cam.convert(small_vgg(), NATIVE)
    with pytest.raises(ValueError, match="smaller than the head's 4×4 window"):
        score_maps(fcn, torch.zeros(1, 3, 40, 40))


def test_auto_precision_follows_bf16_units(cpu_flags):
    cpu = torch.device("cpu")
    cpu_flags({"avx2", "fma"})
    assert runtime.resolve_precision("auto", cpu) == "fp32"
    cpu_flags({"avx512f", "avx512_bf16"})
    assert runtime.resolve_precision("auto", cpu) == "bf16"
    cpu_flags({"amx_tile", "amx_bf16"})
    assert runtime.resolve_precision("auto", cpu) == "bf16"
    cpu_flags(set(), ratio=0.5)  # no flags to read: the measurement decides
    assert runtime.resolve_precision("auto", cpu) == "fp32"
    cpu_flags(set(), ratio=2.0)
    assert runtime.resolve_precision("auto", cpu) == "bf16"


def test_explicit_bf16_without_units_warns_with_the_measured_slowdown(cpu_flags):
    cpu_flags({"avx2"}, ratio=0.0025)
    with pytest.warns(UserWarning, match="400× slower than fp32"):
        assert runtime.resolve_precision("bf16", torch.device("cpu")) == "bf16"
    cpu_flags({"amx_bf16"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runtime.resolve_precision("bf16", torch.device("cpu"))
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        runtime.resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="precision must be"):
        runtime.resolve_precision("int8", torch.device("cpu"))


def test_cli_prints_the_bf16_warning_as_one_line(cpu_flags, small_model_file, photos):
    cpu_flags({"avx2"}, ratio=0.01)
    args = ["explain", "-m", str(small_model_file), "--precision", "bf16", str(photos["cat"])]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "warning: this CPU has no bf16 units" in r.output and "100× slower" in r.output


def test_bf16_speed_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fresh = functools.cache(runtime.bf16_speed_ratio.__wrapped__)
    ratio = fresh()
    assert ratio > 0
    cache = tmp_path / "fcn-cam" / "bf16_speed.json"
    assert cache.exists()
    key = next(iter(__import__("json").loads(cache.read_text())))
    cache.write_text(__import__("json").dumps({key: 123.0}))
    assert functools.cache(runtime.bf16_speed_ratio.__wrapped__)() == 123.0  # read, not re-measured


def test_devices_resolve_and_refuse_clearly():
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert runtime.resolve_device("auto").type == want
    with pytest.raises(ValueError, match="unknown device"):
        runtime.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            runtime.resolve_device("cuda:0")


def test_prepare_keeps_the_original_and_runs_on_the_device(photos):
    fcn = fcn_cam.convert(small_vgg(), NATIVE)
    ready = fcn_cam.prepare(fcn, precision="fp32", device="cpu")
    assert ready is not fcn and ready.head_mode == "gemm"
    first = next(m for m in ready.features.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(m.weight.is_contiguous() for m in ready.head if isinstance(m, torch.nn.Conv2d))
    conv = fcn_cam.prepare(fcn, precision="fp32", device="cpu", head="conv")
    a = fcn_cam.explain(ready, photos["cat"], top_k=3)
    b = fcn_cam.explain(conv, photos["cat"], top_k=3)
    assert [t.index for t in a.targets] == [t.index for t in b.targets]
    torch.testing.assert_close(torch.from_numpy(a.targets[0].heatmap), torch.from_numpy(b.targets[0].heatmap),
                               rtol=1e-4, atol=1e-5)
    same = fcn_cam.prepare(fcn, precision="fp32", device="cpu", copy=False)
    assert same is fcn


@CUDA
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_matches_cpu(precision, photos):
    fcn = fcn_cam.convert(small_vgg(), NATIVE)
    ref = fcn_cam.explain(fcn, photos["cat"], top_k=1, maps="cells")
    gpu = fcn_cam.prepare(fcn, precision=precision, device="cuda")
    got = fcn_cam.explain(gpu, photos["cat"], target=ref.targets[0].index, maps="cells")
    r = torch.corrcoef(torch.stack([torch.from_numpy(ref.targets[0].heatmap).flatten(),
                                    torch.from_numpy(got.targets[0].heatmap).flatten()]))[0, 1]
    assert r > 0.98
