"""Machine: CPU model and flags, torch's CPU capability, the fp32 and bf16 matmul rate."""

from __future__ import annotations

import os
import platform

import torch
import torchvision

from benchmarks.common import cpu_flags, cpu_line, cpu_model, matmul_rate, table

from .core import Bench, timeboxed


def describe() -> str:
    """One line: CPU model, flags, cores, torch capability and versions (for every result)."""
    return (f"{cpu_line()}; {os.cpu_count()} cores; "
            f"torch {torch.__version__} (CPU capability {torch.backends.cpu.get_cpu_capability()}, "
            f"{torch.get_num_threads()} threads), torchvision {torchvision.__version__}, "
            f"Python {platform.python_version()}")


def bf16_rates(sizes: tuple[int, ...], budget_s: float) -> dict[int, float]:
    """bf16 matmul GFLOP/s, sizes in order, stopping once a product takes over ``budget_s / 4``
    (bf16 runs at ~1 GFLOP/s on a CPU without bf16 units: 4096³ would take minutes)."""
    out: dict[int, float] = {}
    for n in sizes:
        g = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=g).bfloat16()
        b = torch.randn(n, n, generator=g).bfloat16()
        t = min(timeboxed(lambda a=a, b=b: torch.mm(a, b), 3, budget_s / 4))
        out[n] = 2 * n**3 / t / 1e9
        if t > budget_s / 4 / 3:
            break
    return out


def ensure_peak(b: Bench) -> None:
    """The matmul rates the other sections compare with (measured here if ``machine`` did not run)."""
    if not b.peak:
        b.peak["fp32"] = max(matmul_rate(torch.float32, n, 3) for n in b.cfg.mm_sizes)
        b.peak["bf16"] = max(bf16_rates(b.cfg.bf16_mm_sizes, b.cfg.bf16_budget_s).values())


def run(b: Bench) -> None:
    b.section("Machine")
    fp32 = {n: matmul_rate(torch.float32, n, 5) for n in b.cfg.mm_sizes}
    bf16 = bf16_rates(b.cfg.bf16_mm_sizes, b.cfg.bf16_budget_s)
    b.peak.update(fp32=max(fp32.values()), bf16=max(bf16.values()))
    print(f"  {describe()}")
    print("  matmul fp32: " + ", ".join(f"{n}: {r:.1f}" for n, r in fp32.items()) + " GFLOP/s")
    print("  matmul bf16: " + ", ".join(f"{n}: {r:.2f}" for n, r in bf16.items()) + " GFLOP/s", flush=True)
    b.res["machine"] = {
        "cpu": cpu_model(), "flags": cpu_flags(), "cores": os.cpu_count(),
        "capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "python": platform.python_version(),
        "threads": torch.get_num_threads(), "mkldnn": torch.backends.mkldnn.is_available(),
        "matmul_gflops": {"fp32": fp32, "bf16": bf16}, "peak_gflops": dict(b.peak),
    }
    sizes = sorted(set(fp32) | set(bf16))
    b.md += [
        describe() + ".",
        "",
        "Matrix multiply `torch.mm` n×n, best of the timed repeats, GFLOP/s = 2·n³ / t. bf16 is measured "
        "on small sizes only and stops once one product takes a few seconds:",
        "",
        table(["n", "fp32 GFLOP/s", "bf16 GFLOP/s"], [[n, fp32.get(n), bf16.get(n)] for n in sizes]),
        "",
        f"Rates the other sections compare with (best of the sizes): fp32 {b.peak['fp32']:.1f}, "
        f"bf16 {b.peak['bf16']:.2f} GFLOP/s.",
    ]
    if "amx_bf16" not in cpu_flags() and "avx512_bf16" not in cpu_flags():
        b.md += ["", f"No bf16 units on this CPU (neither AMX nor AVX512_BF16): bf16 matmul runs at "
                 f"{b.peak['bf16'] / b.peak['fp32']:.1%} of the fp32 rate, so every bf16 row below is short "
                 "(time-boxed, one or two timed runs)."]
