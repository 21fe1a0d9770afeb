"""The results file: markdown tables (and the targets check) from the run's numbers."""

from __future__ import annotations

from collections.abc import Sequence

from fcn_cam import evaluation

from .selection import CRITERION, HISTORY

ROW_KEYS = [
    ("box_acc_swept", "box acc"),
    ("box_fraction_val", "fraction (val)"),
    ("box_acc_20", "box acc @ 0.2"),
    ("whole_image_boxes", "whole-image boxes"),
    ("median_box_area", "median box area"),
    ("pointing", "pointing"),
    ("energy", "energy"),
    ("deletion_auc", "deletion ↓"),
    ("insertion_auc", "insertion ↑"),
    ("top1", "top-1 (ranking)"),
]
VAL_KEYS = [
    ("top1_loc", "top-1 loc"),
    ("box_acc", "box acc"),
    ("box_fraction", "fraction"),
    ("pointing", "pointing"),
    ("energy", "energy"),
    ("top1", "top-1"),
    ("cost_gmac", "GMAC"),
]


def fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, list | tuple):
        return "+".join(f"{x:g}" for x in v)
    return str(v)


def table(
    rows: Sequence[dict], keys: Sequence[tuple[str, str]], first: tuple[str, str] = ("method", "method")
) -> str:
    lines = ["| " + " | ".join([first[1], *(k for _, k in keys)]) + " |", "|---" * (len(keys) + 1) + "|"]
    for r in rows:
        lines.append("| " + " | ".join([str(r[first[0]]), *(fmt(r.get(k)) for k, _ in keys)]) + " |")
    return "\n".join(lines)


def config_table(rows: Sequence[dict], keys=VAL_KEYS) -> str:
    cfg = [("maps", "maps"), ("scale", "scale"), ("pad", "pad"), ("clamp", "clamp")]
    lines = ["| " + " | ".join(k for _, k in [*cfg, *keys]) + " |", "|---" * (len(cfg) + len(keys)) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r[k]) for k, _ in [*cfg, *keys]) + " |")
    return "\n".join(lines)


def defaults_table(defaults: dict) -> str:
    rows = [
        ("maps", defaults["maps"]),
        ("scale", fmt(defaults["scale"])),
        ("pad", defaults["pad"]),
        ("clamp", fmt(defaults["clamp"])),
        ("box_fraction (maps='scores')", f"{defaults['box_fraction']['scores']:.2f}"),
        ("box_fraction (maps='cells')", f"{defaults['box_fraction']['cells']:.2f}"),
        ("rank", defaults["rank"]),
    ]
    return "\n".join(["| keyword | default |", "|---|---|", *(f"| `{k}` | `{v}` |" for k, v in rows)])


def targets(
    rows: dict[str, dict], disc: dict[str, dict], default: str, gradcam: str, gapcam: str, scores_only: str
) -> list[dict]:
    """Each target of issue 7: the two numbers, the margin, met or not."""
    d, g, c = rows[default], rows[gradcam], rows[gapcam]

    def t(name: str, ours: float, ref: float, higher: bool = True) -> dict:
        """A target ``ours ≥ ref`` (``higher``) or ``ours ≤ ref``; margin > 0 means met."""
        margin = ours - ref if higher else ref - ours
        return {"target": name, "ours": ours, "reference": ref, "margin": margin, "met": margin >= 0}

    box = "box_acc_swept"
    return [
        t("box acc ≥ Grad-CAM (FC twin)", d[box], g[box]),
        t("box acc ≥ true GAP-CAM − 0.03", d[box], c[box] - 0.03),
        t("pointing ≥ 0.97", d["pointing"], 0.97),
        t("energy ≥ Grad-CAM (FC twin)", d["energy"], g["energy"]),
        t("deletion AUC ≤ Grad-CAM (FC twin)", d["deletion_auc"], g["deletion_auc"], higher=False),
        t("class discrimination ≥ Grad-CAM (FC twin)", disc[default]["discrimination"],
          disc[gradcam]["discrimination"]),
        t("score-map-only configuration: box acc ≥ 0.50", rows[scores_only][box], 0.50),
    ]


def targets_table(ts: list[dict]) -> str:
    lines = ["| target | ours (default) | reference | margin | met? |", "|---|---|---|---|---|"]
    for t in ts:
        lines.append(
            f"| {t['target']} | {t['ours']:.3f} | {t['reference']:.3f} | {t['margin']:+.3f} | "
            f"{'**met**' if t['met'] else '**missed**'} |"
        )
    return "\n".join(lines)


def evaluate_section(ev: dict) -> list[str]:
    """``fcn_cam.evaluate``'s own table on the test scenes, and the one-implementation check."""
    if not ev:
        return []
    c = ev["check"]
    body = evaluation.markdown(ev).split("\n", 2)[2]  # without its title
    return [
        "## `fcn-cam evaluate` on the test scenes (the command's code)",
        "",
        f"The first {ev['images']} test scenes as PNG + Pascal VOC XML, scored by "
        "`fcn_cam.evaluation.evaluate` "
        f"in {ev['minutes']:.1f} min with the default configuration; every method's box fraction chosen on the "
        "validation scenes (also as VOC). Peers from pytorch-grad-cam on the FC twin.",
        "",
        body.strip(),
        "",
        "Check: the benchmark's own default-configuration maps give box accuracy "
        f"{c['benchmark_maps_box_acc']:.3f} "
        f"on the same scenes at the same fraction ({c['fraction']:g}); `evaluate` gives "
        f"{c['evaluate_box_acc']:.3f}.",
        "",
    ]


def markdown(r: dict) -> str:
    """The whole results file."""
    d = r["defaults"]
    m = r["machine"]
    out = [
        "# Localization benchmark (demo scenes)",
        "",
        f"Command: `{r['command']}`  ",
        f"Date: {r['date']}; {r['minutes']:.1f} min; CPU: {m['cpu']}; {m['cores']} cores, "
        f"{m['threads']} torch threads; torch {m['torch']}; other processes used {m['foreign_cores']:.2f} "
        "cores on average during the run.",
        "",
        f'Scenes (all from held-out-writer digit bitmaps, `split="test"`): validation {r["n"]["val"]} '
        f"(seed {r['seeds']['val']}) — the only data any choice below is made on; test {r['n']['test']} "
        f"(seed {r['seeds']['test']}); two-digit test scenes {r['n']['pairs']} (seed {r['seeds']['pairs']}). "
        f"Twins: `{r['twins']}`. Native top-1 on the test scenes: FC twin {r['accuracy']['fc_twin']:.3f}, "
        f"GAP twin {r['accuracy']['gap_twin']:.3f}.",
        "",
        "Maps are for the true class (GT-known localization). Box accuracy: IoU ≥ 0.5 between the true box "
        "and the box of the largest connected region above a fraction of the map's range; the fraction is "
        "chosen per method on the validation scenes. Pointing game: class-averaged hits, tolerance "
        "15 px × side / 224. Energy: share of the non-negative map inside the box. Deletion / insertion: "
        f"RISE AUCs of the explained model's softmax probability of the true class ({r['rise']['n']} test "
        f"images, {r['rise']['steps']} steps; deletion to zeros, insertion from a blurred image). Top-1: the "
        "class ranking `explain` uses (score maps, `rank=auto`: the strongest window for the FC head) or "
        "the model's own logits.",
        "",
        "## Defaults chosen on validation",
        "",
        f"Criterion: {CRITERION}. {r['n_configs']} configurations swept: map kind × scales × padding × "
        "clamping (scale 3 with `window` and `features` padding only; score maps with `window` padding are "
        "the same input as with `cover`), each with its own box fraction (0.1 … 0.9, then ± 0.05 around "
        f"the best). {HISTORY}",
        "",
        defaults_table(d),
        "",
        "(The other map kind's fraction is swept at the same scales, padding and clamping.) "
        f"Typical default box on the test scenes: median area {r['default_box']['median_area']:.3f} of the "
        f"image, whole-image boxes {r['default_box']['whole']:.3f}.",
        "",
        "Best validation configurations (top 12 by top-1 localization):",
        "",
        config_table(r["val_top"]),
        "",
        "Best of each map kind by the same criterion:",
        "",
        config_table(r["val_best_per_kind"]),
        "",
        "## Test scenes",
        "",
        table(r["rows"], ROW_KEYS),
        "",
        *evaluate_section(r.get("evaluate") or {}),
        "## Class discrimination (two digits of different classes per scene)",
        "",
        "Each digit's class map must peak on that digit (pointing-game tolerance) and nearer to it than to "
        "the other digit; 'both' = scenes where both maps do.",
        "",
        table(r["discrimination"], [("discrimination", "per-digit hits"), ("both_digits", "both")]),
        "",
        "## Ranking accuracy (top-1 on the test scenes)",
        "",
        table(r["ranking"], [("max", "rank max"), ("mean", "rank mean")], first=("scale", "scale")),
        "",
        f"Default configuration (`rank=auto`): {r['default_top1']:.3f}; FC twin at its native size "
        f"{r['accuracy']['fc_twin']:.3f}.",
        "",
        "## Against the issue's targets (default configuration)",
        "",
        targets_table(r["targets"]),
        "",
        "## Checks",
        "",
        f"- The benchmark's default-configuration heatmaps vs `fcn_cam.explain` with the defaults "
        f"({r['explain_check']['images']} test images): max |difference| "
        f"{r['explain_check']['max_abs_diff']:.2e}, "
        f"boxes identical: {fmt(r['explain_check']['same_boxes'])}.",
        f"- GAP-CAM through `convert` vs torchcam's `CAM` on the GAP twin (both min-max normalized, 32 "
        f"images): max |difference| {r['torchcam_cam_max_diff']:.2e}.",
        f"- Grad-CAM, torchcam vs `fcn_cam.gradcam` (FC twin, test scenes): max |difference| "
        f"{r['gradcam_max_diff']:.2e}.",
        "",
        "![examples](localization.png)",
        "",
    ]
    return "\n".join(out)
