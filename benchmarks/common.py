"""Shared helpers for the benchmarks: timing, machine facts, MAC counting, test photos, tables."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn


def timings(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


#: CPU flags that decide which kernels run (bf16 units: AMX or AVX512_BF16).
FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_bf16",
         "amx_tile", "amx_int8")


def _cpuinfo(key: str) -> str:
    """The first ``key`` line's value in /proc/cpuinfo, or ''."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith(key)), "")
    except OSError:
        return ""


def cpu_flags() -> list[str]:
    """The performance-relevant flags (``FLAGS``) of the first CPU in /proc/cpuinfo."""
    have = set(_cpuinfo("flags").split())
    return [x for x in FLAGS if x in have]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo."""
    return _cpuinfo("model name") or platform.processor() or "unknown"


def cpu_line() -> str:
    """The CPU as every result names it: model and the flags that decide the kernels."""
    return f"{cpu_model()}; flags: {' '.join(cpu_flags()) or 'unknown'}"


def other_heavy_processes(min_cpu: float = 20.0) -> list[str]:
    """Other processes using more than ``min_cpu`` % CPU right now (timings are invalid if any)."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,args", "--no-headers"], capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    me = str(os.getpid())
    rows = []
    for line in out.splitlines():
        pid, cpu, args = line.split(None, 2)
        if pid != me and float(cpu) >= min_cpu and "ps -eo" not in args:
            rows.append(f"{pid} {cpu}% {args[:100]}")
    return rows


def matmul_rate(dtype: torch.dtype, n: int, repeats: int) -> float:
    """Best-of-``repeats`` GFLOP/s of an ``n × n`` matrix product (``2·n³`` FLOPs)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    c = torch.empty(n, n, dtype=dtype)
    best = min(timings(lambda: torch.mm(a, b, out=c), repeats, warmup=1))
    return 2 * n**3 / best / 1e9


def count_macs(model: nn.Module, shape: Sequence[int]) -> int:
    """Multiply-accumulates of the Conv2d and Linear layers of ``model`` for one input of
    ``shape`` (``[B, C, H, W]``), from each layer's output shape and kernel; computed on the
    ``meta`` device (no arithmetic is done)."""
    total = 0

    def hook(m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            k = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            total += out.numel() * k
        else:
            total += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    meta = {k: torch.empty_like(v, device="meta") for k, v in
            [*model.named_parameters(), *model.named_buffers()]}
    try:
        with torch.no_grad():
            torch.func.functional_call(model, meta, (torch.empty(*shape, device="meta"),))
    finally:
        for h in handles:
            h.remove()
    return total


def skimage_photos() -> dict[str, np.ndarray]:
    """Real RGB photos shipped inside scikit-image (no download)."""
    from skimage import data

    return {n: getattr(data, n)() for n in ("chelsea", "coffee", "rocket", "astronaut")}


def photo_variants(n: int, seed: int = 0) -> list[tuple[str, Image.Image]]:
    """``n`` real test images: the skimage photos, then their mirror images, centre squares
    and random crops (60–90 % of each side), cycling over the photos."""
    rng = np.random.default_rng(seed)
    photos = [(k, Image.fromarray(v).convert("RGB")) for k, v in skimage_photos().items()]
    out: list[tuple[str, Image.Image]] = []
    kinds = ["full", "flip", "square", "crop"]
    i = 0
    while len(out) < n:
        kind = kinds[min(i // len(photos), len(kinds) - 1)]
        name, im = photos[i % len(photos)]
        w, h = im.size
        if kind == "full":
            v = im
        elif kind == "flip":
            v = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        elif kind == "square":
            s = min(w, h)
            v = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        else:
            cw, ch = int(w * rng.uniform(0.6, 0.9)), int(h * rng.uniform(0.6, 0.9))
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            v = im.crop((x0, y0, x0 + cw, y0 + ch))
            kind = f"crop{i}"
        out.append((f"{name}-{kind}", v))
        i += 1
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two arrays (flattened); 1.0 if both are constant and equal."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    if den == 0:
        return 1.0 if np.allclose(a, b) else 0.0
    return float((a * b).sum() / den)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; floats are printed with 3 significant digits (4 if ≥ 1000)."""
    def fmt(v: Any) -> str:
        if isinstance(v, bool) or v is None:
            return "–" if v is None else str(v)
        if isinstance(v, float):
            if v != v:  # NaN
                return "–"
            return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


class ForeignLoad:
    """CPU used by other processes (in cores) between :meth:`start` and :meth:`cores`.

    Busy jiffies of the whole machine (``/proc/stat``) minus this process's own (threads and
    waited-for children, ``/proc/self/stat``): a benchmark section is disturbed if this is not ~0.
    """

    def __init__(self) -> None:
        self.hz = os.sysconf("SC_CLK_TCK")
        self.t0 = self._read()

    @staticmethod
    def _read() -> tuple[float, int, int]:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        busy = sum(vals[:8]) - vals[3] - vals[4]  # all but idle and iowait (guest is inside user)
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        own = sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
        return time.monotonic(), busy, own

    def start(self) -> None:
        self.t0 = self._read()

    def cores(self) -> float:
        t1 = self._read()
        dt = max(t1[0] - self.t0[0], 1e-6)
        return max(0.0, ((t1[1] - self.t0[1]) - (t1[2] - self.t0[2])) / self.hz / dt)


def wait_idle(max_minutes: float, window: float = 20.0, threshold: float = 0.1) -> float:
    """Block until other processes use < ``threshold`` cores over ``window`` s (or time runs out);
    returns the last measured foreign load."""
    deadline = time.monotonic() + 60 * max_minutes
    mon = ForeignLoad()
    while True:
        mon.start()
        time.sleep(window)
        load = mon.cores()
        if load < threshold or time.monotonic() > deadline:
            return load
        print(f"  waiting: other processes use {load:.2f} cores", flush=True)
