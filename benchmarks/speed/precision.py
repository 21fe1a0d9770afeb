"""``precision="auto"`` vs fp32 vs bf16 for ``explain`` at scale 2."""

from __future__ import annotations

import fcn_cam
from benchmarks.common import table

from .core import Bench, interleaved, ms, timeboxed
from .forward import prepare_quietly

NOISE = 1.03  # "never slower": a median ratio within 3 % is run-to-run noise on a shared machine


def run(b: Bench) -> None:
    b.section("Precision: auto vs fp32 vs bf16")
    img = b.photo
    auto = b.model("auto")
    resolved = auto.info.get("precision", "?")
    m32 = b.model("fp32")
    t = interleaved({"auto": lambda: fcn_cam.explain(auto, img, scale=2),
                     "fp32": lambda: fcn_cam.explain(m32, img, scale=2)}, b.cfg.repeats_large)
    m16, warned = prepare_quietly(b, "bf16")
    t16 = timeboxed(lambda: fcn_cam.explain(m16, img, scale=2), b.cfg.repeats_large, b.cfg.bf16_budget_s)
    base = ms(t["fp32"])
    rows = [
        [f"auto (resolved to {resolved})", ms(t["auto"]), len(t["auto"]), f"{ms(t['auto']) / base:.3f}×"],
        ["fp32", base, len(t["fp32"]), "1×"],
        ["bf16", ms(t16), len(t16), f"{ms(t16) / base:.2f}×"],
    ]
    ratio = ms(t["auto"]) / base
    b.res["precision"] = {"auto_resolved": resolved, "auto_ms": ms(t["auto"]), "fp32_ms": base,
                          "bf16_ms": ms(t16), "bf16_runs": len(t16), "bf16_warnings": warned,
                          "auto_over_fp32": ratio}
    print(f"  auto={resolved} {ms(t['auto']):.0f} ms, fp32 {base:.0f} ms, bf16 {ms(t16):.0f} ms", flush=True)
    b.target("`--precision auto` never slower than fp32", f"{ratio:.3f}× fp32 (auto = {resolved} here)",
             ratio <= NOISE, f"within the {NOISE - 1:.0%} noise band; bf16 would be {ms(t16) / base:.1f}×")
    b.md += [
        "`explain(prepare(fcn, precision=p), chelsea 451×300, scale=2)`, defaults otherwise; ms, medians "
        "(auto and fp32 interleaved; bf16 time-boxed to a run or two on a CPU without bf16 units).",
        "",
        table(["precision", "explain ms", "timed runs", "× fp32"], rows),
    ]
    if warned:
        b.md += ["", "`prepare(fcn, precision='bf16')` warned: " + " / ".join(f"“{w}”" for w in warned)]
