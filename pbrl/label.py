"""The labeling command line: ``python -m pbrl.label {serve,queries,export,stats,ranking}``.

    python -m pbrl.label queries --from-run outputs/quickstart/2025-... --num 50 --store labels.sqlite
    python -m pbrl.label serve --store labels.sqlite            # open http://127.0.0.1:8000
    python -m pbrl.label queries --from-dataset pbrl/hopper/medium-v0 --num 50 --store labels.sqlite
    python -m pbrl.label export --store labels.sqlite --out prefs.npz   # + prefs.stats.json
    python -m pbrl.label ranking --db labels/heron_hopper.sqlite --run heron_hopper  # HERON
    python -m pbrl.label ranking --db labels/heron_hopper.sqlite --run heron_hopper \
        --env Hopper-v5 --set survive,forward,ctrl

Bad input (a missing store, a read-only or foreign store, a run without a checkpoint, an
unsafe bind address, a bad option) is reported as one line naming the problem and what to do,
with exit code 2. ``stats``, ``export`` and ``ranking`` without ``--set``/``--env`` open the
store read-only: they change nothing in it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote

from pbrl.errors import require_extra
from pbrl.store import AGGREGATES, LabelStore, Ranking, StoreError
from pbrl.store.stats import Agreement


class CliError(Exception):
    pass


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its errors on one line like every other error of this CLI."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"pbrl.label: error: {message} (see {self.prog} --help)\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m pbrl.label",
        description="Label pairs of clips in a browser (pbrl's human teacher).",
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve the labeling page for a store")
    s.add_argument(
        "--store", required=True, help="label store (SQLite file; created empty if missing)"
    )
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument(
        "--token",
        default=os.environ.get("PBRL_LABEL_TOKEN"),
        help="require this secret on every request (default: $PBRL_LABEL_TOKEN); "
        "needed to bind a non-loopback address",
    )
    s.add_argument(
        "--cache", default=None, help="folder for rendered clips (default <store>_clips)"
    )
    s.add_argument(
        "--codec",
        choices=("h264", "vp9"),
        default="h264",
        help="clip format: h264 (MP4) or vp9 (WebM)",
    )
    s.add_argument("--size", type=_positive, default=256, help="clip width and height in pixels")
    s.add_argument(
        "--prerender",
        type=int,
        default=8,
        help="pairs rendered ahead of the queue while people label (0: only on demand)",
    )
    s.add_argument(
        "--lease-s",
        type=float,
        default=300.0,
        help="seconds a shown pair is reserved for its annotator",
    )
    s.add_argument("--task", default=None, help="task description shown on the page")
    s.add_argument("--log-level", default="info")

    q = sub.add_parser("queries", help="add pairs to label to a store (creates it)")
    q.add_argument("--store", required=True)
    src = q.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--from-run",
        metavar="RUN_DIR",
        help="a pbrl.train run directory: pairs sampled from its trajectory pool",
    )
    src.add_argument(
        "--from-queries",
        metavar="FILE",
        help="a pbrl preference dataset .npz (its labels are ignored)",
    )
    src.add_argument(
        "--from-env",
        metavar="ENV_ID",
        help="random-policy rollouts of a MuJoCo env (to try the page)",
    )
    src.add_argument(
        "--from-dataset",
        metavar="DATASET_ID",
        help="a local Minari dataset that recorded qpos/qvel (scripts/make_dataset.py): "
        "pairs of segments from its episodes",
    )
    q.add_argument("--num", type=_positive, default=None, help="number of pairs")
    q.add_argument(
        "--segment-length",
        type=_positive,
        default=None,
        help="steps per clip (default: the run's feedback.segment_length; 50 for --from-env "
        "and --from-dataset)",
    )
    q.add_argument("--seed", type=int, default=0)
    q.add_argument(
        "--answers-per-query",
        type=_positive,
        default=1,
        help="annotators asked per pair (several: aggregated on export)",
    )
    q.add_argument("--task", default=None, help="task description shown on the page")

    e = sub.add_parser("export", help="write the answers as a pbrl preference dataset (.npz)")
    e.add_argument("--store", required=True)
    e.add_argument(
        "--out",
        required=True,
        help="dataset .npz to write; <out stem>.stats.json is written next to it",
    )
    e.add_argument(
        "--aggregate",
        choices=AGGREGATES,
        default="majority",
        help="one label per pair (majority, first) or one row per answer (per-annotator)",
    )
    e.add_argument(
        "--only-answered",
        action="store_true",
        help="leave out pairs that still wait for some of their answers",
    )
    e.add_argument(
        "--source",
        action="append",
        default=None,
        help="only pairs added under this source (a run name; repeatable)",
    )

    t = sub.add_parser(
        "stats", help="progress, agreement between annotators and with VLM suggestions"
    )
    t.add_argument("--store", required=True)
    t.add_argument("--aggregate", choices=("majority", "first"), default="majority")
    t.add_argument("--json", action="store_true", help="print JSON")

    r = sub.add_parser(
        "ranking",
        help="print (or --set) a run's ranking of reward factors (HERON, teacher.ranking=store)",
    )
    r.add_argument("--db", "--store", dest="store", required=True, help="label store")
    r.add_argument("--run", default=None, help="run name (teacher.run; default: list the runs)")
    r.add_argument(
        "--set",
        metavar="A,B,C",
        default=None,
        help="store a new ranking: every factor of the run once, most important first",
    )
    r.add_argument(
        "--lower",
        metavar="A,B",
        default="",
        help="with --set: factors for which lower is better (default: higher is better)",
    )
    r.add_argument(
        "--env",
        metavar="ENV_ID",
        default=None,
        help="register the run as a run of this environment (its factors) if the store "
        "does not know it yet",
    )
    r.add_argument("--annotator", default="cli", help="who gives the ranking (with --set)")
    r.add_argument("--history", action="store_true", help="every ranking saved, oldest first")
    r.add_argument("--json", action="store_true", help="print JSON")
    return p


def check_serve_args(args: argparse.Namespace) -> None:
    """Refuse settings the server would only trip over later (one line each)."""
    if not 1 <= args.port <= 65535:
        raise CliError(f"--port {args.port} is out of range: use a port from 1 to 65535")
    if not (math.isfinite(args.lease_s) and args.lease_s > 0):
        raise CliError(
            f"--lease-s {args.lease_s:g} is invalid: use the seconds a shown pair stays "
            "reserved for its annotator, > 0 (default 300)"
        )
    if args.prerender < 0:
        raise CliError(f"--prerender {args.prerender} is invalid: use 0 (render on demand) or more")


def cmd_serve(args: argparse.Namespace) -> None:
    require_extra("gui", ("fastapi", "uvicorn"), "pbrl.label serve")
    from pbrl.gui.clips import default_cache_dir, make_cache_dir
    from pbrl.gui.server import check_bind, serve

    check_serve_args(args)
    check_bind(args.host, args.token)
    existed = Path(args.store).exists()
    # Opening for writing refuses a read-only store (file, folder or file system), a path
    # under a regular file and a file that is not a pbrl store, before anything is served.
    store = LabelStore(args.store)
    store.close()
    make_cache_dir(args.cache or default_cache_dir(store.path))
    if not existed:  # a trainer with teacher=human fills it at its first round
        print(
            f"pbrl.label: {args.store} did not exist: created it empty; pairs appear on "
            "the page when a teacher=human run or `pbrl.label queries` adds them",
            flush=True,
        )
    print(
        f"pbrl.label: serving {store.path} on http://{args.host}:{args.port}/"
        + ("?token=..." if args.token else ""),
        flush=True,
    )
    serve(
        args.store,
        host=args.host,
        port=args.port,
        token=args.token,
        log_level=args.log_level,
        cache_dir=args.cache,
        codec=args.codec,
        width=args.size,
        height=args.size,
        prerender=args.prerender,
        lease_s=args.lease_s,
        task=args.task,
    )


def cmd_queries(args: argparse.Namespace) -> None:
    from pbrl.gui import sources

    if args.from_dataset:
        if args.num is None:
            raise CliError("--from-dataset needs --num N (how many pairs to sample)")
        queries, info = sources.queries_from_dataset(
            args.from_dataset, args.num, args.segment_length or 50, args.seed
        )
    elif args.from_run:
        if args.num is None:
            raise CliError("--from-run needs --num N (how many pairs to sample)")
        queries, info = sources.queries_from_run(
            args.from_run, args.num, args.seed, args.segment_length
        )
    elif args.from_queries:
        queries, info = sources.queries_from_file(args.from_queries)
        if args.num is not None:
            queries = queries[list(range(min(args.num, len(queries))))]
    else:
        if args.num is None:
            raise CliError("--from-env needs --num N (how many pairs to make)")
        queries, info = sources.queries_from_env(
            args.from_env, args.num, args.segment_length or 50, args.seed
        )
    store = LabelStore(args.store)
    ids = store.add_queries(
        queries,
        source=info["run"],
        batch="cli",
        needed=args.answers_per_query,
        env_kwargs=info["env_kwargs"],
    )
    if args.task:
        store.set_meta(task=args.task)
    counts = store.counts()
    print(
        f"pbrl.label: added {len(ids)} pairs of {info['env_id']} ({queries.first.length} steps each) "
        f"to {store.path}; {counts['pending']} pending of {counts['total']}"
    )


def cmd_export(args: argparse.Namespace) -> None:
    store = LabelStore(args.store, readonly=True)
    data = store.export(args.aggregate, only_answered=args.only_answered, sources=args.source)
    if data is None:
        raise CliError(f"{store.path} holds no answers yet: nothing to export")
    out = Path(args.out)
    out = out if out.suffix == ".npz" else out.with_suffix(".npz")  # what data.save writes
    stats_path = out.with_name(out.stem + ".stats.json")
    try:
        out = data.save(out)
        stats = store.stats("first" if args.aggregate == "first" else "majority")
        stats_path.write_text(json.dumps(stats, indent=2))
    except OSError as exc:
        raise CliError(f"cannot write {out} or {stats_path.name}: {exc}") from None
    n_skip = int(sum(1 for x in data.labels if x != x))
    print(
        f"pbrl.label: wrote {len(data)} labels ({args.aggregate}; {n_skip} skipped) to {out}; "
        f"agreement and per-annotator stats in {stats_path}"
    )


def cmd_stats(args: argparse.Namespace) -> None:
    stats = LabelStore(args.store, readonly=True).stats(args.aggregate)
    if args.json:
        print(json.dumps(stats, indent=2))
        return
    p = stats["progress"]

    def pct(r: Agreement) -> str:
        return "-" if r["agreement"] is None else f"{100 * r['agreement']:.0f}% (n={r['n']})"

    print(
        f"{p['answered']} of {p['total']} pairs answered, {p['pending']} pending "
        f"({p['leased']} shown right now), {p['answers']} answers"
    )
    print(
        f"between annotators: {pct(stats['inter_annotator'])}; "
        f"{stats['aggregate']} label vs oracle: {pct(stats['aggregated_vs_oracle'])}"
    )
    for name, a in stats["annotators"].items():
        print(
            f"  {name}: {a['answers']} answers (left {a['left']}, right {a['right']}, "
            f"equal {a['equal']}, skip {a['skip']}), vs oracle {pct(a['oracle'])}, "
            f"vs others {pct(a['others'])}"
        )
    v = stats["vlm_human"]
    if v["suggestions"]:
        both: Agreement = {"agreement": v["agreement"], "n": v["both_decided"]}
        print(
            f"VLM suggestions: {v['suggestions']} pairs ({v['unsure']} unsure), "
            f"{v['answered_by_people']} answered by people; VLM vs people: {pct(both)} "
            f"({v['agree']} agree of {v['both_decided']} pairs both decided); "
            f"VLM vs oracle: {pct(v['vlm_vs_oracle'])}"
        )


def _describe(ranking: Ranking) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ranking.created_at))
    order = " > ".join(
        f"{f}{'' if up else ' (lower is better)'}"
        for f, up in zip(ranking.factors, ranking.higher_is_better, strict=True)
    )
    return f"#{ranking.ranking_id} by {ranking.annotator} at {when}: {order}"


def cmd_ranking(args: argparse.Namespace) -> None:
    writes = args.set is not None or args.env is not None
    if args.run is None:
        if writes:
            raise CliError("--set and --env need --run NAME (the run the ranking is for)")
        runs = LabelStore(args.store, readonly=True).runs()
        if args.json:
            print(
                json.dumps(
                    [{"name": r.name, "env_id": r.env_id, "factors": r.factors} for r in runs],
                    indent=2,
                )
            )
            return
        if not runs:
            print(f"{args.store} knows no runs yet (pass --run NAME --env ENV_ID to add one)")
        for info in runs:
            print(f"{info.name}: {info.env_id}, factors {', '.join(info.factors) or 'none'}")
        return
    if args.lower and args.set is None:
        raise CliError("--lower goes with --set (the directions of a new ranking)")
    if not writes and not Path(args.store).exists():
        raise CliError(
            f"label store {args.store} does not exist: a teacher=heron run with "
            "teacher.ranking=store creates it, or add --env ENV_ID --set A,B,C"
        )
    store = LabelStore(args.store) if writes else LabelStore(args.store, readonly=True)
    if args.env is not None:
        known = {r.name: r for r in store.runs()}
        if args.run in known and known[args.run].env_id != args.env:
            raise CliError(
                f"run {args.run!r} is a run of {known[args.run].env_id}, not {args.env}: "
                "pick another --run name"
            )
        if args.run not in known:
            from pbrl.sim.probe import probe_env

            try:
                factors = probe_env(args.env).factor_names
            except Exception as exc:  # gymnasium's unknown-id errors span lines
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise CliError(f"--env {args.env}: cannot make it ({first})") from None
            store.register_run(args.run, args.env, factors)
    info = store.run(args.run)
    if args.set is not None:
        names = [n.strip() for n in args.set.split(",") if n.strip()]
        lower = {n.strip().removeprefix("reward_") for n in args.lower.split(",") if n.strip()}
        unknown = lower - {n.removeprefix("reward_") for n in names}
        if unknown:
            raise CliError(f"--lower names {', '.join(sorted(unknown))}, which --set does not rank")
        higher = [n.removeprefix("reward_") not in lower for n in names]
        store.set_ranking(args.run, names, higher, args.annotator)
    history = store.rankings(args.run)
    if args.json:
        out: dict[str, object] = {
            "run": info.name,
            "env_id": info.env_id,
            "factors": list(info.factors),
            "ranking": history[-1].to_json() if history else None,
        }
        if args.history:
            out["history"] = [h.to_json() for h in history]
        print(json.dumps(out, indent=2))
        return
    if not history:
        how = (
            f"python -m pbrl.label ranking --db {args.store} --run {info.name} --set "
            f"{','.join(info.factors)}, or the page's /rank?run={quote(info.name, safe='')}"
        )
        if args.env is not None:  # registering the run was the point
            print(f"run {info.name} ({info.env_id}), factors {', '.join(info.factors)}: {how}")
            return
        raise CliError(
            f"nobody has ranked the factors of run {info.name!r} ({', '.join(info.factors)}) "
            f"yet: {how}"
        )
    print(f"run {info.name} ({info.env_id}), factors {', '.join(info.factors)}")
    for ranking in history if args.history else history[-1:]:
        print(("  " if args.history else "ranking ") + _describe(ranking))


COMMANDS = {
    "serve": cmd_serve,
    "queries": cmd_queries,
    "export": cmd_export,
    "stats": cmd_stats,
    "ranking": cmd_ranking,
}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except (CliError, StoreError, ValueError, FileNotFoundError) as exc:
        print(f"pbrl.label: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
