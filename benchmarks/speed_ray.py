"""Ray Data against the local CLI: images/s on the same folder, identical records (issue 9).

``ray_vs_local()`` writes a folder of real photos, converts ``arch`` with random weights, then
alternates, ``repeats`` times, a fresh subprocess running ``fcn-cam explain -o`` and one running
``fcn-cam explain --ray auto -o`` on a local 2-CPU Ray instance that the subprocess started
before its clock starts (the cluster is up, as on a real one; starting it is timed apart).
Both clocks include loading the model and writing every output; the Ray one also includes
shipping the model and starting the actors. The records of the two are compared.

    PYTHONPATH=. python benchmarks/speed_ray.py [--n 64] [--arch vgg16] [--scale 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    from benchmarks.common import ForeignLoad, cpu_model, median, other_heavy_processes, photo_variants, table
except ImportError:  # run as a script from benchmarks/
    from common import ForeignLoad, cpu_model, median, other_heavy_processes, photo_variants, table


def worker(mode: str, model: str, folder: str, out: str, scale: float, cpus: int) -> dict:
    """In a fresh process: time one ``fcn-cam explain`` run (``local`` or ``ray``)."""
    from typer.testing import CliRunner

    from fcn_cam.cli import app

    args = ["explain", "--model", model, "--scale", str(scale), "-o", out, folder]
    res = {"mode": mode}
    if mode == "ray":
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        res["ray_start_s"] = time.perf_counter() - t0
        args += ["--ray", "auto"]
    t0 = time.perf_counter()
    r = CliRunner().invoke(app, args)
    res["seconds"] = time.perf_counter() - t0
    res["exit_code"] = r.exit_code
    if r.exit_code != 0:
        res["output"] = r.output[-2000:]
    return res


def run_worker(*args) -> dict:
    code = ("import json, sys; from benchmarks.speed_ray import worker; "
            "print(json.dumps(worker(*json.loads(sys.argv[1]))))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    p = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, env=env)
    lines = [x for x in p.stdout.splitlines() if x.startswith("{")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"worker failed ({p.returncode}): {p.stderr[-3000:]}")
    return json.loads(lines[-1])


def records(folder: Path) -> dict[str, dict]:
    return {r["image"]: r for r in map(json.loads, (folder / "explanations.jsonl").read_text().splitlines())}


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
            for mode in ("local", "ray"):
                out = tmp / f"{mode}{i}"
                load.start()
                r = run_worker(mode, str(model), str(folder), str(out), scale, cpus)
                r["foreign_cores"] = load.cores()
                r["images_per_s"] = n / r["seconds"]
                runs.append(r)
                print(json.dumps(r), flush=True)
        same = all(records(tmp / f"ray{i}") == records(tmp / f"local{i}") for i in range(repeats))
    local = median([r["images_per_s"] for r in runs if r["mode"] == "local"])
    dist = median([r["images_per_s"] for r in runs if r["mode"] == "ray"])
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "n": n, "arch": arch, "scale": scale,
        "ray_cpus": cpus, "runs": runs, "local_images_per_s": local, "ray_images_per_s": dist,
        "ratio": dist / local, "identical_records": same,
        "ray_start_s": median([r["ray_start_s"] for r in runs if r["mode"] == "ray"]),
        "heavy_processes_after": other_heavy_processes(),
    }


def report(res: dict) -> str:
    rows = [[r["mode"], f"{r['seconds']:.1f}", r["images_per_s"], r["foreign_cores"]] for r in res["runs"]]
    return "\n".join([
        f"CPU: {res['cpu']} ({res['cores']} cores); {res['arch']} random weights, scale {res['scale']:g}, "
        f"{res['n']} photos; Ray: local instance with {res['ray_cpus']} CPUs",
        "",
        table(["run", "seconds", "images/s", "other processes (cores)"], rows),
        "",
        f"median images/s: local CLI {res['local_images_per_s']:.3f}, Ray {res['ray_images_per_s']:.3f} "
        f"→ Ray/local = {res['ratio']:.2f} (target ≥ 0.80); records identical: {res['identical_records']}; "
        f"starting the Ray instance (not in the Ray clock): {res['ray_start_s']:.1f} s",
    ])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--arch", default="vgg16")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="Write the JSON and markdown here (a stem).")
    a = ap.parse_args(argv)
    res = ray_vs_local(a.n, a.arch, a.scale, a.repeats)
    text = report(res)
    print(text)
    if a.out:
        a.out.with_suffix(".json").write_text(json.dumps(res, indent=1))
        a.out.with_suffix(".md").write_text("# Ray Data vs local CLI\n\n" + text + "\n")


if __name__ == "__main__":
    main()
