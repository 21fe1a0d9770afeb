"""The README's speed table, from ``benchmarks/results/speed.json`` (one run):
``python -m benchmarks.speed.readme [speed.json]`` prints it as markdown."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .core import RESULTS


def verdict(met: bool | None) -> str:
    return {True: "met", False: "missed", None: "not measured"}[met]


def table(res: dict) -> str:
    run = res["run"]
    rows = [f"Measured on: {run['machine']} — {run['date'][:10]}, `{run['command']}`; VGG16, random weights, "
            "medians of interleaved runs.", "", "| target (issue 9) | this run | |", "|---|---|---|"]
    rows += [f"| {t['name']} | {t['measured']} | {verdict(t['met'])} |" for t in run["targets"]]
    out = "\n".join(rows)
    if "vs_gradcam" in res:
        g = res["vs_gradcam"]
        out += "\n\n| input side | torchcam Grad-CAM (1 class) | explain, score maps (all classes) | same, " \
               "pad='none' | explain, cell maps |\n|---|---|---|---|---|\n"
        out += "\n".join(f"| {d['side']} | {d['grad_cam_ms']:.0f} ms | {d['scores_ms']:.0f} ms | "
                         f"{d['scores_nopad_ms']:.0f} ms | {d['cells_ms']:.0f} ms |" for d in g)
        if "defaults_ms" in g[0]:
            out += ("\n\n`fcn_cam.explain` with every default (cell maps, scales 1 and 2 fused, `features` "
                    f"padding) on the same 224-px image: {g[0]['defaults_ms']:.0f} ms, "
                    f"{g[0]['defaults_ms'] / g[0]['grad_cam_ms']:.2f}× Grad-CAM at 224 px.")
    return out


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS / "speed.json"
    print(table(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
