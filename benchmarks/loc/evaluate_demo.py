"""``fcn-cam evaluate`` on fresh demo scenes: fcn-cam (defaults) vs the peers, written to
``benchmarks/results/evaluate_demo.{md,json}``.

    python -m benchmarks.loc.evaluate_demo --n 300 --seed 404          # the committed run
    python -m benchmarks.loc.evaluate_demo --n 1000 --methods fcn-cam --no-faithfulness --time-only

The scenes are written once as PNGs with Pascal VOC XML boxes (``loc/voc.py``) and scored by
:func:`fcn_cam.evaluation.evaluate`: the numbers are what a user gets from the command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import ForeignLoad, cpu_line
from benchmarks.loc.voc import write_scenes
from fcn_cam.annotations import read_annotations
from fcn_cam.demo import scenes
from fcn_cam.evaluation import evaluate
from fcn_cam.zoo import load_arch

RESULTS = Path(__file__).resolve().parents[1] / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=404, help="scene seed (not used by any other benchmark)")
    ap.add_argument("--model", default="demo-fc", choices=("demo-fc", "demo-gap"))
    ap.add_argument("--methods", default=None, help="comma-separated (default: fcn-cam and every peer)")
    ap.add_argument("--split", type=float, default=None)
    ap.add_argument("--validation", type=int, default=0,
                    help="choose every method's box fraction on this many separate validation scenes "
                         "(the localization benchmark's validation seed 101)")
    ap.add_argument("--no-faithfulness", action="store_true")
    ap.add_argument(
        "--data", type=Path, default=None, help="where the scenes are written (default: a temp dir)"
    )
    ap.add_argument("--out", type=Path, default=None, help="evaluation output folder")
    ap.add_argument("--name", default="evaluate_demo", help="results file stem in benchmarks/results")
    ap.add_argument("--time-only", action="store_true", help="print the timing, write no results file")
    args = ap.parse_args()
    data = args.data or Path(tempfile.mkdtemp(prefix="evaldemo-"))
    t0 = time.time()
    d = scenes(args.n, seed=args.seed, split="test")
    paths = write_scenes(d, data)
    ann = read_annotations(data / "annotations", d.class_names)
    val_paths = None
    if args.validation:
        v = scenes(args.validation, seed=101, split="test")
        val_paths = write_scenes(v, data / "validation", prefix="val")
        ann.update(read_annotations(data / "validation" / "annotations", d.class_names))
    t_write = time.time() - t0
    fcn = load_arch(args.model)
    load = ForeignLoad()
    t1 = time.time()
    evaluate(
        fcn,
        paths,
        ann,
        validation=val_paths,
        methods=args.methods.split(",") if args.methods else None,
        split=args.split,
        faithfulness=not args.no_faithfulness,
        out_dir=args.out or data / "evaluation",
        progress=True,
    )
    wall = time.time() - t1
    machine = (
        f"CPU: {cpu_line()}; {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; torch "
        f"{torch.__version__}; other processes used {load.cores():.2f} cores on average during the run"
    )
    print(
        f"scenes written in {t_write:.1f} s; evaluate {args.n} images in {wall:.1f} s "
        f"({wall / args.n:.3f} s/image)"
    )
    print(machine)
    if args.time_only:
        return
    cmd = "python -m " + __spec__.name + " " + " ".join(sys.argv[1:])
    md = (
        (data / "evaluation" / "evaluation.md").read_text()
        if args.out is None
        else (args.out / "evaluation.md").read_text()
    )
    val = ""
    if args.validation:
        val = (f"Box fractions chosen on {args.validation} separate validation scenes "
               f'(`scenes({args.validation}, seed=101, split="test")`, the localization benchmark\'s '
               "validation seed). ")
    head = (
        f"Command: `{cmd}`  \nDate: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {args.n} fresh demo "
        f'scenes (`scenes({args.n}, seed={args.seed}, split="test")`, a seed no other benchmark uses), '
        "written as "
        f"PNG + Pascal VOC XML and scored by `fcn_cam.evaluation.evaluate` (what `fcn-cam evaluate` runs); "
        f"wall time {wall / 60:.1f} min ({wall / args.n:.2f} s per scored image, every listed method"
        f"{'' if args.no_faithfulness else ' and deletion/insertion'}"
        f"{', validation scenes included' if args.validation else ''}). "
        f"{machine}.\n\n{val}"
    )
    body = md.replace("# fcn-cam evaluation\n\n", "")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text(f"# `fcn-cam evaluate` on demo scenes\n\n{head}{body}")
    out = json.loads(((args.out or data / "evaluation") / "evaluation.json").read_text())
    out.update({"command": cmd, "wall_seconds": wall, "machine": machine})
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS / args.name}.md")


if __name__ == "__main__":
    main()
