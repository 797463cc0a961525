"""``python -m pbrl.regret``: analyse delivery-domain preference data under both models.

``fit``   k-fold likelihood analysis with the board's true reward (only the scale fitted)
          and reward learning, per preference model; prints a table, writes JSON.
``stats`` per-pair differences (second minus first) in partial return, start value,
          end value and regret; writes ``.npz``.

PAIRS.npz holds ``starts [N, 2, 2]`` (row, col of each segment's start), ``moves
[N, 2, T, 2]`` (row/column deltas; ``(0, 0)`` once the episode has ended) and ``labels
[N]`` in {0, 0.5, 1} (1 = second segment preferred).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pbrl.envs.delivery import TRUE_WEIGHTS, Board, BoardError
from pbrl.regret.learning import (
    PairData,
    PolicyLibrary,
    fit_reward,
    kfold,
    mean_scaled_return,
    predict_logits,
)
from pbrl.regret.mdp import (
    PlanningError,
    SegmentError,
    SegmentStats,
    encode_segments,
    segment_stats,
    value_iteration,
)
from pbrl.regret.preference import MODELS, accuracy, fit_scale, log_likelihood, utility


class InputError(ValueError):
    """Bad command-line input: reported as one line, exit code 2."""


def load_pairs(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``starts [N, 2, 2]``, ``moves [N, 2, T, 2]``, ``labels [N]`` from an ``.npz``, checked."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"pairs file {path} does not exist: pass --pairs PATH to an .npz file")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:  # any unreadable file is the same user error
        raise InputError(
            f"{path} is not a readable .npz file ({exc}): write it with np.savez"
        ) from exc
    missing = [k for k in ("starts", "moves", "labels") if k not in arrays]
    if missing:
        raise InputError(
            f"{path} lacks array(s) {missing}: it needs starts (N,2,2), moves (N,2,T,2), labels (N,)"
        )
    starts, moves, labels = arrays["starts"], arrays["moves"], arrays["labels"]
    n = labels.shape[0] if labels.ndim == 1 else -1
    if labels.ndim != 1 or n == 0:
        raise InputError(f"labels must have shape (N,) with N >= 1, got {labels.shape}")
    if starts.shape != (n, 2, 2):
        raise InputError(f"starts must have shape (N={n}, 2, 2), got {starts.shape}")
    if moves.ndim != 4 or moves.shape[:2] != (n, 2) or moves.shape[3] != 2 or moves.shape[2] < 1:
        raise InputError(f"moves must have shape (N={n}, 2, T, 2), got {moves.shape}")
    for name, arr in (("starts", starts), ("moves", moves)):
        if not np.issubdtype(arr.dtype, np.number) or not np.all(np.mod(arr, 1) == 0):
            raise InputError(
                f"{name} must hold integers (cell rows/columns), got dtype {arr.dtype}"
            )
    if not np.issubdtype(labels.dtype, np.number):
        raise InputError(f"labels must be numbers 0, 0.5 or 1, got dtype {labels.dtype}")
    labels = labels.astype(np.float64)
    bad = ~np.isin(labels, (0.0, 0.5, 1.0))
    if bad.any():
        raise InputError(
            f"labels {np.unique(labels[bad])[:5].tolist()} are invalid: use 0 (first preferred), "
            "1 (second preferred) or 0.5 (equal); drop skipped pairs"
        )
    return starts.astype(np.int64), moves.astype(np.int64), labels


def true_stats(board: Board, starts: np.ndarray, moves: np.ndarray, gamma: float) -> SegmentStats:
    """Stats of all ``2N`` segments (pair-major) under the board's true reward."""
    tables = board.tables
    n, horizon = starts.shape[0], moves.shape[2]
    segments = encode_segments(tables, starts.reshape(2 * n, 2), moves.reshape(2 * n, horizon, 2))
    return segment_stats(
        tables, segments, TRUE_WEIGHTS, value_iteration(tables, TRUE_WEIGHTS, gamma)
    )


def _models(chosen: list[str] | None) -> list[str]:
    if not chosen or "both" in chosen:
        return list(MODELS)
    return list(dict.fromkeys(chosen))


# -- fit --------------------------------------------------------------------------------------
def run_fit(args: argparse.Namespace) -> dict[str, Any]:
    board = Board.load(args.board)
    tables = board.tables
    starts, moves, labels = load_pairs(args.pairs)
    n = len(labels)
    if not 2 <= args.folds <= n:
        raise InputError(f"--folds {args.folds} is invalid for {n} pairs: use 2 <= folds <= {n}")
    data = PairData.from_arrays(tables, starts, moves, labels)
    stats = true_stats(board, starts, moves, args.gamma)
    rng = np.random.default_rng(args.seed)
    folds = kfold(n, args.folds, rng)
    library = PolicyLibrary.build(tables, rng, n_rewards=args.library_size)

    result: dict[str, Any] = {
        "board": str(args.board),
        "pairs": str(args.pairs),
        "n_pairs": n,
        "n_ties": int(np.sum(labels == 0.5)),
        "folds": args.folds,
        "seed": args.seed,
        "gamma": args.gamma,
        "library_policies": len(library),
        "iterations": args.iterations,
        "models": {},
    }
    for model in _models(args.model):
        u = utility(stats, model).reshape(n, 2)
        x = u[:, 0] - u[:, 1]  # logit of "first preferred" at scale 1
        true_logit, learned_logit = np.zeros(n), np.zeros(n)
        scales, weights, scaled_returns = [], [], []
        for test in folds:
            train = np.setdiff1d(np.arange(n), test)
            # (a) the true reward, only the preference model's scale fitted
            scale = fit_scale(x[train], labels[train])
            scales.append(scale)
            true_logit[test] = scale * x[test]
            # (b) a reward learned from the training folds under this model
            fit = fit_reward(
                data.subset(train),
                model,
                library,
                iterations=args.iterations,
                learning_rate=args.learning_rate,
                temperature=args.temperature,
            )
            weights.append(fit.w.tolist())
            learned_logit[test] = predict_logits(
                fit.w, data.subset(test), model, library, args.temperature
            )
            scaled_returns.append(mean_scaled_return(tables, fit.w))
        result["models"][model] = {
            "true_reward": {
                "heldout_log_likelihood": float(log_likelihood(true_logit, labels).mean()),
                "heldout_accuracy": accuracy(true_logit, labels),
                "scale": float(np.mean(scales)),
                "scale_per_fold": scales,
            },
            "learned_reward": {
                "heldout_log_likelihood": float(log_likelihood(learned_logit, labels).mean()),
                "heldout_accuracy": accuracy(learned_logit, labels),
                "mean_scaled_return": float(np.mean(scaled_returns)),
                "scaled_return_per_fold": scaled_returns,
                "w_per_fold": weights,
            },
        }
    return result


def _fit_table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['n_pairs']} pairs ({result['n_ties']} ties), {result['folds']}-fold, "
        f"library of {result['library_policies']} policies",
        "",
        "| model | true w: held-out LL | true w: accuracy | fitted scale "
        "| learned w: held-out LL | learned w: accuracy | learned w: mean scaled return |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, r in result["models"].items():
        t, lw = r["true_reward"], r["learned_reward"]
        lines.append(
            f"| {model} | {t['heldout_log_likelihood']:.4f} | {t['heldout_accuracy']:.3f} "
            f"| {t['scale']:.3g} | {lw['heldout_log_likelihood']:.4f} "
            f"| {lw['heldout_accuracy']:.3f} | {lw['mean_scaled_return']:.3f} |"
        )
    return "\n".join(lines)


# -- stats ------------------------------------------------------------------------------------
def run_stats(args: argparse.Namespace) -> dict[str, np.ndarray]:
    starts, moves, labels = load_pairs(args.pairs)
    n = len(labels)
    stats = true_stats(Board.load(args.board), starts, moves, args.gamma)

    def second_minus_first(x: np.ndarray) -> np.ndarray:
        return x.reshape(n, 2) @ np.array([-1.0, 1.0])

    return {
        "partial_return": second_minus_first(stats.partial_return),
        "start_value": second_minus_first(stats.start_value),
        "end_value": second_minus_first(stats.end_value),
        "regret": second_minus_first(stats.regret),
        "labels": labels,
    }


# -- entry point ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pbrl.regret", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--board", required=True, help="board JSON file (list of rows of codes)")
        p.add_argument("--pairs", required=True, help="PAIRS.npz with starts, moves, labels")
        p.add_argument(
            "--gamma", type=float, default=1.0, help="discount of the exact V* (1 = paper)"
        )

    fit = sub.add_parser("fit", help="likelihood analysis and reward learning, k-fold")
    common(fit)
    fit.add_argument(
        "--model",
        action="append",
        choices=[*MODELS, "both"],
        help="preference model(s); repeat the flag or say 'both' (default: both)",
    )
    fit.add_argument("--folds", type=int, default=10, help="k of the k-fold cross-validation")
    fit.add_argument("--out", help="JSON output (default: PAIRS.regret_fit.json)")
    fit.add_argument("--seed", type=int, default=0, help="folds and policy-library seed")
    fit.add_argument("--iterations", type=int, default=5000, help="Adam iterations per fit")
    fit.add_argument("--learning-rate", type=float, default=0.5, help="Adam learning rate")
    fit.add_argument("--temperature", type=float, default=1e-3, help="library soft-max temperature")
    fit.add_argument("--library-size", type=int, default=1000, help="random rewards in the library")

    stats = sub.add_parser("stats", help="per-pair stat differences (second minus first)")
    common(stats)
    stats.add_argument("--out", required=True, help="STATS.npz to write")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # fits of a 6-vector: extra threads only spin (a default fit took 12 min, now 1 min)
    torch.set_num_threads(1)
    try:
        if args.command == "fit":
            result = run_fit(args)
            out = Path(args.out) if args.out else Path(args.pairs).with_suffix(".regret_fit.json")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
            print(_fit_table(result))
            print(f"\nwrote {out}")
        else:
            arrays = run_stats(args)
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            # Any: mypy would check **arrays' values against savez's ``allow_pickle: bool``
            to_save: dict[str, Any] = arrays
            np.savez(out, **to_save)
            print(f"wrote {out}: {', '.join(arrays)} for {len(arrays['labels'])} pairs")
    except (InputError, BoardError, SegmentError, PlanningError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
