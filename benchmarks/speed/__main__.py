"""Entry point: ``python -m benchmarks.speed [--quick] [--only a,b] [--out DIR]``."""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks.common import ForeignLoad, other_heavy_processes, table, wait_idle

from . import __doc__ as DOC
from . import cells, forward, gradcam, head, machine, memory, padding, precision, ray_data, sweep
from .core import RESULTS, Bench, Config

# run order: machine first (the matmul rates every ratio uses), then the sections with targets
SECTIONS = {
    "machine": machine.run, "forward": forward.run, "memory": memory.run, "gradcam": gradcam.run,
    "sweep": sweep.run, "precision": precision.run, "head": head.run, "cells": cells.run,
    "padding": padding.run, "ray": ray_data.run,
}


def header(b: Bench, cmd: str, when: str, times: dict[str, float], foreign: dict[str, float],
           attempts: dict[str, int], busy: list[str], total: float) -> list[str]:
    disturbed = [k for k, v in foreign.items() if v > 0.1]
    lines = [
        "# fcn-cam speed and memory benchmark",
        "",
        f"Command: `{cmd}` (from the repository root)  ",
        f"Date: {when}  ",
        f"Machine: {machine.describe()}; no GPU used  ",
        f"Runtime: {sum(times.values()) / 60:.1f} min of benchmarking "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in times.items())}); {total / 60:.1f} min wall clock  ",
        "CPU used by other processes during each section (cores, /proc/stat): "
        + ", ".join(f"{k} {v:.2f}" for k, v in foreign.items())
        + (f" — **disturbed: {', '.join(disturbed)}**" if disturbed else " (idle machine)")
        + "; re-runs after a disturbance: "
        + (", ".join(f"{k} ×{v - 1}" for k, v in attempts.items() if v > 1) or "none"),
    ]
    if busy:
        lines += ["", f"**Other busy processes at start:** {'; '.join(busy)}"]
    lines += [
        "",
        "VGG16 from torchvision with random weights (nothing is downloaded; timings do not depend on the "
        "weights). Medians of repeated runs after a warm-up; ratios come from the same run, with the runs "
        "of the compared configurations interleaved.",
        "",
        "## Targets (issue 9)",
        "",
        table(["target", "measured", "verdict", "note"],
              [[t.name, t.measured, {True: "met", False: "**MISSED**", None: "not measured"}[t.met], t.note]
               for t in b.targets]),
    ]
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=DOC,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run (results to a temporary directory)")
    ap.add_argument("--only", help=f"comma-separated sections (default all: {','.join(SECTIONS)})")
    ap.add_argument("--out", type=Path, help="results directory (default benchmarks/results, or a temporary "
                    "directory with --quick)")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="MIN",
                    help="first wait up to MIN minutes for other processes to go idle")
    ap.add_argument("--retries", type=int, default=None, help="re-run a section disturbed by other processes "
                    "up to this many times (default 1, 0 with --quick)")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",")] if args.only else list(SECTIONS)
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    cfg = Config.smoke() if args.quick else Config.full()
    retries = args.retries if args.retries is not None else (0 if args.quick else 1)
    out = args.out or (Path(tempfile.gettempdir()) / "fcncam-speed-quick" if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    if args.wait_idle:
        print(f"waiting up to {args.wait_idle:g} min for an idle machine ...", flush=True)
        wait_idle(args.wait_idle)
    busy = other_heavy_processes()
    if busy:
        print("WARNING: other busy processes, timings will be off:\n  " + "\n  ".join(busy), flush=True)
    print(machine.describe(), flush=True)

    b = Bench(cfg, out)
    t_start = time.perf_counter()
    times, foreign, attempts = {}, {}, {}
    cmd = "python -m benchmarks.speed" + "".join(" " + shlex.quote(a) for a in (argv or sys.argv[1:]))
    mon = ForeignLoad()
    todo = [s for s in SECTIONS if s in only]
    for name in todo:
        for attempt in range(1, retries + 2):
            n_md, n_targets = len(b.md), len(b.targets)
            mon.start()
            t0 = time.perf_counter()
            SECTIONS[name](b)
            times[name], foreign[name], attempts[name] = time.perf_counter() - t0, mon.cores(), attempt
            print(f"  [{name}: {times[name]:.0f} s; other processes used {foreign[name]:.2f} cores]",
                  flush=True)
            if foreign[name] <= 0.1 or attempt > retries:
                break
            del b.md[n_md:], b.targets[n_targets:]
            print(f"  {name} disturbed: waiting for an idle machine, then running it again", flush=True)
            wait_idle(3)
        # written after every section: an interrupted run still leaves what it measured
        write(b, out, cmd, times, foreign, attempts, busy, time.perf_counter() - t_start,
              [s for s in todo if s not in times])
    print(f"\nwrote {out / 'speed.md'} and speed.json ({(time.perf_counter() - t_start) / 60:.1f} min)")
    for t in b.targets:
        print(f"  {'met' if t.met else 'MISSED' if t.met is False else 'n/a':>6}  {t.name}: {t.measured}")


def write(b: Bench, out: Path, cmd: str, times: dict[str, float], foreign: dict[str, float],
          attempts: dict[str, int], busy: list[str], total: float, pending: list[str]) -> None:
    when = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    b.res["run"] = {"command": cmd, "date": when, "machine": machine.describe(), "total_s": total,
                    "section_s": times, "foreign_load_cores": foreign, "attempts": attempts,
                    "busy_processes_at_start": busy, "config": asdict(b.cfg), "not_run_yet": pending,
                    "targets": [asdict(t) for t in b.targets]}
    md = header(b, cmd, when, times, foreign, attempts, busy, total)
    if pending:
        md[2:2] = [f"**Partial: sections not run (yet): {', '.join(pending)}**  "]
    (out / "speed.md").write_text("\n".join(md + b.md) + "\n")
    (out / "speed.json").write_text(json.dumps(b.res, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
