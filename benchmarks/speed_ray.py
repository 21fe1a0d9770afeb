"""Ray Data against the local CLI: images/s on the same folder, identical records (issue 9).

``ray_vs_local()`` writes a folder of real photos, converts ``arch`` with random weights, then
alternates, ``repeats`` times, a fresh subprocess running ``fcn-cam explain -o`` and one running
``fcn-cam explain --ray auto -o`` on a local 2-CPU Ray instance that the subprocess started
before its clock starts (the cluster is up, as on a real one; starting it, and stopping it
when the process exits, are timed apart), twice: on the fresh instance (``ray``: this is the
cluster's first Ray Data job, which also starts Ray Data's own detached helper actors, for
stats and autoscaling, each a new process) and on one that has run a one-row Ray Data job
before the clock (``ray-warm``: those helpers are up, as on a cluster in use). The clocks run
until the command returns and include loading the model and writing every output; the Ray
ones also include starting the actors, each loading the model file. The records are compared.

    PYTHONPATH=. python benchmarks/speed_ray.py [--n 64] [--arch vgg16] [--scale 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    from benchmarks.common import ForeignLoad, cpu_line, median, other_heavy_processes, photo_variants, table
except ImportError:  # run as a script from benchmarks/
    from common import ForeignLoad, cpu_line, median, other_heavy_processes, photo_variants, table


#: The local CLI; Ray on a fresh instance (its first Ray Data job); Ray on one that has run Ray Data.
MODES = ("local", "ray", "ray-warm")
#: Records that reach the driver within this many seconds of the first came with it (one block).
BLOCK_S = 0.25

WORKER = """
import sys, time
if sys.argv[1].startswith("ray"):
    import ray
    t0 = time.perf_counter()
    ray.init(num_cpus=int(sys.argv[2]), include_dashboard=False, log_to_driver=False)
    if sys.argv[1] == "ray-warm":  # a cluster in use: Ray Data has run here before
        import ray.data
        ray.data.DataContext.get_current().enable_progress_bars = False
        ray.data.range(1).map_batches(lambda b: b).take_all()
    print(f"READY {time.perf_counter() - t0}", flush=True)
else:
    print("READY 0", flush=True)
from fcn_cam.cli import app
sys.argv = ["fcn-cam", *sys.argv[3:]]
try:
    app()
finally:
    print("DONE", flush=True)  # the command has returned; what follows is the process (and cluster) exiting
"""


def run_worker(mode: str, model: str, folder: str, out: str, scale: float, cpus: int) -> dict:
    """A fresh process running ``fcn-cam explain`` (with ``--ray auto`` on a Ray instance it
    started before the clock); each printed record is timestamped as it arrives."""
    args = ["explain", "--model", model, "--scale", str(scale), "-o", out, folder]
    args += ["--ray", "auto"] if mode != "local" else []
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    p = subprocess.Popen([sys.executable, "-c", WORKER, mode, str(cpus), *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    start, end, stamps, res = None, None, [], {"mode": mode}
    for line in p.stdout:
        if line.startswith("READY"):
            start, res["ray_start_s"] = time.perf_counter(), float(line.split()[1])
        elif line.startswith("{"):
            stamps.append(time.perf_counter())
        elif line.startswith("DONE"):
            end = time.perf_counter()
    exited = time.perf_counter()
    err = p.stderr.read()
    if p.wait() != 0 or start is None or end is None or not stamps:
        raise RuntimeError(f"{mode} run failed ({p.returncode}): {err[-3000:]}")
    # the clock stops when the command returns: the Ray instance was started before it (as a
    # running cluster would be), so its shutdown at the process's exit is timed apart too.
    # Once running: the images whose records arrived after the first arrival, over that time. Ray's
    # records arrive a block at a time, so the first block's (all within moments) are not counted.
    first_block = sum(t - stamps[0] < BLOCK_S for t in stamps)
    after = len(stamps) - first_block  # made while the records from the first block's to the last arrived
    steady = after / (stamps[-1] - stamps[first_block - 1]) if after else float("nan")  # nan: one block
    res.update(seconds=end - start, exit_s=exited - end, first_s=stamps[0] - start, records=len(stamps),
               first_block=first_block, steady_images_per_s=steady,
               # time = start-up + images / rate: what the run cost beyond its images at that rate
               startup_s=end - start - len(stamps) / steady)
    return res


def records(folder: Path) -> dict[str, dict]:
    return {r["image"]: r for r in map(json.loads, (folder / "explanations.jsonl").read_text().splitlines())}


def compare(a: dict[str, dict], b: dict[str, dict]) -> dict:
    """Bit-identical records, or else: same images and classes? the largest score difference."""
    same_classes = a.keys() == b.keys() and all(
        [t["index"] for t in a[k]["top_k"]] == [t["index"] for t in b[k]["top_k"]] for k in a)
    diff = max((abs(x["score"] - y["score"]) for k in a.keys() & b.keys()
                for x, y in zip(a[k]["top_k"], b[k]["top_k"])), default=float("nan"))
    return {"identical": a == b, "same_images_and_classes": same_classes, "max_score_diff": diff}


def ray_vs_local(n: int = 64, arch: str = "vgg16", scale: float = 1.0, repeats: int = 3, cpus: int = 2) -> dict:
    """Images/s of the local CLI and of ``--ray`` on the same folder; returns the numbers."""
    import fcn_cam
    from fcn_cam import zoo

    with tempfile.TemporaryDirectory(prefix="fcncam-ray-") as tmp:
        tmp = Path(tmp)
        folder = tmp / "images"
        folder.mkdir()
        for name, im in photo_variants(n):
            im.save(folder / f"{name}.jpg", quality=90)
        model = tmp / f"{arch}.pt"
        fcn_cam.save(zoo.load_arch(arch, "random"), model)
        runs, load = [], ForeignLoad()
        for i in range(repeats):
            for mode in MODES:
                out = tmp / f"{mode}{i}"
                load.start()
                r = run_worker(mode, str(model), str(folder), str(out), scale, cpus)
                r["foreign_cores"] = load.cores()
                r["images_per_s"] = n / r["seconds"]
                runs.append(r)
                print(json.dumps(r), flush=True)
        same = {m: [compare(records(tmp / f"local{i}"), records(tmp / f"{m}{i}")) for i in range(repeats)]
                for m in MODES[1:]}

    def med(mode: str, key: str) -> float:  # of the runs that have a value (nan: all in one block)
        values = [r[key] for r in runs if r["mode"] == mode and math.isfinite(r[key])]
        return median(values) if values else float("nan")

    res = {"cpu": cpu_line(), "cores": os.cpu_count(), "n": n, "arch": arch, "scale": scale,
           "ray_cpus": cpus, "runs": runs, "records": same}
    for m in MODES:
        res[m] = {k: med(m, k) for k in ("images_per_s", "steady_images_per_s", "startup_s")}
    loc = res["local"]
    for m in MODES[1:]:
        r = res[m]
        r["ratio"] = r["images_per_s"] / loc["images_per_s"]
        r["steady_ratio"] = r["steady_images_per_s"] / loc["steady_images_per_s"]
        r["images_for_80"] = images_for(0.8, loc["startup_s"], loc["steady_images_per_s"], r["startup_s"],
                                        r["steady_images_per_s"])
    res["ray_start_s"] = {m: med(m, "ray_start_s") for m in MODES[1:]}
    res["heavy_processes_after"] = other_heavy_processes()
    return res


def images_for(ratio: float, s_local: float, r_local: float, s_ray: float, r_ray: float) -> int | None:
    """Fewest images for which Ray reaches ``ratio`` of the local images/s, projected from the
    model time = start-up + images / rate: (s_l + N/r_l) / (s_r + N/r_r) ≥ ratio. None if
    Ray's rate once running is below ``ratio`` of the local one (then large folders never get
    there)."""
    per_image = 1 / r_local - ratio / r_ray
    if not per_image > 0 or not math.isfinite(s_local + s_ray):  # also nan: no rate once running
        return None
    return max(0, math.ceil((ratio * s_ray - s_local) / per_image))


def report(res: dict) -> str:
    rows = [[r["mode"], f"{r['seconds']:.1f}", f"{r['first_s']:.1f}", r["images_per_s"],
             r["steady_images_per_s"], f"{r['startup_s']:.1f}", f"{r['exit_s']:.1f}",
             r["foreign_cores"]] for r in res["runs"]]
    loc = res["local"]
    lines = []
    for m, what in (("ray", "a fresh Ray instance (the cluster's first Ray Data job)"),
                    ("ray-warm", "an instance that has run Ray Data before (its helper actors up)")):
        r, n80 = res[m], res[m]["images_for_80"]
        lines += [
            f"**{m}**, on {what}: images/s, whole run: {r['images_per_s']:.3f} against the local CLI's "
            f"{loc['images_per_s']:.3f} → Ray/local = {r['ratio']:.2f} (target ≥ 0.80); once running "
            f"{r['steady_images_per_s']:.3f} against {loc['steady_images_per_s']:.3f} → "
            f"{r['steady_ratio']:.2f}; start-up {r['startup_s']:.1f} s against {loc['startup_s']:.1f} s; "
            "projected from these (time = start-up + images / rate), Ray reaches 80 % of the local "
            "CLI's images/s " + (f"from about {n80:.0f} images" if n80 is not None else
                                 "on no folder (its rate once running is below 80 %)")
            + f"; records identical to the local CLI's: {[x['identical'] for x in res['records'][m]]}; "
            f"starting the instance (outside the clock): {res['ray_start_s'][m]:.1f} s",
            "",
        ]
    return "\n".join([
        f"CPU: {res['cpu']} ({res['cores']} cores); {res['arch']} random weights, scale {res['scale']:g}, "
        f"{res['n']} photos; Ray: local instance with {res['ray_cpus']} CPUs; medians of the runs below",
        "",
        table(["run", "seconds", "first record (s)", "images/s", "images/s once running", "start-up (s)",
               "exit after the command (s)", "CPU of other processes (cores)"], rows),
        "",
        "*seconds*: from the clock's start to the command's return (after its last record and summary); "
        "*images/s once running*: the images whose records reached the driver after the first record "
        "(Ray's arrive a block at a time: the first block's are not counted) over the time from the "
        "first record to the last; *start-up*: seconds − images / that rate, what the run cost beyond "
        "its images; *exit after the command*: the process's exit after that, for Ray runs including "
        "the shutdown of the Ray instance the process had started before the clock (not counted, like "
        "its start).",
        "",
        "The last column is the machine's CPU use outside the benchmark's own process tree; for "
        "Ray runs it includes Ray's worker processes (they are not its children), which run the model.",
        "",
        *lines,
    ]).rstrip()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--arch", default="vgg16")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="Write the JSON and markdown here (a stem).")
    ap.add_argument("--report", type=Path, default=None, help="Only re-print a saved JSON result.")
    a = ap.parse_args(argv)
    res = json.loads(a.report.read_text()) if a.report else ray_vs_local(a.n, a.arch, a.scale, a.repeats)
    text = report(res)
    print(text)
    if a.out:
        a.out.with_suffix(".json").write_text(json.dumps(res, indent=1))
        a.out.with_suffix(".md").write_text("# Ray Data vs local CLI\n\n" + text + "\n")


if __name__ == "__main__":
    main()
