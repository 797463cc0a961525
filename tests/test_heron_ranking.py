"""HERON rankings given by people: stored per run in the label store (history, schema
migration), the page's /api/ranking endpoint, the "Rank what matters" view in a real browser
(drag and drop, keys), ``pbrl.label ranking`` and ``HeronTeacher(ranking="store")``."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from pbrl.data import Queries
from pbrl.data.pool import TrajectoryPool
from pbrl.envs.spec import EnvSpec
from pbrl.label import main as label_main
from pbrl.run import build_teacher
from pbrl.sim.probe import probe_env
from pbrl.store import (
    SCHEMA_VERSION,
    BadInput,
    Conflict,
    LabelStore,
    NotFound,
    schema,
)
from pbrl.teachers.heron import HeronTeacher
from pbrl.teachers.scripted import TeacherConfigError

ENV = "Hopper-v5"  # factors: ctrl, forward, survive
FACTORS = ("ctrl", "forward", "survive")
REPO = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = [  # as tests/test_label_browser.py: headless, no network, no sandbox
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
]


def hopper_queries(n: int, length: int = 20, seed: int = 0, run: str = "hop") -> Queries:
    """Random-policy Hopper pairs carrying reward factors (from ``info``) and MuJoCo state."""
    info = probe_env(ENV)
    env = gym.make(ENV)
    data = env.unwrapped.data  # type: ignore[attr-defined]
    pool = TrajectoryPool(
        1, 4000, info.obs_dim, info.act_dim, info.factor_names, info.state_dims, ENV, run
    )
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    for _ in range(max(4 * n * length, 1000)):
        qpos, qvel = data.qpos.copy(), data.qvel.copy()
        act = env.action_space.sample()
        nxt, reward, term, trunc, step_info = env.step(act)
        factors = np.array([[step_info[k] for k in info.factor_names]])
        pool.add(
            obs[None],
            np.asarray(act)[None],
            np.array([reward]),
            nxt[None],
            np.array([term]),
            np.array([trunc]),
            factors=factors,
            qpos=qpos[None],
            qvel=qvel[None],
        )
        obs = env.reset()[0] if term or trunc else nxt
    env.close()
    return pool.sample_queries(n, length, np.random.default_rng(seed))


@pytest.fixture
def store(tmp_path: Path) -> LabelStore:
    db = LabelStore(tmp_path / "labels.sqlite")
    db.register_run("hop", ENV, probe_env(ENV).factor_names)
    return db


# -- the store --------------------------------------------------------------------------------
def test_store_round_trip_history_and_latest_wins(store: LabelStore) -> None:
    assert store.run("hop").factors == FACTORS  # bare names, as the env reports them
    assert store.ranking("hop") is None and store.rankings("hop") == []
    first = store.set_ranking("hop", ["survive", "forward", "ctrl"], True, "alice")
    second = store.set_ranking(
        "hop", ["reward_forward", "ctrl", "survive"], [True, False, True], "bob"
    )
    assert second.ranking_id > first.ranking_id
    again = LabelStore(store.path)  # another connection (as another process would open it)
    latest = again.ranking("hop")
    assert latest is not None
    assert latest.factors == ("forward", "ctrl", "survive")
    assert latest.higher_is_better == (True, False, True) and latest.annotator == "bob"
    history = again.rankings("hop")
    assert [h.annotator for h in history] == ["alice", "bob"]
    assert history[0].factors == ("survive", "forward", "ctrl")
    assert history[0].higher_is_better == (True, True, True)
    ro = LabelStore(store.path, readonly=True)
    assert ro.ranking("hop") == latest and [r.name for r in ro.runs()] == ["hop"]


@pytest.mark.parametrize(
    ("factors", "directions", "error", "words"),
    [
        (["survive", "forward", "jump"], True, BadInput, ["'jump'", "ctrl, forward, survive"]),
        (["survive", "forward"], True, BadInput, ["leaves out ctrl"]),
        (["survive", "forward", "forward"], True, BadInput, ["'forward' more than once"]),
        (["survive", "reward_survive", "ctrl"], True, BadInput, ["'survive' more than once"]),
        ("survive,forward,ctrl", True, BadInput, ["list of factor names"]),
        (["survive", "forward", "ctrl"], [True, False], BadInput, ["3 ranked factors"]),
        (["survive", "forward", "ctrl"], "yes", BadInput, ["true/false"]),
    ],
)
def test_store_refuses_a_ranking_that_is_not_the_runs_factors_once(
    store: LabelStore, factors: Any, directions: Any, error: type, words: list[str]
) -> None:
    with pytest.raises(error) as exc:
        store.set_ranking("hop", factors, directions, "alice")
    for w in words:
        assert w in str(exc.value), str(exc.value)
    assert "\n" not in str(exc.value)
    assert store.rankings("hop") == []  # nothing stored


def test_store_unknown_run_env_conflict_and_factorless_run(store: LabelStore) -> None:
    with pytest.raises(NotFound, match="unknown run 'nope'.*runs: hop"):
        store.set_ranking("nope", list(FACTORS), True, "alice")
    with pytest.raises(Conflict, match="for Hopper-v5, not HalfCheetah-v5"):
        store.register_run("hop", "HalfCheetah-v5", ("reward_forward", "reward_ctrl"))
    store.register_run("still", "InvertedPendulum-v5", ())
    with pytest.raises(BadInput, match="reports no reward factors"):
        store.set_ranking("still", [], True, "alice")
    with pytest.raises(BadInput, match="annotator"):
        store.set_ranking("hop", list(FACTORS), True, "")


def test_queries_register_their_run_and_a_schema_1_store_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = LabelStore(path)
    db.add_queries(hopper_queries(2, length=10), source="run-a")
    assert db.run("run-a").env_id == ENV and db.run("run-a").factors == FACTORS
    db.close()
    # Make it a schema-1 store, as an earlier pbrl wrote it: no runs/rankings tables.
    conn = sqlite3.connect(path)
    conn.executescript(
        "DROP TABLE rankings; DROP TABLE runs; UPDATE meta SET value='1' WHERE key='schema';"
    )
    conn.close()

    def schema_and_tables() -> tuple[str, set[str]]:
        with sqlite3.connect(path) as c:
            version = c.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0]
            tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return version, tables

    ro = LabelStore(path, readonly=True)  # reading changes nothing
    assert ro.runs() == [] and ro.ranking("run-a") is None
    ro.close()
    assert schema_and_tables()[0] == "1"

    # A crash mid-migration leaves the store as it was (one transaction).
    real = schema.add_run

    def crash(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)  # the run's row is written, then the power goes
        raise RuntimeError("power cut")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(schema, "add_run", crash)
        with pytest.raises(RuntimeError, match="power cut"):
            LabelStore(path)
    version, tables = schema_and_tables()
    assert version == "1" and "runs" not in tables and "rankings" not in tables

    migrated = LabelStore(path)  # a writer migrates: runs backfilled from the queries
    assert schema_and_tables() == (str(SCHEMA_VERSION), schema_and_tables()[1])
    assert {"runs", "rankings"} <= schema_and_tables()[1]
    assert [(r.name, r.env_id, r.factors) for r in migrated.runs()] == [("run-a", ENV, FACTORS)]
    assert migrated.counts()["total"] == 2  # the queries are untouched
    migrated.set_ranking("run-a", ["forward", "survive", "ctrl"], True, "alice")


# -- the page's API ---------------------------------------------------------------------------
@pytest.fixture
def client(store: LabelStore) -> Iterator[Any]:
    pytest.importorskip("fastapi", reason="the web stack is not installed: pip install -e .[gui]")
    pytest.importorskip("httpx", reason="pip install httpx")
    from fastapi.testclient import TestClient

    from pbrl.gui.server import create_app

    with TestClient(create_app(store.path, prerender=0)) as c:
        yield c


def test_ranking_endpoint_validates_and_stores(client: Any, store: LabelStore) -> None:
    page = client.get("/rank")
    assert page.status_code == 200 and "Rank what matters" in page.text
    assert client.get("/static/rank.js").headers["content-type"].startswith("text/javascript")
    runs = client.get("/api/runs").json()["runs"]
    assert [(r["name"], r["env_id"], r["factors"], r["ranking"]) for r in runs] == [
        ("hop", ENV, list(FACTORS), None)
    ]
    got = client.get("/api/ranking", params={"run": "hop"}).json()
    assert got["run"]["ranking"] is None and got["history"] == 0

    def post(factors: Any, higher: Any = True, run: str = "hop", who: str = "alice") -> Any:
        body = {"annotator": who, "run": run, "factors": factors, "higher_is_better": higher}
        return client.post("/api/ranking", json=body)

    for factors, status, words in [
        (["survive", "forward", "jump"], 422, "'jump', which run 'hop' (Hopper-v5) does not"),
        (["survive", "forward"], 422, "leaves out ctrl"),
        (["survive", "forward", "survive"], 422, "'survive' more than once"),
        (None, 422, "list of factor names"),
    ]:
        r = post(factors)
        assert r.status_code == status and words in r.json()["detail"], r.text
    assert post(list(FACTORS), run="nope").status_code == 404
    assert post(list(FACTORS), who="").status_code == 422
    assert post(list(FACTORS), higher=[True, "no", True]).status_code == 422
    assert client.get("/api/ranking", params={"run": "nope"}).status_code == 404
    assert store.rankings("hop") == []  # no refused ranking was stored

    r = post(["forward", "survive", "ctrl"], [True, True, False])
    assert r.status_code == 200, r.text
    saved = r.json()["ranking"]
    assert saved["factors"] == ["forward", "survive", "ctrl"] and saved["annotator"] == "alice"
    assert post(["survive", "forward", "ctrl"], who="bob").json()["history"] == 2
    got = client.get("/api/ranking", params={"run": "hop"}).json()
    assert got["run"]["ranking"]["factors"] == ["survive", "forward", "ctrl"]
    assert got["run"]["ranking"]["annotator"] == "bob" and got["history"] == 2
    latest = store.ranking("hop")
    assert latest is not None and latest.factors == ("survive", "forward", "ctrl")


# -- a person in a real browser -----------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_rank_page_drag_and_keys_in_chromium(store: LabelStore) -> None:
    api = pytest.importorskip(
        "playwright.sync_api", reason="pip install playwright (never `playwright install`)"
    )
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium binary on PATH (apt-get install -y chromium)")
    from pbrl.gui.server import BackgroundServer

    with (
        BackgroundServer(store.path, port=free_port(), prerender=0) as server,
        api.sync_playwright() as p,
    ):
        try:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        except Exception as exc:
            pytest.skip(f"chromium at {chromium} does not start under playwright: {exc}")
        page = browser.new_page(viewport={"width": 1000, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/rank?run=hop&annotator=alice")
        page.wait_for_function("document.body.dataset.order === 'ctrl,forward,survive'")
        assert "Nobody has ranked" in page.inner_text("#saved")

        # Drag "survive" onto the top half of "ctrl": it lands first.
        item = page.locator("#factors li")
        page.locator('li[data-factor="survive"]').drag_to(
            page.locator('li[data-factor="ctrl"]'), target_position={"x": 40, "y": 4}
        )
        page.wait_for_function("document.body.dataset.order === 'survive,ctrl,forward'")
        assert item.nth(0).get_attribute("aria-selected") == "true"  # the dragged one

        # Keys: End selects forward, u moves it up; t flips ctrl; k/j select, d and
        # Shift+ArrowUp move.
        page.focus("#factors")
        steps = [
            ("End", "survive,ctrl,forward"),
            ("u", "survive,forward,ctrl"),
            ("Shift+ArrowUp", "forward,survive,ctrl"),
            ("j", "forward,survive,ctrl"),
            ("ArrowDown", "forward,survive,ctrl"),
            ("t", "forward,survive,ctrl"),
            ("k", "forward,survive,ctrl"),
            ("d", "forward,ctrl,survive"),
            ("Shift+ArrowUp", "forward,survive,ctrl"),
        ]
        for key, expected in steps:
            page.keyboard.press(key)
            assert page.evaluate("document.body.dataset.order") == expected, key
        assert page.evaluate("document.body.dataset.directions") == "+,+,-"  # ctrl flipped
        assert "lower is better" in page.inner_text('li[data-factor="ctrl"] .dir')
        assert page.evaluate("document.activeElement.id") == "factors"
        assert page.get_attribute("#factors", "aria-activedescendant") == "factor-1"

        page.click("#save")
        page.wait_for_function("document.body.dataset.state === 'saved'")
        latest = store.ranking("hop")  # the row the page wrote
        assert latest is not None
        assert latest.factors == ("forward", "survive", "ctrl")
        assert latest.higher_is_better == (True, True, False) and latest.annotator == "alice"

        page.reload()
        page.wait_for_function("document.body.dataset.state === 'saved'")
        assert page.evaluate("document.body.dataset.order") == "forward,survive,ctrl"
        assert page.evaluate("document.body.dataset.directions") == "+,+,-"
        assert f"#{latest.ranking_id} by alice" in page.inner_text("#saved")
        assert errors == []
        browser.close()


# -- pbrl.label ranking -----------------------------------------------------------------------
def test_cli_sets_and_prints_the_ranking(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "cli.sqlite")
    with pytest.raises(SystemExit) as exc:
        label_main(["ranking", "--db", db, "--run", "hop"])  # no store yet
    assert exc.value.code == 2 and "does not exist" in capsys.readouterr().err
    label_main(["ranking", "--db", db, "--run", "hop", "--env", ENV])  # registers the run
    assert "ctrl,forward,survive" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        label_main(["ranking", "--db", db, "--run", "hop", "--set", "survive,forward"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "leaves out ctrl" in err and err.count("\n") == 1
    label_main(
        ["ranking", "--db", db, "--run", "hop", "--set", "survive,forward,ctrl", "--lower", "ctrl"]
    )
    out = capsys.readouterr().out
    assert "survive > forward > ctrl (lower is better)" in out and "by cli" in out
    label_main(["ranking", "--db", db, "--run", "hop", "--json"])
    shown = json.loads(capsys.readouterr().out)
    assert shown["ranking"]["factors"] == ["survive", "forward", "ctrl"]
    assert shown["ranking"]["higher_is_better"] == [True, True, False]


# -- the teacher ----------------------------------------------------------------------------------
def test_teacher_without_a_stored_ranking_says_where_to_give_it(tmp_path: Path) -> None:
    db = tmp_path / "labels" / "new.sqlite"  # not there yet: created, with the run registered
    with pytest.raises(TeacherConfigError) as exc:
        HeronTeacher("store", ranking_from=str(db), run="heron_hopper", env=EnvSpec(ENV))
    msg = str(exc.value)
    assert "\n" not in msg and "nobody has ranked the factors of run 'heron_hopper'" in msg
    assert f"python -m pbrl.label serve --store {db}" in msg
    assert "http://127.0.0.1:8000/rank?run=heron_hopper" in msg
    assert f"pbrl.label ranking --db {db} --run heron_hopper --set ctrl,forward,survive" in msg
    assert LabelStore(db, readonly=True).run("heron_hopper").factors == FACTORS  # page can show it
    with pytest.raises(TeacherConfigError, match="list the reward factors"):
        HeronTeacher("survive", env=EnvSpec(ENV))
    unplaced = HeronTeacher("store", ranking_from=str(db), run="heron_hopper")  # no env yet
    with pytest.raises(TeacherConfigError, match="was not given"):
        unplaced(hopper_queries(2, length=5, run="heron_hopper"))
    LabelStore(db).set_ranking("heron_hopper", list(FACTORS), True, "alice")
    with pytest.raises(TeacherConfigError, match="ranks the factors of Hopper-v5, not Walker2d"):
        HeronTeacher("store", ranking_from=str(db), run="heron_hopper", env=EnvSpec("Walker2d-v5"))


def test_teacher_with_the_stored_ranking_labels_as_the_config_ranking(tmp_path: Path) -> None:
    db = LabelStore(tmp_path / "labels.sqlite")
    db.register_run("heron_hopper", ENV, probe_env(ENV).factor_names)
    order, higher = ["survive", "forward", "ctrl"], [True, True, False]
    saved = db.set_ranking("heron_hopper", order, higher, "alice")
    queries = hopper_queries(40, length=20, run="heron_hopper")

    stored = HeronTeacher(
        "store", sigma=[0.5, 0.5, 0.0], ranking_from=str(db.path), run="heron_hopper"
    )
    stored.use_env(EnvSpec.of(ENV))  # as a run hands it its env
    config = HeronTeacher(order, sigma=[0.5, 0.5, 0.0], higher_is_better=higher, env=EnvSpec(ENV))
    labels = stored(queries)
    np.testing.assert_array_equal(labels, config(queries))
    assert np.isfinite(labels).sum() >= 20  # most pairs decided: the comparison is not vacuous
    np.testing.assert_array_equal(stored.last_levels, config.last_levels)
    stats = stored.stats()
    assert stats["heron_ranking_id"] == saved.ranking_id
    assert stats["heron_direction_ctrl"] == -1.0 and stats["heron_direction_survive"] == 1.0
    assert "heron_level0_survive" in stats

    # A different stored ranking changes the labels (the store is really read).
    db.set_ranking("heron_hopper", ["ctrl", "forward", "survive"], True, "bob")
    other = HeronTeacher(
        "store", sigma=[0.5, 0.5, 0.0], ranking_from=str(db.path), run="heron_hopper",
        env=EnvSpec(ENV),
    )  # fmt: skip
    assert other.ranking == ["ctrl", "forward", "survive"]
    assert not np.array_equal(other(queries), labels, equal_nan=True)


def test_hydra_teacher_ranking_store_override(tmp_path: Path) -> None:
    """``+exp=heron_hopper teacher.ranking=store``: run name and store from the exp name."""
    from hydra import compose, initialize_config_dir

    from pbrl.errors import ConfigError
    from pbrl.train import validate

    db = tmp_path / "heron.sqlite"
    overrides = ["+exp=heron_hopper", "teacher.ranking=store", f"teacher.ranking_from={db}"]
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    assert cfg.teacher.run == "heron_hopper"
    with pytest.raises(ConfigError, match=r"nobody has ranked.*/rank\?run=heron_hopper"):
        validate(cfg)  # what `python -m pbrl.train` runs first: one line, exit 2
    LabelStore(db).set_ranking("heron_hopper", ["forward", "survive", "ctrl"], True, "alice")
    validate(cfg)
    teacher = build_teacher(cfg, np.random.default_rng(0))
    assert teacher.ranking == ["forward", "survive", "ctrl"]
    assert list(teacher.sigmas) == [0.1, 0.2, 0.5]  # the official sigmas, one per level
