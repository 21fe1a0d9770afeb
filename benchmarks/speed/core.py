"""Shared state of a speed run: configuration, models, images, timing, targets, output."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

import fcn_cam
from benchmarks.common import median, skimage_photos
from fcn_cam.surgery import FCN
from fcn_cam.zoo import imagenet_classes

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


@dataclass
class Config:
    """Sizes of the run: :meth:`full` is the default, :meth:`smoke` the ``--quick`` run."""

    quick: bool = False
    repeats: int = 5  # timed repeats after one warm-up; medians reported
    repeats_large: int = 3  # for runs of a second or more (448/672 px)
    mm_sizes: tuple[int, ...] = (1024, 2048, 4096)
    bf16_mm_sizes: tuple[int, ...] = (256, 512)
    bf16_side: int = 448  # the bf16 forward (a cold single run if it takes over half the budget)
    bf16_budget_s: float = 20.0  # bf16 rows: at most about this long each on a CPU without bf16 units
    sides: tuple[int, ...] = (224, 448, 672)
    sweep_classes: int = 100
    big_size: tuple[int, int] = (6000, 4000)
    profile: bool = True

    @classmethod
    def full(cls) -> Config:
        return cls()

    @classmethod
    def smoke(cls) -> Config:
        return cls(quick=True, repeats=1, repeats_large=1, mm_sizes=(512, 1024), bf16_mm_sizes=(256,),
                   bf16_side=224, bf16_budget_s=4.0, sides=(224, 448), sweep_classes=10, big_size=(2400, 1600),
                   profile=False)


@dataclass
class Target:
    """One issue-9 target as measured in this run."""

    name: str
    measured: str
    met: bool | None  # None: not measurable in this run
    note: str = ""


@dataclass
class Bench:
    """Models, images and result accumulators shared by the sections."""

    cfg: Config
    out: Path
    res: dict[str, Any] = field(default_factory=dict)
    md: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    peak: dict[str, float] = field(default_factory=dict)  # best matmul GFLOP/s per precision
    _cache: dict[Any, Any] = field(default_factory=dict)

    # models -------------------------------------------------------------------------------
    @property
    def vgg(self) -> torch.nn.Module:
        """torchvision VGG16, random weights (seed 0), eval mode: the original model."""
        if "vgg" not in self._cache:
            import torchvision  # here, not at import: the memory workers' RSS must not include it

            torch.manual_seed(0)
            self._cache["vgg"] = torchvision.models.vgg16(weights=None).eval()
        return self._cache["vgg"]

    @property
    def fcn(self) -> FCN:
        """The converted VGG16 exactly as ``convert`` returns it (fp32, contiguous)."""
        if "fcn" not in self._cache:
            self._cache["fcn"] = fcn_cam.convert(self.vgg, 224, class_names=imagenet_classes("vgg16"),
                                                 arch="vgg16", weights="random")
        return self._cache["fcn"]

    def model(self, precision: str = "auto", head: str = "gemm", channels_last: bool = True) -> FCN:
        """``fcn_cam.prepare(fcn, ...)`` on the CPU, cached per configuration."""
        key = ("prepared", precision, head, channels_last)
        if key not in self._cache:
            self._cache[key] = fcn_cam.prepare(self.fcn, precision=precision, device="cpu",
                                               channels_last=channels_last, head=head)
        return self._cache[key]

    def drop_models(self) -> None:
        for k in [k for k in self._cache if isinstance(k, tuple)]:
            del self._cache[k]
        gc.collect()

    # images -------------------------------------------------------------------------------
    @property
    def photo(self) -> Image.Image:
        """skimage's chelsea, 451×300: a real photo's aspect ratio."""
        return Image.fromarray(skimage_photos()["chelsea"]).convert("RGB")

    @property
    def square(self) -> Image.Image:
        """chelsea's centre square resized to 224×224: at scale s the network input is 224·s px."""
        p = self.photo
        w, h = p.size
        s = min(w, h)
        return p.crop(((w - s) // 2, 0, (w - s) // 2 + s, s)).resize((224, 224), Image.BILINEAR)

    # output -------------------------------------------------------------------------------
    def section(self, title: str) -> None:
        print(f"\n== {title}", flush=True)
        self.md += ["", f"## {title}", ""]

    def target(self, name: str, measured: str, met: bool | None, note: str = "") -> None:
        self.targets.append(Target(name, measured, met, note))
        verdict = {True: "met", False: "MISSED", None: "not measured"}[met]
        print(f"  TARGET {name}: {measured} ({verdict}){' — ' + note if note else ''}", flush=True)


# timing ---------------------------------------------------------------------------------------


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each function, timed round-robin (a, b, c, a, b, c, …) after
    ``warmup`` untimed rounds, so that a slow spell of a shared machine hits all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            gc.collect()
            t0 = time.perf_counter()
            fn()
            out[k].append(time.perf_counter() - t0)
    return out


def timeboxed(fn: Callable[[], Any], repeats: int, budget_s: float) -> list[float]:
    """Like one entry of :func:`interleaved`, but at most about ``budget_s`` seconds in all: the
    warm-up's time decides how many timed calls fit (at least one). A first call over half the
    budget is itself the one measurement (cold: no warm-up)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    if first > budget_s / 2:
        return [first]
    n = max(1, min(repeats, int((budget_s - first) / max(first, 1e-9))))
    return interleaved({"f": fn}, n, warmup=0)["f"]


def ms(xs: list[float]) -> float:
    """Median in milliseconds."""
    return 1000 * median(xs)


def gflops(macs: float, seconds: float) -> float:
    return 2 * macs / seconds / 1e9


def side_str(shape: tuple[int, ...] | list[int]) -> str:
    return "×".join(str(int(v)) for v in shape)
