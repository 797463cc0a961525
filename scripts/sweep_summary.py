"""Gather every run's ``summary.json`` under a sweep directory into one table and a plot.

    python scripts/sweep_summary.py multirun/pebble_halfcheetah/2026-11-23_10-00-00 [--x num_labels]

Writes ``summary.csv`` and ``summary.md`` (one row per run, then one per configuration with
mean ± std over seeds) and ``summary.png`` (true return vs ``--x``, mean and spread over seeds,
one line per configuration) into the sweep directory (or ``--out``).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from pbrl.errors import ConfigError, require_extra

COLUMNS = [
    "run",
    "overrides",  # the job's own overrides: what sets it apart from the sweep's other jobs
    "exp",
    "algo",
    "env_id",
    "seed",
    "total_timesteps",
    "num_labels",
    "eval_true_return_mean",
    "eval_true_return_std",
    "random_true_return_mean",
    "reward_model_test_accuracy",
    "wall_time_s",
    "peak_rss_mb",
]


# The override that moves a run along each x axis: dropped from the grouping key.
X_OVERRIDE = {"num_labels": "max_feedback=", "total_timesteps": "total_timesteps="}


def load_runs(root: Path, x: str = "num_labels") -> list[dict]:
    runs = []
    for path in sorted(root.rglob("summary.json")):
        summary = json.loads(path.read_text())
        summary["run"] = str(path.parent.relative_to(root))
        overrides = path.parent / ".hydra" / "overrides.yaml"
        summary["overrides"] = _config_key(overrides, ("hydra.",))
        summary["configuration"] = _config_key(overrides, ("seed=", "hydra.", X_OVERRIDE[x]))
        runs.append(summary)
    return runs


def _config_key(overrides: Path, drop: tuple[str, ...]) -> str:
    """A run's configuration without its seed and x-axis override, for grouping."""
    if not overrides.exists():
        return ""
    import yaml

    items = yaml.safe_load(overrides.read_text()) or []
    return " ".join(o for o in items if not o.startswith(drop))


def group(runs: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        groups[r["configuration"] or f"{r['exp']} {r['algo']}"].append(r)
    return dict(groups)


def fmt(v: object) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("sweep_dir", type=Path)
    p.add_argument(
        "--x",
        default="num_labels",
        choices=["num_labels", "total_timesteps"],
        help="x axis of the plot",
    )
    p.add_argument("--out", type=Path, help="output folder (default: the sweep directory)")
    args = p.parse_args(argv)
    if not args.sweep_dir.is_dir():
        p.error(f"{args.sweep_dir} is not a directory: pass a Hydra multirun directory")
    runs = load_runs(args.sweep_dir, args.x)
    if not runs:
        p.error(f"no summary.json under {args.sweep_dir}: did the sweep's runs finish?")
    out = args.out or args.sweep_dir
    out.mkdir(parents=True, exist_ok=True)

    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*COLUMNS, "configuration"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(runs)

    groups = group(runs)
    lines = [
        "| configuration | seeds | labels | steps | true return (mean ± std) | random | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, rs in groups.items():
        ret = np.array([r["eval_true_return_mean"] for r in rs])
        lines.append(
            f"| {key} | {len(rs)} | {np.mean([r['num_labels'] for r in rs]):.0f} | "
            f"{np.mean([r['total_timesteps'] for r in rs]):.0f} | "
            f"{ret.mean():.1f} ± {ret.std():.1f} | "
            f"{np.mean([r['random_true_return_mean'] for r in rs]):.1f} | "
            f"{np.mean([r['wall_time_s'] for r in rs]):.0f} |"
        )
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in COLUMNS) + " |" for r in runs]
    table = "\n".join(lines)
    (out / "summary.md").write_text(table + "\n")
    print(table)

    try:
        require_extra("sweep", ("matplotlib",), "sweep_summary.py's plot")
    except ConfigError as exc:
        p.exit(2, f"sweep_summary.py: error: {exc}\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_x: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for key, rs in groups.items():
        for r in rs:
            by_x[key][float(r[args.x])].append(float(r["eval_true_return_mean"]))
    for key, points in by_x.items():
        xs = np.array(sorted(points))
        mean = np.array([np.mean(points[x]) for x in xs])
        std = np.array([np.std(points[x]) for x in xs])
        ax.plot(xs, mean, marker="o", label=key or "run")
        ax.fill_between(xs, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel(args.x.replace("_", " "))
    ax.set_ylabel("true return (eval)")
    ax.set_title(str(args.sweep_dir.name))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "summary.png", dpi=120)
    print(f"wrote {out / 'summary.csv'}, {out / 'summary.md'}, {out / 'summary.png'}")


if __name__ == "__main__":
    main()
