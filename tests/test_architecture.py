"""The package's layers: every import inside pbrl points to its own layer or below, and
no module imports itself back through a cycle (docs/architecture.md draws the picture)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "pbrl"

# Lowest first. A module belongs to the longest prefix listed; imports may only point to the
# same layer or a lower one.
LAYERS: list[tuple[str, ...]] = [
    ("pbrl.errors",),
    ("pbrl.data", "pbrl.store", "pbrl.sim", "pbrl.envs"),
    ("pbrl.regret",),  # the delivery domain's planning and preference models
    ("pbrl.video", "pbrl.evaluation", "pbrl.rewards", "pbrl.envs.render"),  # renders states
    ("pbrl.teachers",),
    ("pbrl.gui",),  # the labeling page: above the teachers, so no teacher can start it
    ("pbrl.query", "pbrl.run", "pbrl.checkpoint"),
    ("pbrl.online", "pbrl.offline"),
    (
        "pbrl.recipes",
        "pbrl.train",
        "pbrl.doctor",
        "pbrl.label",
        "pbrl.regret.cli",
        "pbrl.regret.__main__",
    ),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(name: str) -> int:
    best, rank = "", -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and len(p) > len(best):
                best, rank = p, i
    assert rank >= 0, f"{name} is in no layer: add it to LAYERS and docs/architecture.md"
    return rank


def pbrl_imports(path: Path) -> set[str]:
    """Every pbrl module a file imports (at module level or inside functions)."""
    tree = ast.parse(path.read_text())
    me = module_name(path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("pbrl")}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative import
                pkg = me.split(".")[: -node.level] if path.name != "__init__.py" else me.split(".")
                base = ".".join([*pkg, node.module])
            if base.startswith("pbrl"):
                for a in node.names:  # `from pbrl.online import pebble` names a module
                    sub = PKG.parent / Path(*f"{base}.{a.name}".split("."))
                    if sub.with_suffix(".py").exists() or sub.is_dir():
                        out.add(f"{base}.{a.name}")
                    else:
                        out.add(base)
    out.discard(me)
    return out


def graph() -> dict[str, set[str]]:
    return {module_name(p): pbrl_imports(p) for p in sorted(PKG.rglob("*.py"))}


def test_every_import_points_to_the_same_layer_or_below():
    upward = [
        f"{src} (layer {layer_of(src)}) imports {dst} (layer {layer_of(dst)})"
        for src, targets in graph().items()
        for dst in sorted(targets)
        if layer_of(dst) > layer_of(src)
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycle():
    g = graph()

    def edges(m: str) -> set[str]:
        return {t for t in g.get(m, set()) if t in g}

    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_an_upward_import():
    """The layer rule is not vacuous: a lower layer importing the entry point is caught."""
    assert layer_of("pbrl.store") < layer_of("pbrl.teachers.human") < layer_of("pbrl.train")
    assert layer_of("pbrl.regret.cli") > layer_of("pbrl.regret.mdp")
    assert "pbrl.data.preferences" in graph()["pbrl.store.datasets"]


def test_the_store_imports_only_the_data_model_and_errors():
    """pbrl.store sits beside pbrl.data: it may import pbrl.data and pbrl.errors, no more."""
    allowed = ("pbrl.store", "pbrl.data", "pbrl.errors")
    found = {
        f"{src} imports {dst}"
        for src, targets in graph().items()
        if src == "pbrl.store" or src.startswith("pbrl.store.")
        for dst in targets
        if not any(dst == a or dst.startswith(a + ".") for a in allowed)
    }
    assert not found, "\n".join(sorted(found))
    assert "pbrl.store.core" in graph() and "pbrl.data.store" not in graph()


def test_no_module_outside_rewards_and_teachers_probes_a_kind():
    """Reward kinds are declared by type (pbrl/rewards/base.py) and turned into what a run
    needs in pbrl/rewards/dispatch.py: no other module asks a model what it is."""
    import re

    probes = re.compile(
        r"getattr\([^)]*[\"'](inputs|needs_labels|markovian|frame_cache|backbone_info)[\"']"
        r"|is_frame_reward|\.markovian\b|kind != [\"']ensemble[\"']"
        r"|isinstance\([^)]*(RewardEnsemble|ImageRewardEnsemble|ClipReward|RAPLReward"
        r"|StateReward|FrameReward|EpisodeReward|ContextReward|LatentReward|FactorReward)"
    )
    found = [
        f"{p.relative_to(PKG.parent)}:{i}: {line.strip()}"
        for p in sorted(PKG.rglob("*.py"))
        if not str(p.relative_to(PKG)).startswith(("rewards", "teachers"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if probes.search(line)
    ]
    assert not found, "kind probes outside pbrl/rewards:\n" + "\n".join(found)


def test_every_reward_class_has_exactly_one_kind():
    from pbrl.rewards import REWARD_MODELS
    from pbrl.rewards.base import KINDS, kind_of

    for name, (cls, _) in REWARD_MODELS.items():
        assert kind_of(cls) in KINDS, name
