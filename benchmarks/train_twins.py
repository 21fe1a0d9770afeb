"""Train the demo twins (FC-head net and its GAP twin) from scratch on CPU.

Both twins see the same pre-generated training scenes in the same order, with the same
recipe; only the head differs. Writes the weights to ``fcn_cam/demo/twins.pt`` and a report to
``benchmarks/results/twins.md`` (+ ``twins.json``).

Usage::

    python benchmarks/train_twins.py              # the shipped recipe
    python benchmarks/train_twins.py --stats      # print MEAN/STD for fcn_cam/demo/twins.py
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

# the submodule, not the re-exported function of the same name
T = importlib.import_module("fcn_cam.demo.twins")
make_scenes = importlib.import_module("fcn_cam.demo.scenes").scenes

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SEED, VAL_SEED, TEST_SEED = 1, 2, 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train", type=int, default=40_000, help="training scenes (split=train)")
    p.add_argument("--val", type=int, default=1_000, help="validation scenes (split=train)")
    p.add_argument("--test", type=int, default=2_000, help="test scenes (split=test)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    p.add_argument("--wd", type=float, default=0.05, help="AdamW weight decay")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="torch seed (init, shuffling, dropout)")
    p.add_argument("--only", choices=["fc", "gap"], help="train one twin (for experiments)")
    p.add_argument("--out", type=Path, default=T.WEIGHTS_PATH)
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--stats", action="store_true", help="print training-set MEAN/STD and exit")
    return p.parse_args(argv)


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC batch -> normalized float NCHW, channels-last in memory (faster on CPU)."""
    return T.preprocess(images).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch: int = 250) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(labels), batch):
        logits = model(to_input(images[i : i + batch]))
        correct += int((logits.argmax(1).numpy() == labels[i : i + batch]).sum())
    return correct / len(labels)


def train_one(
    name: str, train, val, args: argparse.Namespace
) -> tuple[nn.Module, dict[str, object]]:
    """Train one twin with the shared recipe; return it and its log."""
    torch.manual_seed(args.seed)
    model = (T.build_fc_twin if name == "fc" else T.build_gap_twin)(len(train.class_names))
    model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = math.ceil(len(train) / args.batch)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.15
    )
    # the same shuffling for both twins, independent of the init draws above
    order_gen = torch.Generator().manual_seed(args.seed)
    labels = torch.as_tensor(train.labels)
    log: dict[str, object] = {"epochs": []}
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(train), generator=order_gen).numpy()
        total, seen = 0.0, 0
        for step in range(steps_per_epoch):
            idx = np.sort(perm[step * args.batch : (step + 1) * args.batch])
            x, y = to_input(train.images[idx]), labels[idx]
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        val_acc = accuracy(model, val.images, val.labels)
        elapsed = time.perf_counter() - t0
        log["epochs"].append(
            {"epoch": epoch + 1, "loss": total / seen, "val_acc": val_acc, "elapsed_s": elapsed}
        )
        print(
            f"[{name}] epoch {epoch + 1}/{args.epochs} loss {total / seen:.4f} "
            f"val {val_acc:.4f} ({elapsed:.0f} s)",
            flush=True,
        )
    log["train_seconds"] = time.perf_counter() - t0
    return model.eval(), log


def stats() -> None:
    s = make_scenes(4096, seed=TRAIN_SEED, split="train")
    x = s.images.reshape(-1, 3).astype(np.float64) / 255
    print("MEAN =", tuple(np.round(x.mean(0), 4).tolist()))
    print("STD =", tuple(np.round(x.std(0), 4).tolist()))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.stats:
        stats()
        return
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()

    t0 = time.perf_counter()
    train = make_scenes(args.train, seed=TRAIN_SEED, split="train")
    gen_seconds = time.perf_counter() - t0
    val = make_scenes(args.val, seed=VAL_SEED, split="train")
    test = make_scenes(args.test, seed=TEST_SEED, split="test")
    print(f"generated {args.train} training scenes in {gen_seconds:.1f} s", flush=True)

    names = [args.only] if args.only else ["fc", "gap"]
    models, logs, acc = {}, {}, {}
    for name in names:
        models[name], logs[name] = train_one(name, train, val, args)
        acc[name] = accuracy(models[name], test.images, test.labels)
        print(f"[{name}] test accuracy {acc[name]:.4f}", flush=True)

    recipe = {
        "train_scenes": args.train,
        "train_seed": TRAIN_SEED,
        "val_scenes": args.val,
        "val_seed": VAL_SEED,
        "test_scenes": args.test,
        "test_seed": TEST_SEED,
        "digits": "train split (load_digits[:1437]) for train/val, test split for test",
        "epochs": args.epochs,
        "batch": args.batch,
        "optimizer": f"AdamW(lr={args.lr}, weight_decay={args.wd})",
        "schedule": "OneCycleLR(pct_start=0.15, cosine)",
        "loss": "cross-entropy",
        "augmentation": "none (every scene is a fresh random composition)",
        "torch_seed": args.seed,
        "threads": args.threads,
    }
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}
    meta = {
        "input_size": T.INPUT_SIZE,
        "feature_size": T.FEATURE_SIZE,
        "feature_channels": T.FEATURE_CHANNELS,
        "blocks": [list(b) for b in T.BLOCKS],
        "hidden": T.HIDDEN,
        "mean": list(T.MEAN),
        "std": list(T.STD),
        "class_names": list(train.class_names),
        "recipe": recipe,
        "accuracy": acc,
        "params": params,
        "train_seconds": {n: logs[n]["train_seconds"] for n in names},
    }
    if args.only is None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        # plain contiguous fp32 tensors + plain metadata: loads with weights_only=True
        state = {
            n: {k: v.contiguous() for k, v in m.state_dict().items()} for n, m in models.items()
        }
        torch.save({**state, "meta": meta}, args.out)
        print(f"saved {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)")
    report = {
        **meta,
        "epochs_log": logs,
        "scene_generation": {
            "scenes": args.train,
            "seconds": gen_seconds,
            "scenes_per_s": args.train / gen_seconds,
        },
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "machine": {
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
        },
        "checkpoint_bytes": args.out.stat().st_size if args.out.exists() else None,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.only is None else f"-{args.only}"
    (args.results / f"twins{suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.results / f"twins{suffix}.md").write_text(render_md(report))


def render_md(r: dict) -> str:
    """The human-readable report."""
    rc = r["recipe"]
    lines = [
        "# Demo twins: training record",
        "",
        "Produced by `benchmarks/train_twins.py`; weights in `fcn_cam/demo/twins.pt`.",
        "",
        f"Command: `{r['command']}`",
        "",
        "## Data",
        "",
        f"- scenes: `fcn_cam.demo.scenes`, {r['input_size']}x{r['input_size']} RGB, "
        f"{len(r['class_names'])} classes ({', '.join(r['class_names'])})",
        f"- train: {rc['train_scenes']} scenes, seed {rc['train_seed']}, digit bitmaps "
        "`load_digits[:1437]`",
        f"- validation (logged per epoch, not used for selection): {rc['val_scenes']} scenes, "
        f"seed {rc['val_seed']}, same bitmaps",
        f"- test: {rc['test_scenes']} scenes, seed {rc['test_seed']}, held-out bitmaps "
        "`load_digits[1437:]` (other writers)",
        f"- generation: {r['scene_generation']['scenes']} scenes in "
        f"{r['scene_generation']['seconds']:.1f} s "
        f"({r['scene_generation']['scenes_per_s']:.0f} scenes/s, one process)",
        "",
        "## Architecture",
        "",
        f"- shared trunk: blocks {r['blocks']} of 3x3 conv + BatchNorm + ReLU, each followed "
        f"by 2x2 max-pool -> {r['feature_channels']}x{r['feature_size']}x{r['feature_size']}",
        f"- FC twin: flatten -> Linear({r['feature_channels'] * r['feature_size'] ** 2}, "
        f"{r['hidden']}) -> ReLU -> Dropout(0.5) -> Linear({r['hidden']}, {r['hidden']}) -> "
        f"ReLU -> Dropout(0.5) -> Linear({r['hidden']}, {len(r['class_names'])})",
        f"- GAP twin: AdaptiveAvgPool2d(1) -> flatten -> Linear({r['feature_channels']}, "
        f"{len(r['class_names'])})",
        f"- normalization: `(img / 255 - mean) / std`, mean {r['mean']}, std {r['std']}",
        "",
        "## Recipe (identical for both twins)",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in rc.items() if not k.endswith(("_scenes", "_seed"))]
    lines += [
        "",
        "## Results",
        "",
        "| twin | params | epochs | train wall time | test accuracy |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in r["accuracy"]:
        lines.append(
            f"| {name} | {r['params'][name]:,} | {rc['epochs']} | "
            f"{r['train_seconds'][name] / 60:.1f} min | {r['accuracy'][name]:.2%} |"
        )
    lines += ["", "Per epoch:", "", "| twin | epoch | train loss | val acc | elapsed |"]
    lines.append("| --- | ---: | ---: | ---: | ---: |")
    for name, log in r["epochs_log"].items():
        for e in log["epochs"]:
            lines.append(
                f"| {name} | {e['epoch']} | {e['loss']:.4f} | {e['val_acc']:.2%} | "
                f"{e['elapsed_s']:.0f} s |"
            )
    m = r["machine"]
    size = r["checkpoint_bytes"]
    lines += [
        "",
        "## Machine",
        "",
        f"- {m['cpus']} CPU cores, {rc['threads']} torch threads, no GPU; torch {m['torch']}, "
        f"Python {m['python']}",
        f"- load average at start {tuple(round(v, 2) for v in m['loadavg_start'])}, at end "
        f"{tuple(round(v, 2) for v in m['loadavg_end'])} (the machine was shared with other "
        "jobs, so wall times are upper bounds for an idle machine)",
    ]
    if size:
        lines.append(f"- checkpoint: {size / 2**20:.1f} MiB (fp32)")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
