"""Checkpoints as users save them, converted by architecture name; the registry; the cache.

Every form is built with random weights and converted; the saved model must reproduce the
Python model's logits (≤ 1e-4 of the largest) and carry the class names given. Every
refusal is one line naming the file.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.error
import warnings
from collections import OrderedDict

import pytest
import torch
import torchvision
from conftest import NATIVE, small_vgg
from torch import nn
from typer.testing import CliRunner

import fcn_cam
from fcn_cam import cache, registry, zoo
from fcn_cam.importers.checkpoint import WeightsError, open_checkpoint, read_checkpoint

NAMES5 = ["daisy", "dandelion", "rose", "sunflower", "tulip"]


@pytest.fixture(autouse=True)
def quiet_jit():
    with warnings.catch_warnings():  # torch.jit's deprecation notices
        warnings.simplefilter("ignore", FutureWarning)
        yield


def fine_tuned(arch: str, n: int, seed: int = 0) -> nn.Module:
    """The tutorial recipe: torchvision's net with its last Linear replaced by ``n`` outputs."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None)
    head = "fc" if arch.startswith("resnet") else "classifier"
    if head == "fc":
        model.fc = nn.Linear(model.fc.in_features, n)
    else:
        model.classifier[6] = nn.Linear(4096, n)
    return model.eval()


@pytest.fixture(scope="module")
def alexnet5() -> nn.Module:
    return fine_tuned("alexnet", 5)


@pytest.fixture(scope="module")
def resnet5() -> nn.Module:
    """The wrapper forms are the same for every architecture: shown on the smallest file (45 MB)."""
    return fine_tuned("resnet18", 5)


def reproduces(fcn: fcn_cam.FCN, model: nn.Module, tmp_path, names: list[str] | None) -> fcn_cam.FCN:
    """Save ``fcn``, load it back, and check the loaded model against ``model``."""
    back = fcn_cam.load(fcn_cam.save(fcn, tmp_path / "converted.pt", overwrite=True))
    size = back.input_size
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = model(x), back.logits(x)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    assert back.class_names == names and back.info["num_classes"] == want.shape[1]
    return back


def names_file(tmp_path, names, json_list=False):
    p = tmp_path / ("names.json" if json_list else "names.txt")
    p.write_text(json.dumps(names) if json_list else "\n".join(names) + "\n")
    return p


def one_line(e: pytest.ExceptionInfo, path) -> str:
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


# -- the registry


def test_registry_needs_no_torch():
    code = ("import sys, fcn_cam.registry as r; "
            "print('torch' in sys.modules, r.rebuilt_by_torchvision('resnet50'), len(r.NAMES))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", str(len(registry.ENTRIES))], out.stderr


def test_registry_entries_match_what_they_build():
    """Each torchvision entry's head key is its last Linear; demos have their twins' size."""
    from fcn_cam.demo.twins import INPUT_SIZE

    assert (*registry.ARCHS, *registry.DEMOS) == registry.NAMES
    for name in registry.ARCHS:
        e = registry.entry(name)
        with torch.device("meta"):
            model = zoo.network(name, 7)
        last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
        assert last == e.head and e.kind in registry.KINDS
        assert registry.rebuilt_by_torchvision(name) == (e.family == "resnet")
    assert all(registry.entry(n).input_size == INPUT_SIZE for n in registry.DEMOS)
    assert not registry.rebuilt_by_torchvision("os.system") and not registry.rebuilt_by_torchvision(None)
    with pytest.raises(ValueError, match="unknown architecture 'vgg17'; choose one of: vgg11"):
        registry.entry("vgg17")


# -- fine-tuned state dicts


@pytest.mark.parametrize("arch, n", [("alexnet", 5), ("alexnet", 37), ("resnet18", 5)])
def test_fine_tuned_state_dict(tmp_path, arch, n):
    model = fine_tuned(arch, n)
    path = tmp_path / "fine.pth"
    torch.save(model.state_dict(), path)
    names = [f"c{i}" for i in range(n)]
    fcn = zoo.load_arch(arch, str(path), class_names=names_file(tmp_path, names))
    back = reproduces(fcn, model, tmp_path, names)
    wf = back.info["weights_file"]
    assert wf["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and wf["form"] == "state_dict"
    assert wf["bytes"] == path.stat().st_size and back.info["weights"] == str(path)


@pytest.mark.slow
def test_fine_tuned_vgg16(tmp_path):
    model = fine_tuned("vgg16", 5)
    path = tmp_path / "flowers_vgg16.pth"
    torch.save(model.state_dict(), path)
    reproduces(zoo.load_arch("vgg16", str(path), class_names=NAMES5), model, tmp_path, NAMES5)


def test_other_class_count_has_no_imagenet_names(tmp_path, resnet5):
    path = tmp_path / "r.pth"
    torch.save(resnet5.state_dict(), path)
    assert zoo.load_arch("resnet18", str(path)).class_names is None
    assert zoo.load_arch("resnet18", zoo.RANDOM).class_names[0] == "tench"


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "model.", "net.", "module._orig_mod."])
def test_wrapper_prefixes(tmp_path, resnet5, prefix):
    path = tmp_path / "wrapped.pth"
    torch.save(OrderedDict((prefix + k, v) for k, v in resnet5.state_dict().items()), path)
    ck = open_checkpoint(path)
    assert ck.prefixes == [p + "." for p in prefix.rstrip(".").split(".")] and ck.form == "state_dict"
    reproduces(zoo.load_arch("resnet18", str(path), class_names=NAMES5), resnet5, tmp_path, NAMES5)


def lightning(sd):
    return {"epoch": 4, "global_step": 1200, "pytorch-lightning_version": "2.4.0",
            "state_dict": {f"model.{k}": v for k, v in sd.items()},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]}],
            "lr_schedulers": [], "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.9)}}}


def training_loop(sd, optimizer):
    return {"epoch": 12, "model_state_dict": sd, "optimizer_state_dict": optimizer.state_dict(),
            "loss": 0.123, "metrics": {"val_acc": 0.91, "confusion": torch.eye(5)}}


@pytest.mark.parametrize("form", ["lightning", "training_loop", "net", "weights", "unusual_key"])
def test_nested_checkpoints(tmp_path, resnet5, form):
    """The state dict is found by its tensors, beside an optimizer's state (which has
    tensors of the parameters' shapes too), epochs and metrics."""
    sd = resnet5.state_dict()
    head = resnet5.fc
    opt = torch.optim.Adam(head.parameters())  # a real optimizer state, with exp_avg tensors
    head.weight.grad = torch.ones_like(head.weight)
    head.bias.grad = torch.ones_like(head.bias)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    opt.step()
    with torch.no_grad():  # keep the shared fixture's weights as they were
        head.weight.copy_(before["weight"])
        head.bias.copy_(before["bias"])
    assert opt.state_dict()["state"]
    obj = {"lightning": lambda: lightning(sd), "training_loop": lambda: training_loop(sd, opt),
           "net": lambda: {"net": sd, "epoch": 3}, "weights": lambda: {"weights": sd, "step": 10},
           "unusual_key": lambda: {"ema_free_params": sd, "epoch": 1, "opt": opt.state_dict()}}[form]()
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    reproduces(zoo.load_arch("resnet18", str(path), class_names=NAMES5), resnet5, tmp_path, NAMES5)


def test_ambiguous_checkpoint_lists_what_it_found(tmp_path):
    sd = small_vgg().state_dict()
    path = tmp_path / "two.pth"
    torch.save({"model": sd, "ema": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, path)
    with pytest.raises(WeightsError) as e:
        zoo.load_arch("alexnet", str(path))
    msg = one_line(e, path)
    assert "several candidate weights" in msg and "['model']" in msg and "['ema']" in msg


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "nothing.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(WeightsError) as e:
        read_checkpoint(path)
    assert "no state dict" in one_line(e, path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError) as e:
        read_checkpoint(path)
    assert "not a PyTorch checkpoint" in one_line(e, path)


def test_state_dict_of_another_architecture(tmp_path, alexnet5):
    path = tmp_path / "a.pth"
    torch.save(alexnet5.state_dict(), path)
    with pytest.raises(WeightsError) as e:
        zoo.load_arch("vgg11", str(path))
    assert "does not fit vgg11" in one_line(e, path)


# -- a replaced classifier


def test_replaced_classifier_stack_gives_the_python_that_converts_it(tmp_path, monkeypatch, alexnet5):
    model = fine_tuned("alexnet", 5)
    model.classifier = nn.Sequential(nn.Linear(9216, 256), nn.ReLU(), nn.Dropout(), nn.Linear(256, 5))
    model.eval()
    path = tmp_path / "stack.pth"
    wrapped = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 2, "model_state_dict": wrapped}, path)
    with pytest.raises(WeightsError) as e:
        zoo.load_arch("alexnet", str(path))
    first, *recipe = str(e.value).splitlines()
    assert str(path) in first and "Linear 9216→256 (classifier.0), Linear 256→5 (classifier.3)" in first
    assert len(recipe) == 3
    monkeypatch.chdir(tmp_path)
    exec("\n".join(line.strip() for line in recipe), {"torch": torch, "torchvision": torchvision, "nn": nn,
                                                    "fcn_cam": fcn_cam})
    back = fcn_cam.load(tmp_path / "out.pt")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        want = model(x)
        assert (back.logits(x) - want).abs().max() <= 1e-4 * want.abs().max()


# -- class names, input size, normalisation


def test_class_names_file_of_the_wrong_length(tmp_path, resnet5, monkeypatch):
    path = tmp_path / "r.pth"
    torch.save(resnet5.state_dict(), path)
    names = names_file(tmp_path, NAMES5[:4])
    with monkeypatch.context() as m:
        m.setattr(zoo, "convert", None)  # refused before converting: the count is in the tensors
        with pytest.raises(ValueError) as e:
            zoo.load_arch("resnet18", str(path), class_names=names)
    assert "4 class names for the model's 5 classes" in one_line(e, names)
    fcn = zoo.load_arch("resnet18", str(path), class_names=names_file(tmp_path, NAMES5, json_list=True))
    assert fcn.class_names == NAMES5


def test_input_size_mean_std_for_every_model(tmp_path, resnet5):
    path = tmp_path / "r.pth"
    torch.save(resnet5.state_dict(), path)
    fcn = zoo.load_arch("resnet18", str(path), input_size=256, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert fcn.info["input_size"] == [256, 256] and fcn.info["exactness"]["input_size"] == [256, 256]
    assert fcn.info["mean"] == [0.5] * 3 and fcn.info["std"] == [0.25] * 3
    demo = zoo.load_arch("demo-gap", mean=(0, 0, 0), std=(1, 1, 1))
    assert demo.info["mean"] == [0, 0, 0] and demo.info["weights"] == "shipped"


# -- pickled models


@pytest.mark.parametrize("arch, wrap", [("alexnet", "model"), ("resnet18", "dataparallel"),
                                        ("resnet18", "checkpoint")])
def test_pickled_model_needs_the_opt_in(tmp_path, alexnet5, resnet5, arch, wrap):
    model = alexnet5 if arch == "alexnet" else resnet5
    obj = {"model": model, "dataparallel": nn.DataParallel(model),
           "checkpoint": {"epoch": 9, "model": model, "optimizer": None}}[wrap]
    path = tmp_path / "whole.pth"
    torch.save(obj, path)
    with pytest.raises(WeightsError) as e:
        zoo.load_arch(arch, str(path))
    msg = one_line(e, path)
    assert "unpickling runs code from the file" in msg and "--trust-pickle" in msg
    fcn = zoo.load_arch(arch, str(path), trust_pickle=True, class_names=NAMES5)
    assert fcn.info["weights_file"]["form"] == "pickle"
    reproduces(fcn, model, tmp_path, NAMES5)


def test_pickled_resnet_is_checked_against_the_users_module(tmp_path):
    model = fine_tuned("resnet18", 3)
    path = tmp_path / "r.pth"
    torch.save(model, path)
    reproduces(zoo.load_arch("resnet18", str(path), trust_pickle=True), model, tmp_path, None)
    model.relu = nn.LeakyReLU(0.5)  # not torchvision's resnet18 any more: the check must see it
    torch.save(model, path)
    with pytest.raises(fcn_cam.ConversionError, match="disagrees with the original"):
        zoo.load_arch("resnet18", str(path), trust_pickle=True)


# -- TorchScript


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_chain(tmp_path, how):
    model = small_vgg(num_classes=5)
    x = torch.randn(1, 3, NATIVE, NATIVE)
    jit = torch.jit.script(model) if how == "script" else torch.jit.trace(model, x)
    path = tmp_path / "model.ts"
    torch.jit.save(jit, path)
    chain = read_checkpoint(path)
    assert isinstance(chain, nn.Sequential) and not isinstance(chain, torch.jit.ScriptModule)
    fcn = zoo.load_checkpoint(path, input_size=NATIVE, class_names=NAMES5)
    assert fcn.info["weights_file"]["form"] == "torchscript"
    reproduces(fcn, model, tmp_path, NAMES5)
    fcn = zoo.load_arch("vgg11", str(path), input_size=NATIVE)  # the same file given as --weights
    assert fcn.info["arch"] == "vgg11"


def test_scripted_torchvision_net_given_its_architecture(tmp_path, resnet5):
    """Not a chain (ResNet's forward adds branches), but its tensors fit the named
    architecture, and the conversion is checked against the archive's own forward."""
    path = tmp_path / "resnet.pt"
    torch.jit.save(torch.jit.script(resnet5), path)
    with pytest.raises(WeightsError) as e:
        read_checkpoint(path)
    assert "top module is ResNet" in one_line(e, path)
    fcn = zoo.load_arch("resnet18", str(path), class_names=NAMES5)
    assert fcn.info["weights_file"]["form"] == "torchscript"
    reproduces(fcn, resnet5, tmp_path, NAMES5)
    with pytest.raises(WeightsError) as e:  # tensors that do not fit: the archive's own refusal
        zoo.load_arch("resnet34", str(path))
    assert "top module is ResNet" in one_line(e, path)


def test_torchscript_that_is_not_a_chain(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(Net()), path)
    with pytest.raises(WeightsError) as e:
        read_checkpoint(path)
    assert "top module is Net, not a plain chain" in one_line(e, path)
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4))), path)
    with pytest.raises(WeightsError) as e:
        read_checkpoint(path)
    assert "layer 1 is GroupNorm" in one_line(e, path)


# -- the cache, and torchvision's own weights files


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """Random ResNet-18 weights where torchvision looks for its download, and an empty cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("FCN_CAM_CACHE", str(tmp_path / "cache"))
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    target = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    target.parent.mkdir(parents=True)
    model = fine_tuned("resnet18", 1000, seed=3)
    torch.save(model.state_dict(), target)
    monkeypatch.setattr(torch.hub, "urlopen", no_network)  # the planted file, or nothing
    return model, target


def test_cache_converts_once(planted, tmp_path, monkeypatch):
    model, target = planted
    fcn, was_cached = cache.cached_arch("resnet18")
    assert not was_cached and fcn.class_names[0] == "tench"
    assert fcn.info["weights_file"]["sha256"] == hashlib.sha256(target.read_bytes()).hexdigest()
    files = list((tmp_path / "cache").glob("resnet18-*.pt"))
    assert len(files) == 1

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(zoo, "convert", no_conversion)
    again, was_cached = cache.cached_arch("resnet18")
    assert was_cached and again.info == fcn.info
    reproduces(again, model, tmp_path, fcn.class_names)
    monkeypatch.setattr(zoo, "convert", fcn_cam.convert)
    _, was_cached = cache.cached_arch("resnet18", output_stride=16)  # another key
    assert not was_cached and len(list((tmp_path / "cache").glob("resnet18-*.pt"))) == 2

    files[0].write_bytes(files[0].read_bytes()[:1000])  # corrupt: ignored, converted and rewritten
    with pytest.warns(UserWarning, match="ignoring the cached model"):
        rebuilt, was_cached = cache.cached_arch("resnet18")
    assert not was_cached and fcn_cam.load(files[0]).info == rebuilt.info


def test_cache_keys_weights_files_by_content(tmp_path, monkeypatch, resnet5):
    monkeypatch.setenv("FCN_CAM_CACHE", str(tmp_path / "cache"))
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save(resnet5.state_dict(), a)
    torch.save(fine_tuned("resnet18", 5, seed=1).state_dict(), b)
    assert cache.cache_key("resnet18", str(a)) != cache.cache_key("resnet18", str(b))
    b.write_bytes(a.read_bytes())  # the same content under another name: the same key
    assert cache.cache_key("resnet18", str(a)) == cache.cache_key("resnet18", str(b))
    torch.save(resnet5, a)
    with pytest.raises(WeightsError, match="--trust-pickle"):
        cache.cached_arch("resnet18", str(a))
    assert not cache.cached_arch("resnet18", str(a), trust_pickle=True)[1]
    with pytest.raises(WeightsError, match="--trust-pickle"):  # cached, and still refused without the opt-in
        cache.cached_arch("resnet18", str(a))
    assert cache.cached_arch("resnet18", str(a), trust_pickle=True)[1]


def test_cache_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("FCN_CAM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "fcn-cam"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "fcn-cam"


def no_network(*args, **kwargs):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_offline_first_run_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("FCN_CAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.hub, "urlopen", no_network)
    with pytest.raises(WeightsError) as e:
        cache.cached_arch("vgg16")
    msg = str(e.value)
    assert "\n" not in msg and "--weights" in msg
    assert str(tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth") in msg


def test_info_shows_provenance(tmp_path, resnet5):
    from fcn_cam.cli import app

    path = tmp_path / "flowers.pth"
    torch.save(resnet5.state_dict(), path)
    out = fcn_cam.save(zoo.load_arch("resnet18", str(path), class_names=NAMES5), tmp_path / "f.pt")
    r = CliRunner().invoke(app, ["info", str(out)])
    assert r.exit_code == 0, r.output
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert "resnet18" in r.output and sha in r.output and str(path) in r.output
    assert "5 (daisy, dandelion, rose, …)" in r.output
