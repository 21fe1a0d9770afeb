"""Issue 18 through the command line: the checkpoints people have, and the mission's command
exactly as written (``fcn-cam explain --scale 2 img.jpg``) against a planted ``TORCH_HOME``."""

from __future__ import annotations

import json
import time
import warnings

import pytest
import torch
import torchvision
from conftest import NATIVE, small_vgg
from test_checkpoints import NAMES5, fine_tuned, names_file, no_network
from torch import nn
from typer.testing import CliRunner

import fcn_cam
from fcn_cam import zoo
from fcn_cam.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(r, path) -> str:
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert str(path) in r.output
    return r.output


def reproduces(path, model: nn.Module, names) -> None:
    """The saved file's logits are the Python model's (≤ 1e-4 of the largest), names carried."""
    fcn = fcn_cam.load(path)
    x = torch.randn(2, 3, *fcn.input_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = model(x), fcn.logits(x)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    assert fcn.class_names == names


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("FCN_CAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "urlopen", no_network)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notices
        yield


@pytest.mark.parametrize("n,prefix", [(5, ""), (37, "module.")])
def test_fine_tuned_alexnet_state_dict(tmp_path, n, prefix):
    model = fine_tuned("alexnet", n)
    names = NAMES5 if n == 5 else [f"breed {i}" for i in range(n)]
    ckpt = tmp_path / "ft.pth"
    torch.save({"epoch": 3, "optimizer_state_dict": {"state": {}},
                "model_state_dict": {prefix + k: v for k, v in model.state_dict().items()}}, ckpt)
    out = tmp_path / "ft.pt"
    r = run("convert", "alexnet", "--weights", ckpt, "--classes", names_file(tmp_path, names), "-o", out)
    assert r.exit_code == 0, r.output
    assert f"{n} classes" in r.output and "same top-1: True" in r.output
    reproduces(out, model, names)
    r = run("info", out)
    assert "weights_file" in r.output and "sha256" in r.output and str(ckpt) in r.output


def test_wrong_names_count_and_unknown_forms_are_one_line(tmp_path):
    model = fine_tuned("alexnet", 5)
    ckpt = tmp_path / "ft.pth"
    torch.save(model.state_dict(), ckpt)
    names = names_file(tmp_path, NAMES5[:3])
    r = run("convert", "alexnet", "--weights", ckpt, "--classes", names, "-o", tmp_path / "x.pt")
    out = one_line_error(r, names)
    assert "3 class names" in out and "5 classes" in out
    r = run("convert", "vgg11", "--weights", ckpt, "-o", tmp_path / "y.pt")  # another architecture's tensors
    assert r.exit_code == 2 and str(ckpt) in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "y.pt").exists()


def test_whole_pickled_model_needs_the_opt_in(tmp_path):
    model = small_vgg()
    full = tmp_path / "full.pth"
    torch.save(model, full)
    out = one_line_error(run("convert", full, "--input-size", NATIVE, "-o", tmp_path / "f.pt"), full)
    assert "unpickling runs code" in out and "--trust-pickle" in out
    r = run("convert", full, "--input-size", NATIVE, "--trust-pickle", "--classes",
            names_file(tmp_path, [f"c{i}" for i in range(5)]), "-o", tmp_path / "f.pt")
    assert r.exit_code == 0, r.output
    reproduces(tmp_path / "f.pt", model, [f"c{i}" for i in range(5)])


def test_torchscript_chain_converts(tmp_path):
    model = small_vgg(bn=False)
    ts = tmp_path / "model.torchscript.pt"
    torch.jit.save(torch.jit.script(model), ts)
    r = run("convert", ts, "--input-size", NATIVE, "-o", tmp_path / "t.pt")
    assert r.exit_code == 0, r.output
    reproduces(tmp_path / "t.pt", model, None)


def test_explain_an_architecture_with_a_checkpoint(tmp_path, photos):
    model = fine_tuned("alexnet", 5)
    ckpt = tmp_path / "ft.ckpt"  # Lightning's layout
    weights = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": weights, "global_step": 10}, ckpt)
    args = ["explain", "-m", "alexnet", "--weights", ckpt, "--classes", names_file(tmp_path, NAMES5),
            "--scale", "1", "--no-save", photos["cat"]]
    r = run(*args)
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["class_name"] in NAMES5 and "converted alexnet" in r.stderr
    r = run(*args)  # from the cache: nothing converted, same answer
    assert r.exit_code == 0 and "converted" not in r.stderr and json.loads(r.stdout) == rec


def test_offline_first_run_says_what_to_do(photos, tmp_path):
    r = run("explain", "--scale", "2", photos["cat"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    # torch.hub announces the download it tries; then our one line says what to do
    (line,) = [x for x in r.output.splitlines() if not x.startswith("Downloading: ")]
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth") in line
    assert "--weights" in line


@pytest.mark.slow
def test_the_missions_command_as_written(photos, tmp_path, monkeypatch):
    """``fcn-cam explain --scale 2 img.jpg``: vgg16 with torchvision's weights (planted where
    torchvision keeps its download), converted on the first run, from the cache on the second."""
    url = torchvision.models.VGG16_Weights.DEFAULT.url
    planted = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    planted.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.vgg16().state_dict(), planted)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FCN_CAM_OUTPUT")
    t0 = time.perf_counter()
    first = run("explain", "--scale", "2", photos["cat"])
    t1 = time.perf_counter()
    assert first.exit_code == 0, first.output
    assert "converted vgg16" in first.stderr and "fcn-cam-out/" in first.stderr

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(zoo, "convert", no_conversion)
    second = run("explain", "--scale", "2", photos["cat"])
    t2 = time.perf_counter()
    assert second.exit_code == 0, second.output
    assert "converted" not in second.stderr and json.loads(second.stdout) == json.loads(first.stdout)
    rec = json.loads(first.stdout)
    assert rec["class_name"] == torchvision.models.VGG16_Weights.DEFAULT.meta["categories"][rec["class_index"]]
    print(f"first run {t1 - t0:.1f} s, second run {t2 - t1:.1f} s")  # (quoted in the closing note)
