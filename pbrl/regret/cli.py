"""``python -m pbrl.regret``: analyse delivery-domain preference data under both models.

``pairs`` synthetic labeled pairs: random segments on a board, labeled by the regret or
          partial-return model under the board's true reward; writes PAIRS.npz.
``fit``   k-fold likelihood analysis with the board's true reward (only the scale fitted)
          and reward learning, per preference model; prints a table, writes JSON.
``stats`` per-pair differences (second minus first) in partial return, start value,
          end value and regret; writes ``.npz``.

A board is a JSON file: a list of rows of cell codes, or ``{"name": ..., "grid": [rows]}``
(as ``envs/boards/small.json``).

PAIRS.npz holds ``starts [N, 2, 2]`` (row, col of each segment's start), ``moves
[N, 2, T, 2]`` (row/column deltas; ``(0, 0)`` once the episode has ended) and ``labels
[N]`` in {0, 0.5, 1} (1 = second segment preferred).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypedDict

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
    sample_segments,
    segment_stats,
    value_iteration,
)
from pbrl.regret.preference import (
    MODELS,
    accuracy,
    compare,
    fit_scale,
    log_likelihood,
    utility,
)

PROG = "python -m pbrl.regret"


class InputError(ValueError):
    """Bad command-line input: reported as one line, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are :class:`InputError` (one line, exit code 2)."""

    def error(self, message: str) -> NoReturn:
        raise InputError(f"{message} (see {self.prog} --help)")


# -- argument checks --------------------------------------------------------------------------
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _positive_int(args: argparse.Namespace, name: str, use: str) -> None:
    value = getattr(args, name)
    if value is not None and value < 1:
        raise InputError(f"{_flag(name)} {value} is invalid: use {use}")


def _positive_float(args: argparse.Namespace, name: str, use: str) -> None:
    value = getattr(args, name)
    if value is not None and not (math.isfinite(value) and value > 0):
        raise InputError(f"{_flag(name)} {value:g} is invalid: use {use}")


def check_out(path: str | Path, flag: str = "--out") -> Path:
    """Refuse an output path that cannot be written, before any work is done."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{flag} {path} is a folder: pass a file path")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"{flag} {path}: {folder} is a file, not a folder; pass another path")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        writable = path if path.exists() else folder
        raise InputError(f"{flag} {path}: {writable} is not writable; pass another path")
    return path


def check_args(args: argparse.Namespace) -> None:
    """Every numeric option in its range, and the output writable (one line each)."""
    gamma = getattr(args, "gamma", None)
    if gamma is not None and not (math.isfinite(gamma) and 0.0 < gamma <= 1.0):
        raise InputError(f"--gamma {gamma:g} is invalid: use 0 < gamma <= 1 (1 = the paper)")
    if args.command == "fit":
        _positive_int(args, "iterations", "at least 1 Adam iteration")
        _positive_int(args, "library_size", "at least 1 random reward (default 1000)")
        _positive_float(args, "learning_rate", "a finite learning rate > 0 (default 0.5)")
        _positive_float(args, "temperature", "a finite soft-max temperature > 0 (default 1e-3)")
    if args.command == "pairs":
        _positive_int(args, "num", "at least 1 pair")
        _positive_int(args, "segment_length", "at least 1 move per segment")
        _positive_float(args, "beta", "a finite beta > 0, or leave it out for noiseless labels")
    check_out(output_path(args))


def output_path(args: argparse.Namespace) -> Path:
    """Where the command writes (``np.savez`` adds ``.npz`` to a name without it)."""
    if args.command == "fit":
        return Path(args.out) if args.out else Path(args.pairs).with_suffix(".regret_fit.json")
    out = Path(args.out)
    return out if out.suffix == ".npz" else out.with_name(out.name + ".npz")


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
class TrueRewardFit(TypedDict):
    """The true reward under a preference model, only the model's scale fitted."""

    heldout_log_likelihood: float
    heldout_accuracy: float
    scale: float
    scale_per_fold: list[float]


class LearnedRewardFit(TypedDict):
    """A reward learned from the training folds under a preference model."""

    heldout_log_likelihood: float
    heldout_accuracy: float
    mean_scaled_return: float
    scaled_return_per_fold: list[float]
    w_per_fold: list[list[float]]


class ModelFit(TypedDict):
    true_reward: TrueRewardFit
    learned_reward: LearnedRewardFit


class FitResult(TypedDict):
    """``fit``'s JSON: the inputs and, per preference model, both fits."""

    board: str
    pairs: str
    n_pairs: int
    n_ties: int
    folds: int
    seed: int
    gamma: float
    library_policies: int
    iterations: int
    models: dict[str, ModelFit]


def run_fit(args: argparse.Namespace) -> FitResult:
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
    library = PolicyLibrary.build(
        tables, rng, n_rewards=args.library_size, prior=args.library_prior
    )
    if len(library) == 0:
        raise InputError(
            f"the policy library is empty: all {args.library_size} random rewards gave an "
            "optimal policy for the true reward; pass a larger --library-size"
        )

    result: FitResult = {
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


def _fit_table(result: FitResult) -> str:
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


# -- pairs ------------------------------------------------------------------------------------
def run_pairs(args: argparse.Namespace) -> dict[str, np.ndarray]:
    """``num`` random segment pairs on the board, labeled by ``model`` under the true reward
    (noiseless, ties 0.5; with ``beta``: sampled, ``P(σ2 ≻ σ1) = sigmoid(beta · Δu)``)."""
    board = Board.load(args.board)
    n, length = args.num, args.segment_length
    rng = np.random.default_rng(args.seed)
    starts, moves = sample_segments(board.tables, 2 * n, length, rng)
    starts, moves = starts.reshape(n, 2, 2), moves.reshape(n, 2, length, 2)
    u = utility(true_stats(board, starts, moves, args.gamma), args.model).reshape(n, 2)
    scale = math.inf if args.beta is None else args.beta
    labels = compare(u[:, 0], u[:, 1], scale, rng)
    return {"starts": starts, "moves": moves, "labels": labels}


# -- entry point ------------------------------------------------------------------------------
BOARD_HELP = 'board JSON file: a list of rows of cell codes, or {"name": ..., "grid": [rows]}'


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def gamma(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--gamma", type=float, default=1.0, help="discount of the exact V* (1 = paper)"
        )

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--board", required=True, help=BOARD_HELP)
        p.add_argument("--pairs", required=True, help="PAIRS.npz with starts, moves, labels")
        gamma(p)

    pairs = sub.add_parser("pairs", help="write synthetic labeled pairs (PAIRS.npz) for a board")
    pairs.add_argument("--board", required=True, help=BOARD_HELP)
    pairs.add_argument("--num", type=int, required=True, help="number of segment pairs")
    pairs.add_argument(
        "--model", choices=MODELS, default="regret", help="preference model that labels them"
    )
    pairs.add_argument("--out", required=True, help="PAIRS.npz to write")
    pairs.add_argument(
        "--segment-length", type=int, default=3, help="moves per segment (the paper: 3)"
    )
    pairs.add_argument(
        "--beta",
        type=float,
        default=None,
        help="sampled labels, P(second) = sigmoid(beta * utility difference) "
        "(default: noiseless, ties 0.5)",
    )
    pairs.add_argument("--seed", type=int, default=0, help="segments and sampled labels")
    gamma(pairs)

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
    fit.add_argument(
        "--library-prior",
        choices=("log_uniform", "gaussian"),
        default="log_uniform",
        help="distribution of the library's random rewards (gaussian: the paper's)",
    )

    stats = sub.add_parser("stats", help="per-pair stat differences (second minus first)")
    common(stats)
    stats.add_argument("--out", required=True, help="STATS.npz to write")
    return parser


def main(argv: list[str] | None = None) -> int:
    # fits of a 6-vector: extra threads only spin (a default fit took 12 min, now 1 min)
    torch.set_num_threads(1)
    try:
        args = build_parser().parse_args(argv)
        check_args(args)
        out = output_path(args)
        if args.command == "fit":
            result = run_fit(args)
            _write(out, lambda: out.write_text(json.dumps(result, indent=2) + "\n"))
            print(_fit_table(result))
            print(f"\nwrote {out}")
        else:
            # Any: mypy would check **arrays' values against savez's ``allow_pickle: bool``
            arrays: dict[str, Any] = run_pairs(args) if args.command == "pairs" else run_stats(args)
            _write(out, lambda: np.savez(out, **arrays))
            labels = arrays["labels"]
            if args.command == "pairs":
                how = "noiseless" if args.beta is None else f"sampled, beta {args.beta:g}"
                print(
                    f"wrote {out}: {len(labels)} pairs of {args.segment_length}-step segments "
                    f"on {args.board}, labeled by the {args.model} model ({how}): "
                    f"{int(np.sum(labels == 0))} first preferred, "
                    f"{int(np.sum(labels == 1))} second, {int(np.sum(labels == 0.5))} ties"
                )
            else:
                print(f"wrote {out}: {', '.join(arrays)} for {len(labels)} pairs")
    except (InputError, BoardError, SegmentError, PlanningError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _write(out: Path, write: Callable[[], object]) -> None:
    """Run ``write()`` after making ``out``'s folder; a failure is one :class:`InputError`."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write()
    except OSError as exc:
        raise InputError(f"cannot write {out}: {exc.strerror or exc}") from None
