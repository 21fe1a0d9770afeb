"""Peak memory in fresh subprocesses: ``convert`` vs the model's size, and ``explain`` of a
6000×4000 photo with VGG16.

Each workload runs in a new interpreter (``python -m benchmarks.speed.memory SPEC``) started
through ``sh``: a process exec'd straight from this big one would inherit its high-water mark
in ``ru_maxrss``. Before the workload the peak-RSS counter (VmHWM) is reset through
``/proc/self/clear_refs``, so *workload peak* is the workload's own (model and imports included,
as they stay resident).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import skimage_photos, table

from .core import ROOT, Bench

MB = 2**20


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Reset VmHWM (and with it ``ru_maxrss``) to the current RSS; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(spec: dict) -> dict:
    """One workload in this (fresh) interpreter; memory in MB."""
    import torch

    import fcn_cam

    if spec["kind"] == "convert":
        import torchvision  # only here: explaining never imports it
    out: dict = {"spec": spec, "rss_imports": rss_mb()}
    if spec["kind"] == "convert":
        model = torchvision.models.vgg16(weights=None).eval()
        out["model_mb"] = sum(p.numel() * p.element_size() for p in model.parameters()) / MB
        out["rss_before"] = rss_mb()
        out["maxrss_before"] = maxrss_mb()
        reset = reset_peak()
        t0 = time.perf_counter()
        fcn = fcn_cam.convert(model, 224)
        out["seconds"] = time.perf_counter() - t0
        out["fcn_mb"] = sum(p.numel() * p.element_size() for p in fcn.parameters()) / MB
    else:
        fcn = fcn_cam.prepare(fcn_cam.load(spec["model"]), device="cpu", copy=False)  # as the CLI does
        out["model_mb"] = sum(p.numel() * p.element_size() for p in fcn.parameters()) / MB
        out["precision"] = fcn.info.get("precision")
        out["rss_before"] = rss_mb()
        out["maxrss_before"] = maxrss_mb()
        reset = reset_peak()
        t0 = time.perf_counter()
        exp = fcn_cam.explain(fcn, spec["path"], **spec.get("kwargs", {}))
        out["seconds"] = time.perf_counter() - t0
        out.update(image=[exp.width, exp.height], input=list(exp.input_shapes[0]), map=list(exp.map_shapes[0]))
        del exp
    out["workload_peak"] = hwm_mb() if reset else None
    # resetting VmHWM also resets ru_maxrss: the process peak is the larger of the two readings
    out["process_peak"] = max(maxrss_mb(), out["maxrss_before"])
    out["torch_threads"] = torch.get_num_threads()
    return out


def run_worker(spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = ["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, "-m", "benchmarks.speed.memory",
           json.dumps(spec)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT, env=env)
    if p.returncode:
        raise RuntimeError(f"memory worker {spec['kind']} failed ({p.returncode}): {p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def big_photo(path: Path, size: tuple[int, int]) -> None:
    """A photo-like JPEG of ``size``: skimage's astronaut upscaled, with grain (so it is not flat)."""
    w, h = size
    src = np.asarray(Image.fromarray(skimage_photos()["astronaut"]).resize((w, h), Image.BILINEAR))
    noise = np.random.default_rng(0).integers(0, 24, (h, w, 1), dtype=np.uint8)
    Image.fromarray(src // 2 + noise * 2 // 3).save(path, quality=90)


def run(b: Bench) -> None:
    import fcn_cam

    b.section("Memory peaks (fresh subprocesses)")
    w, h = b.cfg.big_size
    with tempfile.TemporaryDirectory(prefix="fcncam-mem-") as tmp:
        model = Path(tmp) / "vgg16.pt"
        fcn_cam.save(b.fcn, model)
        photo = Path(tmp) / "big.jpg"
        big_photo(photo, (w, h))
        conv = run_worker({"kind": "convert"})
        print(f"  convert: {conv}", flush=True)
        runs = {}
        for label, kw in (("defaults: cell maps, scales 1+2", {}),
                          ("score maps, scales 1+2", {"maps": "scores"})):
            runs[label] = run_worker({"kind": "explain", "model": str(model), "path": str(photo), "kwargs": kw})
            print(f"  explain {label}: {runs[label]}", flush=True)
    b.res["memory"] = {"convert": conv, "explain": runs}
    model_mb = conv["model_mb"]
    footprint = conv["workload_peak"] - conv["rss_imports"]
    conv_ratio = footprint / model_mb
    rows = [["convert(vgg16)", conv["rss_imports"], conv["rss_before"], conv["workload_peak"],
             conv["process_peak"], conv["seconds"]]]
    for label, d in runs.items():
        shape = "×".join(map(str, d["input"]))
        rows.append([f"explain {w}×{h} JPEG, {label} (input {shape}, {d['precision']})",
                     d["rss_imports"], d["rss_before"], d["workload_peak"], d["process_peak"], d["seconds"]])
    b.target("convert peak ≤ 1.5× the model's size",
             f"{conv_ratio:.2f}× ({footprint:.0f} MB above imports for a {model_mb:.0f} MB model)",
             conv_ratio <= 1.5,
             f"extra over the built model: {conv['workload_peak'] - conv['rss_before']:.0f} MB")
    big = max(d["process_peak"] for d in runs.values())
    b.target(f"explain of a {w}×{h} photo ≤ 1.5 GB with VGG16",
             " / ".join(f"{d['process_peak'] / 1024:.2f} GB ({k})" for k, d in runs.items()),
             big <= 1.5 * 1024,
             "whole-process peak RSS, the 528 MB model and "
             f"{min(d['rss_imports'] for d in runs.values()):.0f} MB of imports included")
    b.md += [
        "Each row is a new `python` process. *imports* = RSS after `import torch, fcn_cam` (and "
        "torchvision for convert); "
        "*before* = RSS once the model is built (convert: `torchvision.models.vgg16()`) or loaded "
        "(`fcn_cam.load` + `prepare`, fp32 here); *workload peak* = peak RSS from there to the end of the "
        "workload (VmHWM reset before it); *process peak* = the whole process's `ru_maxrss`. MB.",
        "",
        table(["workload", "RSS imports", "RSS before", "workload peak", "process peak", "seconds"], rows),
        "",
        f"Model size: {model_mb:.0f} MB of fp32 parameters (converted net: {conv['fcn_mb']:.0f} MB). "
        f"convert's footprint at its peak, above the imports: {footprint:.0f} MB "
        f"= {conv_ratio:.2f}× the model (the original model included).",
    ]


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))))
