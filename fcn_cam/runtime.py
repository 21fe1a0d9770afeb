"""How the converted net runs: device, precision, memory format and head execution.

Chosen once per model by :func:`prepare`. bf16 casts the weights once (autocast would
re-cast VGG16's 138 M weights on every call). ``precision="auto"`` picks bf16 only where
the hardware has bf16 units — a CUDA GPU that supports it, or a CPU with AMX or
AVX512_BF16 — and fp32 elsewhere: on an AVX2-only CPU a bf16 matmul ran 400× slower than
fp32 (``benchmarks/results/speed.md``). Channels-last lets oneDNN pick its fastest
convolution kernels for the body; the head runs as GEMMs (:mod:`fcn_cam.head`).
"""

from __future__ import annotations

import copy as copy_module
import functools
import json
import os
import platform
import time
import warnings
from pathlib import Path

import torch

from .settings import Runtime
from .surgery import FCN

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
HEAD_MODES = ("gemm", "conv")
# CPU flags that mean native bf16 arithmetic (Linux /proc/cpuinfo names).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → CUDA if available, else CPU; otherwise ``cpu``, ``cuda``, ``cuda:N``, ``mps``.

    Raises:
        ValueError: an unknown device name, or one this machine doesn't have.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine (use --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine (use --device cpu)")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r}: fcn-cam runs on cpu, cuda or mps")
    return dev


def cpu_name_and_flags() -> tuple[str, set[str]]:
    """The CPU model name and its feature flags (empty where /proc/cpuinfo doesn't exist)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                name = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return name, flags


def _cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "fcn-cam" / "bf16_speed.json"


@functools.cache
def bf16_speed_ratio() -> float:
    """fp32 time / bf16 time of a 256×256 matmul on this CPU (> 1: bf16 is faster).

    Measured once per machine and torch version (a fraction of a second even where bf16 is
    emulated) and cached in ``~/.cache/fcn-cam/bf16_speed.json``.
    """
    key = f"{cpu_name_and_flags()[0]} | torch {torch.__version__}"
    path = _cache_path()
    try:
        cached = json.loads(path.read_text())
        if key in cached:
            return float(cached[key])
    except (OSError, ValueError):
        cached = {}

    def best(dtype: torch.dtype, reps: int) -> float:
        a = torch.randn(256, 256).to(dtype)
        a @ a  # warm-up
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            a @ a
            times.append(time.perf_counter() - t)
        return min(times)

    ratio = best(torch.float32, 5) / best(torch.bfloat16, 3)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**cached, key: ratio}))
    except OSError:
        pass  # a read-only home: measure again next time
    return ratio


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively (not emulated)."""
    if device.type == "cuda":
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.3
            return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        _, flags = cpu_name_and_flags()
        if flags:
            return any(f in flags for f in BF16_CPU_FLAGS)
        return bf16_speed_ratio() > 1.0  # no flags to read (not Linux): measure
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → ``bf16`` where the device has bf16 units, else ``fp32``.

    An explicit ``bf16`` on a CPU without bf16 units runs, with a warning giving the
    measured slowdown; ``fp16`` needs a GPU.
    """
    if precision not in (*PRECISIONS, "auto"):
        raise ValueError(f"precision must be auto, {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("precision fp16 needs a GPU (--device cuda or mps); on a CPU use auto, fp32 or bf16")
    if precision == "bf16" and device.type == "cpu" and not native_bf16(device):
        warnings.warn(
            f"this CPU has no bf16 units (no {' / '.join(BF16_CPU_FLAGS)}): a bf16 matmul runs "
            f"{1 / bf16_speed_ratio():.0f}× slower than fp32 here; --precision auto chooses fp32",
            stacklevel=3,
        )
    return precision


def prepare(
    fcn: FCN,
    precision: str = Runtime.precision,
    device: str | torch.device = Runtime.device,
    channels_last: bool = True,
    head: str = "gemm",
    copy: bool = True,
) -> FCN:
    """``fcn`` ready to run: on ``device``, in ``precision``, body channels-last, head as GEMMs.

    Args:
        precision: ``auto`` (bf16 only on hardware with bf16 units), ``fp32``, ``bf16``, or
            ``fp16`` (GPU only).
        device: ``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
        channels_last: run the convolutional body in channels-last memory format.
        head: ``gemm`` (window-grid matrix products) or ``conv`` (:mod:`fcn_cam.head`).
        copy: leave ``fcn`` as it is and return a copy (``False`` converts it in place,
            saving one copy of the weights).
    """
    if head not in HEAD_MODES:
        raise ValueError(f"head must be one of {', '.join(HEAD_MODES)}, got {head!r}")
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    out = copy_module.deepcopy(fcn) if copy else fcn
    out = out.to(device=dev, dtype=PRECISIONS[precision])
    if channels_last:
        out.features.to(memory_format=torch.channels_last)  # the head's weights stay contiguous views
    out.head_mode = head
    out.info = {**fcn.info, "precision": precision, "channels_last": channels_last}
    return out.eval()


def input_like(fcn: FCN, batch: torch.Tensor) -> torch.Tensor:
    """``batch`` on the model's device, dtype and memory format (pinned, non-blocking copy
    to a GPU)."""
    p = next(fcn.parameters())
    fmt = torch.channels_last if fcn.info.get("channels_last") else torch.contiguous_format
    if p.device.type == "cuda" and batch.device.type == "cpu":
        batch = batch.pin_memory().to(p.device, non_blocking=True)
    return batch.to(p.device, p.dtype).contiguous(memory_format=fmt)
