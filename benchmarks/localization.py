"""Localization benchmark: FCN-CAM (score and cell maps) vs true GAP-CAM vs Grad-CAM on the
demo scenes, with fcn-cam's defaults chosen on a validation split.

    python -m benchmarks.loc            # full run, writes benchmarks/results/localization.*
    python -m benchmarks.loc --quick    # smoke run into a temporary directory
    (``python benchmarks/localization.py`` is the same entry point)

Steps: (0) the validation and test scenes are written once as PNGs with Pascal VOC XML boxes
(``loc/voc.py``) and their boxes read back through ``fcn_cam.annotations``, as a user's data
would be; (1) sweep FCN-CAM configurations on the validation scenes and choose the defaults
(``loc/selection.py``); (2) score every method on the test scenes (``loc/scoring.py``, through
``fcn_cam.evaluation``'s functions), thresholds again from validation; (2b) ``fcn_cam.evaluate``
— what ``fcn-cam evaluate`` runs — on the VOC folders: the default configuration against the
peers' methods from pytorch-grad-cam, fractions chosen on the validation scenes; (3) class
discrimination on two-digit scenes; (4) the report (``loc/report.py``). Parts live in
``benchmarks/loc/``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import ForeignLoad, cpu_line
from loc import fcnmaps, methods, report, scoring, selection, voc
from loc.fcnmaps import KINDS, Config, config_maps, pick

from fcn_cam import evaluation
from fcn_cam.annotations import read_annotations
from fcn_cam.demo import Scenes, pair_scenes, scenes
from fcn_cam.demo.showcase import comparison_figure, converted_twins
from fcn_cam.demo.twins import WEIGHTS_PATH, twins
from fcn_cam.metrics import threshold_box
from fcn_cam.settings import PADS

RESULTS = Path(__file__).resolve().parent / "results"
SEEDS = {"val": 101, "test": 202, "pairs": 303}
SINGLE = (1.0, 1.5, 2.0, 3.0)
#: Where the scenes are written as PNG + VOC XML (once per split, seed and count).
SCENES_DIR = Path(tempfile.gettempdir()) / "fcn-cam-loc-scenes"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Bench:
    """The run's data, models and rows."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.val = scenes(args.n_val, seed=SEEDS["val"], split="test")
        self.test = scenes(args.n_test, seed=SEEDS["test"], split="test")
        self.pairs = pair_scenes(args.n_pairs, seed=SEEDS["pairs"], split="test")
        self.folders = {k: self.as_voc(k, getattr(self, k)) for k in ("val", "test")}
        self.hw = self.test.images.shape[1:3]
        self.fc, self.gap = twins()
        self.fcn, self.cam, _ = converted_twins()
        self.rows: dict[str, dict] = {}
        self.disc: dict[str, dict] = {}

    def as_voc(self, split: str, data: Scenes) -> tuple[list[Path], Path]:
        """The scenes as a user's folder (written once), and their boxes read back through
        ``fcn_cam.annotations``: the boxes every score below uses."""
        root = SCENES_DIR / f"{split}-seed{SEEDS[split]}-n{len(data)}"
        # names unique across the splits: evaluate pairs images with boxes by name, and the
        # validation and test folders go into one annotation set
        paths = voc.write_scenes(data, root, prefix=split)
        ann = read_annotations(root / "annotations", data.class_names)
        boxes = np.array([ann[p.name][0].xyxy for p in paths], dtype=np.int64)
        labels = np.array([ann[p.name][0].class_index for p in paths], dtype=np.int64)
        if not (np.array_equal(boxes, data.boxes) and np.array_equal(labels, data.labels)):
            raise RuntimeError(f"{root}: the VOC round trip changed the boxes or classes")
        return paths, root / "annotations"

    def subset(self, n_val: int, n_test: int) -> Bench:
        """The same bench on the first scenes of each split (no rows)."""
        sub = object.__new__(Bench)
        sub.__dict__.update(self.__dict__)
        sub.val, sub.test = (
            Scenes(*(getattr(d, f)[:n] for f in ("images", "labels", "boxes", "masks")), d.class_names)
            for d, n in ((self.val, n_val), (self.test, n_test))
        )
        sub.rows, sub.disc = {}, {}
        return sub

    def add(self, name: str, val: np.ndarray, test: np.ndarray, scorer, top1: float | None, **extra) -> dict:
        row = {"method": name, **scoring.localization(val, self.val.boxes, test, self.test)}
        row.pop("_box_hits")
        if self.args.n_rise:
            row.update(scoring.rise(test, self.test, scorer, self.args.n_rise, self.args.steps))
        row["top1"] = top1
        row.update(extra)
        self.rows[name] = row
        log(
            f"{name:<58} box {row['box_acc_swept']:.3f} (f={row['box_fraction_val']})  "
            f"point {row['pointing']:.3f}"
            f"  energy {row['energy']:.3f}  del {row.get('deletion_auc', float('nan')):.3f}"
        )
        return row


def subset_raw(r: fcnmaps.Raw, n: int) -> fcnmaps.Raw:
    return fcnmaps.Raw(r.scores[:n], r.cells[:n], r.shape, r.pad, r.macs, r.hw)


def fcn_rows(
    b: Bench, fcn, name: str, cfgs: list[Config], val_raws: dict, test_raws: dict, suffix: str = "", **extra
) -> None:
    """Test rows of FCN-CAM configurations (maps from the cached raw forwards)."""
    for cfg in cfgs:
        for raws, data in ((val_raws, b.val), (test_raws, b.test)):  # inputs the sweep did not need
            for s, p in {fcnmaps.input_key(s, cfg.pad, cfg.kind) for s in cfg.scales} - set(raws):
                raws[s, p] = fcnmaps.forward(fcn, data.images, data.labels[:, None], s, p)
        v = config_maps(fcn, val_raws, cfg, b.val.labels[:, None])
        t = config_maps(fcn, test_raws, cfg, b.test.labels[:, None])
        top1 = float((fcnmaps.predictions(fcn, pick(test_raws, cfg)) == b.test.labels).mean())
        b.add(f"{name}{cfg.label()}{suffix}", v, t, b.fc, top1, **extra)


def pair_maps_fcn(b: Bench, cfg: Config, raws: dict) -> list[np.ndarray]:
    return [config_maps(b.fcn, raws, cfg, b.pairs.labels, j) for j in (0, 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small smoke run (writes to a temporary directory)")
    ap.add_argument("--n-val", type=int, default=300)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--n-pairs", type=int, default=300)
    ap.add_argument("--n-stride", type=int, default=300, help="test scenes for the output-stride rows")
    ap.add_argument("--n-rise", type=int, default=100, help="test images scored by deletion/insertion")
    ap.add_argument("--steps", type=int, default=16, help="deletion/insertion steps")
    ap.add_argument("--pads", default=",".join(PADS), help="paddings swept")
    ap.add_argument("--n-eval", type=int, default=300,
                    help="test scenes scored by fcn_cam.evaluate (Score-CAM: ~1-3 s each)")
    ap.add_argument("--eval-methods", default="fcn-cam,Grad-CAM,HiResCAM,Grad-CAM++,Score-CAM",
                    help="methods fcn_cam.evaluate compares")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--render", type=Path, metavar="JSON",
                    help="only rewrite the .md next to a localization.json from it (after a report change)")
    args = ap.parse_args()
    if args.render:
        args.render.with_suffix(".md").write_text(report.markdown(json.loads(args.render.read_text())))
        return
    if args.quick:
        args.n_test, args.n_val, args.n_pairs, args.n_rise, args.steps, args.n_stride = 40, 30, 20, 4, 4, 20
        args.n_eval = 20
    out = args.out or (Path(tempfile.mkdtemp(prefix="locbench-")) if args.quick else RESULTS)
    pads = tuple(args.pads.split(","))
    t0 = time.time()
    load = ForeignLoad()
    torch.manual_seed(0)
    b = Bench(args)
    acc = {
        "fc_twin": float((methods.predict(b.fc, b.test.images) == b.test.labels).mean()),
        "gap_twin": float((methods.predict(b.gap, b.test.images) == b.test.labels).mean()),
    }
    log(f"native top-1: FC twin {acc['fc_twin']:.3f}, GAP twin {acc['gap_twin']:.3f}")

    # 1. defaults on validation
    val_raws = {
        (s, p): fcnmaps.forward(b.fcn, b.val.images, b.val.labels[:, None], s, p)
        for s, p in selection.sweep_keys(pads)
    }
    log(f"validation forwards done ({len(val_raws)} scale × padding)")
    val_rows = [selection.evaluate(b.fcn, val_raws, b.val, c) for c in selection.configs(pads)]
    choice = selection.choose(val_rows, len(b.val))
    for r in sorted(val_rows, key=lambda r: -r["top1_loc"])[:12]:
        log(f"  val {selection.config_of(r).label():<50} top-1 loc {r['top1_loc']:.3f} box {r['box_acc']:.3f} "
            f"point {r['pointing']:.3f} top1 {r['top1']:.3f} {r['cost_gmac']:.2f} GMAC")
    default = selection.config_of(choice)
    other = "scores" if default.kind == "cells" else "cells"
    same_other = Config(other, default.scales, default.pad, default.clamp)
    other_row = selection.evaluate(b.fcn, val_raws, b.val, same_other)  # ("scores", "window") is not swept
    fractions = {default.kind: choice["box_fraction"], other: other_row["box_fraction"]}
    best_kind = {k: selection.choose([r for r in val_rows if r["maps"] == k], len(b.val)) for k in KINDS}
    log(f"default: {default.label()}, fractions {fractions}")

    # 2. test rows
    kind_cfg = {k: selection.config_of(best_kind[k]) for k in KINDS}
    test_raws = b.test_raws = {}
    for key in sorted({k for c in (default, same_other, *kind_cfg.values())
                       for k in fcnmaps.input_keys(SINGLE, [c.pad], [c.kind])}):  # each input once
        test_raws[key] = fcnmaps.forward(b.fcn, b.test.images, b.test.labels[:, None], *key)
    log("test forwards done")
    cfgs: list[Config] = []
    for k in KINDS:
        c = kind_cfg[k]
        fused = max(
            (
                r
                for r in val_rows
                if r["maps"] == k and r["pad"] == c.pad and r["clamp"] == c.clamp and len(r["scale"]) > 1
            ),
            key=lambda r: r["top1_loc"],
        )
        for ss in [*((s,) for s in SINGLE), tuple(fused["scale"]), c.scales]:
            if Config(k, ss, c.pad, c.clamp) not in cfgs:
                cfgs.append(Config(k, ss, c.pad, c.clamp))
    fcn_rows(b, b.fcn, "FCN-CAM ", cfgs, val_raws, test_raws)
    fcn_rows(b, b.fcn, "FCN-CAM default: ", [default], val_raws, test_raws)
    default_name = f"FCN-CAM default: {default.label()}"
    if same_other not in cfgs:
        fcn_rows(b, b.fcn, "FCN-CAM ", [same_other], val_raws, test_raws)
    scores_only = f"FCN-CAM {kind_cfg['scores'].label()}"

    # output stride 8 (half the twins' native 16) for the default settings, both kinds
    # (on the first n_stride test scenes, fractions from the first third of the validation scenes)
    fcn8 = converted_twins(output_stride=8)[0]
    sub = Bench.subset(b, args.n_val // 3, args.n_stride)
    v8 = selection.forwards(fcn8, sub.val, default.scales, [default.pad], [default.kind, other])
    t8 = selection.forwards(fcn8, sub.test, default.scales, [default.pad], [default.kind, other])
    n8 = f" [first {args.n_stride} test scenes]"
    fcn_rows(sub, fcn8, "FCN-CAM stride 8: ", [default, same_other], v8, t8, suffix=n8)
    v16 = {k: subset_raw(r, args.n_val // 3) for k, r in val_raws.items() if k in v8}
    t16 = {k: subset_raw(r, args.n_stride) for k, r in test_raws.items() if k in t8}
    fcn_rows(sub, b.fcn, "FCN-CAM stride 16: ", [default], v16, t16, suffix=n8)
    b.rows.update(sub.rows)
    log("stride 8 done")

    # GAP-CAM, Grad-CAM, baselines
    cam_cfg = Config("scores", (1.0,), "none", False)
    for s in (1.0,):
        c = Config("scores", (s,), "none", False)
        vr, tr = (selection.forwards(b.cam, d, [s], ["none"], ["scores"]) for d in (b.val, b.test))
        v = config_maps(b.cam, vr, c, b.val.labels[:, None])
        t = config_maps(b.cam, tr, c, b.test.labels[:, None])
        top1 = float((fcnmaps.predictions(b.cam, pick(tr, c)) == b.test.labels).mean())
        if c == cam_cfg:
            gap_maps = t
        b.add(
            f"GAP-CAM (GAP twin), scale {s:g}" + (" (native: true CAM)" if c == cam_cfg else ""),
            v,
            t,
            b.gap,
            top1,
        )
    gapcam = "GAP-CAM (GAP twin), scale 1 (native: true CAM)"
    gc_maps = {}
    for label, model in (("FC twin", b.fc), ("GAP twin", b.gap)):
        top1 = float((methods.predict(model, b.test.images) == b.test.labels).mean())
        for impl, fn in (("torchcam", methods.gradcam_torchcam), ("fcn_cam.gradcam", methods.gradcam_ours)):
            t = fn(model, b.test.images, b.test.labels)
            gc_maps[label, impl] = t
            b.add(f"Grad-CAM ({label}, {impl})", fn(model, b.val.images, b.val.labels), t, model, top1)
    gradcam = "Grad-CAM (FC twin, torchcam)"
    gradcam_diff = float(np.abs(gc_maps["FC twin", "torchcam"] - gc_maps["FC twin", "fcn_cam.gradcam"]).max())
    b.add(
        "centre baseline",
        methods.centre_maps(len(b.val), b.hw),
        methods.centre_maps(len(b.test), b.hw),
        b.fc,
        None,
    )
    b.add(
        "random baseline",
        methods.random_maps(len(b.val), b.hw, 1),
        methods.random_maps(len(b.test), b.hw, 2),
        b.fc,
        None,
    )

    # 2b. fcn_cam.evaluate (the command's code) on the VOC folders: default vs the peers
    ev = evaluate_section(b, default, fractions[default.kind], out)

    # 3. class discrimination on two-digit scenes
    disc_cfgs = {default_name: default, f"FCN-CAM {same_other.label()}": same_other}
    for k in KINDS:
        disc_cfgs.setdefault(f"FCN-CAM {kind_cfg[k].label()}", kind_cfg[k])
    need = sorted({fcnmaps.input_key(s, c.pad, c.kind) for c in disc_cfgs.values() for s in c.scales})
    pair_raws = {(s, p): fcnmaps.forward(b.fcn, b.pairs.images, b.pairs.labels, s, p) for s, p in need}
    for name, c in disc_cfgs.items():
        b.disc[name] = scoring.discrimination(pair_maps_fcn(b, c, pair_raws), b.pairs)
    cam_raws = {(1.0, "none"): fcnmaps.forward(b.cam, b.pairs.images, b.pairs.labels, 1.0, "none")}
    b.disc[gapcam] = scoring.discrimination(
        [config_maps(b.cam, cam_raws, cam_cfg, b.pairs.labels, j) for j in (0, 1)], b.pairs
    )
    for label, model in (("FC twin", b.fc), ("GAP twin", b.gap)):
        b.disc[f"Grad-CAM ({label}, torchcam)"] = scoring.discrimination(
            [methods.gradcam_torchcam(model, b.pairs.images, b.pairs.labels[:, j]) for j in (0, 1)], b.pairs
        )
    b.disc["centre baseline"] = scoring.discrimination([methods.centre_maps(len(b.pairs), b.hw)] * 2, b.pairs)
    for name, d in b.disc.items():
        log(f"discrimination {name:<50} {d['discrimination']:.3f} (both {d['both_digits']:.3f})")

    # 4. ranking accuracy, checks, figure, report
    ranking = []
    for s in SINGLE:
        r = {"scale": f"{s:g}"}
        for rank in ("max", "mean"):
            rs = pick(test_raws, Config(default.kind, (s,), default.pad, default.clamp))
            r[rank] = float((fcnmaps.predictions(b.fcn, rs, rank) == b.test.labels).mean())
        ranking.append(r)
    default_top1 = b.rows[default_name]["top1"]
    dmaps = config_maps(b.fcn, test_raws, default, b.test.labels[:, None])
    check = fcnmaps.explain_check(
        b.fcn, default, b.test.images[:16], b.test.labels[:16], dmaps[:16], fractions[default.kind]
    )
    cam_diff = methods.torchcam_cam_check(b.gap, b.cam, b.test.images[:32], b.test.labels[:32])
    box_areas = scoring.box_stats(dmaps, b.test.boxes, fractions[default.kind])

    out.mkdir(parents=True, exist_ok=True)
    fig_rows = []
    kinds_maps = {default.kind: dmaps, other: config_maps(b.fcn, test_raws, same_other, b.test.labels[:, None])}
    for i in range(6):
        maps = [kinds_maps["scores"][i], kinds_maps["cells"][i], gap_maps[i], gc_maps["FC twin", "torchcam"][i]]
        fr = [
            fractions["scores"],
            fractions["cells"],
            b.rows[gapcam]["box_fraction_val"],
            b.rows[gradcam]["box_fraction_val"],
        ]
        fig_rows.append(
            {
                "image": b.test.images[i],
                "truth": b.test.boxes[i],
                "maps": maps,
                "boxes": [threshold_box(m, f) for m, f in zip(maps, fr)],
                "labels": [f"box at {f:.2f}" for f in fr],
            }
        )
    comparison_figure(fig_rows, out / "localization.png")

    elapsed = time.time() - t0
    defaults = {**default.as_dict(), "box_fraction": fractions, "rank": "auto"}
    val_sorted = sorted(val_rows, key=lambda r: (-r["top1_loc"], -r["pointing"], r["cost_gmac"]))
    res = {
        "command": " ".join(["python", "benchmarks/" + Path(__file__).name, *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "minutes": elapsed / 60,
        "machine": {
            "cpu": cpu_line(),
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "foreign_cores": load.cores(),
        },
        "twins": f"{WEIGHTS_PATH.name}, sha256 {sha256(WEIGHTS_PATH)[:12]}",
        "n": {"val": args.n_val, "test": args.n_test, "pairs": args.n_pairs},
        "seeds": SEEDS,
        "rise": {"n": args.n_rise, "steps": args.steps},
        "accuracy": acc,
        "criterion": selection.CRITERION,
        "n_configs": len(val_rows),
        "defaults": defaults,
        "default_box": {"median_area": box_areas["area"], "whole": box_areas["whole"]},
        "validation": val_rows,
        "val_top": val_sorted[:12],
        "val_best_per_kind": [best_kind[k] for k in KINDS],
        "rows": list(b.rows.values()),
        "discrimination": [{"method": k, **v} for k, v in b.disc.items()],
        "ranking": ranking,
        "default_top1": default_top1,
        "targets": report.targets(b.rows, b.disc, default_name, gradcam, gapcam, scores_only),
        "explain_check": check,
        "torchcam_cam_max_diff": cam_diff,
        "gradcam_max_diff": gradcam_diff,
        "evaluate": ev,
    }
    (out / "localization.json").write_text(json.dumps(res, indent=1))
    (out / "localization.md").write_text(report.markdown(res))
    log(f"wrote {out / 'localization.md'} in {elapsed / 60:.1f} min")


def evaluate_section(b: Bench, default: Config, fraction: float, out: Path) -> dict:
    """``fcn_cam.evaluate`` on the first ``n_eval`` test scenes, box fractions chosen on the
    validation scenes, with the default configuration; and the check that its fcn-cam box
    accuracy equals the benchmark's own maps' at the same fraction (one implementation)."""
    n = min(b.args.n_eval, len(b.test))
    if n == 0:
        return {}
    test_paths, ann = b.folders["test"]
    val_paths, val_ann = b.folders["val"]
    merged = {**read_annotations(val_ann, b.test.class_names), **read_annotations(ann, b.test.class_names)}
    t = time.time()
    res = evaluation.evaluate(
        b.fcn, test_paths[:n], merged, validation=val_paths, methods=b.args.eval_methods.split(","),
        faithfulness=n > 0 and b.args.n_rise > 0, steps=b.args.steps, out_dir=out / "evaluate",
        scale=default.scales, maps=default.kind, pad=default.pad, clamp=default.clamp, box_fraction=fraction,
    )
    fr = res["methods"]["fcn-cam"]["box_fraction"]
    dmaps = config_maps(b.fcn, {k: subset_raw(r, n) for k, r in b.test_raws.items()}, default,
                        b.test.labels[:n, None])
    own = scoring.box_stats(dmaps, b.test.boxes[:n], fr)["acc"]
    res["check"] = {"fraction": fr, "benchmark_maps_box_acc": own,
                    "evaluate_box_acc": res["methods"]["fcn-cam"]["box_acc"]}
    res["minutes"] = (time.time() - t) / 60
    log(f"evaluate on {n} test scenes in {res['minutes']:.1f} min; fcn-cam box "
        f"{res['check']['evaluate_box_acc']:.3f} "
        f"(benchmark maps {own:.3f} at f={fr})")
    return res


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


if __name__ == "__main__":
    main()
