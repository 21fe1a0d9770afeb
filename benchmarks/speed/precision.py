"""``precision="auto"`` vs fp32 vs bf16 for ``explain``."""

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
    ratio = ms(t["auto"]) / ms(t["fp32"])
    # bf16 on a small setting (scale 1, no padding: 224×337 input): one or two runs are enough to
    # show the slowdown on a CPU without bf16 units, and a default-size bf16 explain takes minutes there
    m16, warned = prepare_quietly(b, "bf16")
    small = {"scale": 1, "pad": "none"}
    t32s = interleaved({"fp32": lambda: fcn_cam.explain(m32, img, **small)}, b.cfg.repeats_large)["fp32"]
    t16 = timeboxed(lambda: fcn_cam.explain(m16, img, **small), b.cfg.repeats_large, b.cfg.bf16_budget_s)
    slow = ms(t16) / ms(t32s)
    rows = [
        ["scale 2, defaults", f"auto (resolved to {resolved})", ms(t["auto"]), len(t["auto"]), f"{ratio:.3f}×"],
        ["scale 2, defaults", "fp32", ms(t["fp32"]), len(t["fp32"]), "1×"],
        ["scale 1, pad='none'", "fp32", ms(t32s), len(t32s), "1×"],
        ["scale 1, pad='none'", "bf16", ms(t16), len(t16) if len(t16) > 1 else "1 (cold)", f"{slow:.2f}×"],
    ]
    b.res["precision"] = {"auto_resolved": resolved, "auto_ms": ms(t["auto"]), "fp32_ms": ms(t["fp32"]),
                          "auto_over_fp32": ratio, "small_fp32_ms": ms(t32s), "small_bf16_ms": ms(t16),
                          "bf16_runs": len(t16), "bf16_over_fp32": slow, "bf16_warnings": warned}
    print(f"  auto={resolved} {ms(t['auto']):.0f} ms, fp32 {ms(t['fp32']):.0f} ms; small: fp32 {ms(t32s):.0f} "
          f"ms, bf16 {ms(t16):.0f} ms", flush=True)
    b.target("`--precision auto` never slower than fp32", f"{ratio:.3f}× fp32 (auto = {resolved} here)",
             ratio <= NOISE, f"a ratio within {NOISE - 1:.0%} counts as equal (noise); explicit bf16 would be "
             f"{slow:.1f}× slower")
    b.md += [
        "`explain(prepare(fcn, precision=p), chelsea 451×300, …)`; ms, medians (auto and fp32 interleaved). "
        "bf16 only on a small setting and time-boxed (a call over half the budget is timed once, cold).",
        "",
        table(["setting", "precision", "explain ms", "timed runs", "× fp32"], rows),
    ]
    if warned:
        b.md += ["", "`prepare(fcn, precision='bf16')` warned: " + " / ".join(f"“{w}”" for w in warned)]
