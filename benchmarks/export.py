"""The exported CAM graph in onnxruntime (CPU) against fcn_cam.explain for the same maps (issue 22).

VGG16 with random weights (timings do not depend on the weights) is exported with
:func:`fcn_cam.export.export` (checked by onnxruntime at the benchmark's size), then, on one
square photo whose network input is ``size × size``, interleaved and ``repeats`` times after a
warm-up each:

- ``explain``: ``fcn_cam.explain(fcn, photo, scale=size/224, maps="cells")``, the whole call
  (resize, forward, head-only backward, alignment, box);
- ``maps``: the raw maps alone, :func:`fcn_cam.maps.forward` + :func:`fcn_cam.maps.cell_maps_of`
  on the same network input (what the graph computes);
- ``onnxruntime``: one ``InferenceSession.run`` of the file (target −1: the graph ranks);
- ``CAMGraph``: the same module run eagerly in torch (once, profiled).

Then one profiled run of each graph gives the time per operator (onnxruntime's profiler, torch's
profiler on the module), so that a slower runtime is explained by the operator that costs it.

    PYTHONPATH=. python benchmarks/export.py [--size 448] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from PIL import Image

try:
    from benchmarks.common import ForeignLoad, cpu_line, median, table
except ImportError:  # run as a script from benchmarks/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.common import ForeignLoad, cpu_line, median, table

import fcn_cam
from fcn_cam.export import CAMGraph, compare, export
from fcn_cam.geometry import feature_cover_padding
from fcn_cam.images import to_input
from fcn_cam.maps import cell_maps_of, forward
from fcn_cam.zoo import load_arch

RESULTS = Path(__file__).resolve().parent / "results"


def square_photo(side: int = 320) -> Image.Image:
    import skimage.data

    a = skimage.data.chelsea()  # 300×451
    h = min(a.shape[:2])
    return Image.fromarray(a[:h, :h]).resize((side, side), Image.Resampling.BILINEAR)


def ort_session(path: Path, profile: bool = False):
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(path.with_suffix("")) + "_profile"
    return onnxruntime.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_ops(path: Path, feeds: dict) -> tuple[dict[str, float], dict[str, tuple[str, float]]]:
    """Seconds per operator type, and per node (with its type), in one run after a warm-up
    (onnxruntime's profiler)."""
    session = ort_session(path, profile=True)
    session.run(None, feeds)
    session.run(None, feeds)
    trace = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    last = runs[-1]
    ops: dict[str, float] = defaultdict(float)
    nodes: dict[str, tuple[str, float]] = {}
    for e in trace:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= last["ts"]:
            op = e["args"]["op_name"]
            ops[op] += e["dur"] / 1e6
            name = e["name"].removesuffix("_kernel_time")
            nodes[name] = (op, nodes.get(name, (op, 0.0))[1] + e["dur"] / 1e6)
    return dict(ops), nodes


def torch_ops(graph: CAMGraph, x: torch.Tensor, t: torch.Tensor) -> tuple[dict[str, float], float]:
    """Seconds per top-level aten operator in one eager run of the module after a warm-up
    (torch's profiler), and that run's wall time."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        graph(x, t)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            graph(x, t)
            wall = time.perf_counter() - t0
    names = ("aten::conv2d", "aten::conv_transpose2d", "aten::max_pool2d", "aten::relu_", "aten::relu",
             "aten::mul", "aten::sum", "aten::pad", "aten::constant_pad_nd", "aten::amax", "aten::gt")
    return {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages() if e.key in names}, wall


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="vgg16")
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    load = ForeignLoad()
    fcn = load_arch(args.arch, "random")
    sections = {"convert": time.perf_counter() - t_start}
    image = square_photo()
    size = (args.size, args.size)
    scale = args.size / min(fcn.input_size)
    x = to_input(image, args.size, fcn.info["mean"], fcn.info["std"])[None]
    assert tuple(x.shape[-2:]) == size
    pad = feature_cover_padding(fcn.features, fcn.head, *size)
    graph = CAMGraph(fcn).eval()
    target = torch.tensor([-1])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{args.arch}.onnx"
        t0 = time.perf_counter()
        report = export(fcn, path, check_sizes=[size])
        sections["export"] = time.perf_counter() - t0
        session = ort_session(path)
        feeds = {"image": x.numpy(), "target": target.numpy()}

        def run_explain():
            return fcn_cam.explain(fcn, image, scale=scale, maps="cells")

        def run_maps():
            fw = forward(fcn, x, cells=True, pad=pad)
            chosen = fw.scores.detach().amax(dim=(-2, -1)).argmax(1)[:, None]
            return cell_maps_of(fw, chosen)

        runs = {"explain": run_explain, "maps": run_maps, "onnxruntime": lambda: session.run(None, feeds)}
        t0 = time.perf_counter()
        for fn in runs.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.repeats):  # interleaved
            for k, fn in runs.items():
                t1 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t1)
        sections["timing"] = time.perf_counter() - t0
        exp = run_explain()
        got = session.run(None, feeds)
        allow = graph.kink_allowance(x, torch.as_tensor(got[2]))["allowance"].numpy()
        agree = compare(got, [None, None, got[2], exp.targets[0].cams[0][None]], allow)
        agree["target_equal"] = int(got[2][0]) == exp.targets[0].index
        t0 = time.perf_counter()
        ops_ort, nodes_ort = ort_ops(path, feeds)
        ops_torch, camgraph_s = torch_ops(graph, x, target)
        sections["profile"] = time.perf_counter() - t0
        size_bytes = path.stat().st_size
    params = sum(p.numel() * p.element_size() for p in fcn.parameters())
    med = {k: median(v) for k, v in times.items()}
    import onnxruntime

    result = {
        "command": "PYTHONPATH=. python benchmarks/export.py " + " ".join(argv or sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_line(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
        "arch": args.arch,
        "size": list(size),
        "repeats": args.repeats,
        "file_bytes": size_bytes,
        "parameter_bytes": params,
        "opset": report["opset"],
        "export_check": report["check"],
        "times_s": times,
        "median_s": med,
        "agreement_with_explain": agree,
        "ops_onnxruntime_s": ops_ort,
        "nodes_onnxruntime_s": dict(sorted(((k, list(v)) for k, v in nodes_ort.items()),
                                           key=lambda kv: -kv[1][1])[:10]),
        "ops_torch_camgraph_s": ops_torch,
        "camgraph_profiled_s": camgraph_s,
        "sections_s": sections,
        "foreign_load_cores": load.cores(),
        "wall_s": time.perf_counter() - t_start,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "export.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "export.md").write_text(markdown(result))
    print(markdown(result))
    return result


def _share(ops: dict[str, float]) -> list[tuple[str, float, float]]:
    total = sum(ops.values()) or 1.0
    return [(k, v, v / total) for k, v in sorted(ops.items(), key=lambda kv: -kv[1])]


def markdown(r: dict) -> str:
    med = r["median_s"]
    ort, maps, exp = med["onnxruntime"], med["maps"], med["explain"]
    h, w = r["size"]
    rows = [
        ["fcn_cam.explain(maps='cells'), whole call", exp * 1e3, 1.0],
        ["fcn_cam.maps forward + cell_maps_of (the raw maps)", maps * 1e3, maps / exp],
        ["onnxruntime, the exported file", ort * 1e3, ort / exp],
        ["CAMGraph in torch (eager, one profiled run)", r["camgraph_profiled_s"] * 1e3,
         r["camgraph_profiled_s"] / exp],
    ]
    ops_ort = _share(r["ops_onnxruntime_s"])
    ops_t = r["ops_torch_camgraph_s"]
    top = ops_ort[0] if ops_ort else ("–", 0.0, 0.0)
    match = {"Conv": "aten::conv2d", "ConvTranspose": "aten::conv_transpose2d", "MaxPool": "aten::max_pool2d"}
    op_rows = [[k, v * 1e3, f"{s:.0%}", ops_t.get(match.get(k, ""), float("nan")) * 1e3]
               for k, v, s in ops_ort[:8]]
    agree = r["agreement_with_explain"]
    slower = ort > maps
    verdict = (
        f"onnxruntime is {ort / maps:.2f}× the time of the same raw maps in PyTorch "
        f"({'slower' if slower else 'faster'}). Its most expensive operator is **{top[0]}**, "
        f"{top[1] * 1e3:.0f} ms ({top[2]:.0%} of its operator time)"
    )
    if top[0] in match and match[top[0]] in ops_t:
        verdict += f"; torch's {match[top[0]]} on the same graph took {ops_t[match[top[0]]] * 1e3:.0f} ms."
    else:
        verdict += "."
    lines = [
        "# Exported CAM graph: onnxruntime against fcn_cam.explain (issue 22)",
        "",
        f"Command: `{r['command'].strip()}` (from the repository root)  ",
        f"Date: {r['date']}  ",
        f"Machine: {r['cpu']}; {r['cores']} cores; torch {r['torch']} ({r['torch_threads']} threads), "
        f"onnxruntime {r['onnxruntime']} (CPUExecutionProvider, default threads), Python {r['python']}  ",
        f"CPU used by other processes during the run: {r['foreign_load_cores']:.2f} cores (/proc/stat)"
        + (" — **disturbed**" if r["foreign_load_cores"] > 0.2 else ""),
        f"Runtime: {r['wall_s']:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in r["sections_s"].items()) + ")",
        "",
        f"{r['arch']} with random weights, one photo at a {h}×{w} network input, cell maps of the top class "
        f"(pad='features'); medians of {r['repeats']} interleaved runs after a warm-up.",
        "",
        table(["what", "median ms", "× explain"], rows),
        "",
        f"File: {r['file_bytes'] / 1e6:.1f} MB ONNX (opset {r['opset']}) for "
        f"{r['parameter_bytes'] / 1e6:.1f} MB of float32 parameters: every weight is stored once "
        "(the head's Conv and ConvTranspose share theirs).",
        "",
        f"Agreement of the file with explain's raw cell map: {agree['cells']:.2g} relative beyond the kink "
        f"allowance ({agree['cells_raw']:.2g} plain, {agree['cells_allowed']} cells with an allowance), "
        f"scores checked at export: {r['export_check'][0]['scores']:.2g}; same class: {agree['target_equal']}.",
        "",
        "## Where the time goes",
        "",
        verdict,
        "",
        table(["onnxruntime op", "ms", "share", "torch CAMGraph, same op (ms)"], op_rows),
        "",
        "Costliest onnxruntime nodes:",
        "",
        table(["node", "op", "ms"], [[k, op, s * 1e3] for k, (op, s) in r["nodes_onnxruntime_s"].items()]),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
