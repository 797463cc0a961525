"""The labeling page's server (pbrl.gui.server) and command line (pbrl.label): API, security,
clips, a SIGKILL mid-stream, and eight simultaneous clients."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the web stack is not installed: pip install -e .[gui]")
pytest.importorskip("uvicorn", reason="the web stack is not installed: pip install -e .[gui]")
httpx = pytest.importorskip("httpx", reason="pip install httpx")

from fastapi.testclient import TestClient  # noqa: E402
from test_label_store import pair_queries  # noqa: E402  (tests/ is on sys.path)

from pbrl.data import PreferenceDataset  # noqa: E402
from pbrl.gui import sources  # noqa: E402
from pbrl.gui.server import create_app  # noqa: E402
from pbrl.label import main as label_main  # noqa: E402
from pbrl.store import LabelStore  # noqa: E402
from pbrl.video import write_video  # noqa: E402

ENV = "InvertedPendulum-v5"


@pytest.fixture(scope="module")
def env_queries():  # type: ignore[no-untyped-def]
    """Real, renderable pairs from random InvertedPendulum rollouts."""
    return sources.queries_from_env(ENV, 4, segment_length=10, seed=0)[0]


@pytest.fixture
def store(tmp_path: Path) -> LabelStore:
    store = LabelStore(tmp_path / "labels.sqlite")
    store.add_queries(pair_queries([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]), source="s")
    return store


@pytest.fixture
def client(store: LabelStore) -> Iterator[TestClient]:
    with TestClient(create_app(store.path, prerender=0)) as c:
        yield c


def lease(client: TestClient, who: str = "alice") -> dict:
    r = client.post("/api/next", json={"annotator": who})
    assert r.status_code == 200, r.text
    return r.json()["lease"]


# -- API ----------------------------------------------------------------------------------------
def test_label_flow_and_progress(client: TestClient, store: LabelStore) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "Which clip is better?" in page.text
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    status = client.get("/api/status", params={"annotator": "alice"}).json()
    assert status["progress"]["pending"] == 3 and status["env_id"] == ENV
    assert "pole" in status["task"]
    first = lease(client)
    r = client.post(
        "/api/answer",
        json={
            "annotator": "alice",
            "lease_id": first["lease_id"],
            "query_id": first["query_id"],
            "label": "right",
        },
    )
    assert r.status_code == 200
    body = r.json()
    assert body["answer"]["label"] == 1.0
    assert body["progress"]["answered"] == 1 and body["progress"]["mine"] == 1
    assert body["lease"]["query_id"] != first["query_id"]  # the next pair comes with the answer
    undo = client.post("/api/undo", json={"annotator": "alice"}).json()
    assert undo["lease"]["query_id"] == first["query_id"] and undo["progress"]["answered"] == 0
    assert client.get("/api/stats").json()["progress"]["answers"] == 0


def test_bad_requests_get_4xx_and_leave_the_store_alone(
    client: TestClient, store: LabelStore
) -> None:
    held = lease(client)
    cases = [
        ({"annotator": "alice", "lease_id": held["lease_id"], "label": 7}, 422, "invalid label"),
        (
            {"annotator": "alice", "lease_id": held["lease_id"], "label": "better"},
            422,
            "invalid label",
        ),
        (
            {"annotator": "alice", "lease_id": held["lease_id"], "query_id": "nope", "label": 0},
            404,
            "unknown query",
        ),
        (
            {"annotator": "alice", "lease_id": held["lease_id"], "query_id": "../etc", "label": 0},
            404,
            "unknown query",
        ),
        ({"annotator": "alice", "lease_id": "nope", "label": 0}, 404, "unknown lease"),
        ({"annotator": "bob", "lease_id": held["lease_id"], "label": 0}, 409, "belongs to"),
        ({"annotator": "x" * 65, "lease_id": held["lease_id"], "label": 0}, 422, "annotator"),
        ({"lease_id": held["lease_id"], "label": 0}, 422, "annotator"),
    ]
    for body, status, words in cases:
        r = client.post("/api/answer", json=body)
        assert r.status_code == status and words in r.json()["detail"], (body, r.text)
    r = client.post(
        "/api/answer", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert store.counts()["answers"] == 0
    ok = {"annotator": "alice", "lease_id": held["lease_id"], "label": 0}
    assert client.post("/api/answer", json=ok).status_code == 200
    again = client.post("/api/answer", json=ok)
    assert again.status_code == 409 and "double submission" in again.json()["detail"]
    assert client.post("/api/undo", json={"annotator": "nobody"}).status_code == 409
    assert client.get("/api/stats", params={"aggregate": "mean"}).status_code == 422
    assert len(store.answers()) == 1


def test_answer_to_an_expired_lease_is_refused(store: LabelStore) -> None:
    with TestClient(create_app(store.path, prerender=0, lease_s=0.2)) as client:
        held = lease(client)
        time.sleep(0.4)
        r = client.post(
            "/api/answer",
            json={"annotator": "alice", "lease_id": held["lease_id"], "label": "left"},
        )
        assert r.status_code == 410 and "expired" in r.json()["detail"]
    assert store.counts()["answers"] == 0


@pytest.mark.parametrize(
    "path",
    [
        "/static/..%2Fstore.py",
        "/static/../store.py",
        "/static/index.html",
        "/static/%2e%2e/server.py",
        "/clips/..%2F..%2Fetc%2Fpasswd/left",
        "/clips/no-such-query/left",
        "/clips/%2e%2e/left",
        "/eval/latest",
        "/nope",
        "/docs",
        "/openapi.json",
    ],
)
def test_no_path_escapes(client: TestClient, store: LabelStore, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404, (path, r.status_code)


def test_clip_of_unknown_side_or_unrenderable_state(client: TestClient) -> None:
    held = lease(client)
    assert client.get(f"/clips/{held['query_id']}/middle").status_code == 404
    # pair_queries' qpos has the wrong size for InvertedPendulum: a clear 422, no crash.
    r = client.get(held["clips"]["left"])
    assert r.status_code == 422 and "qpos" in r.json()["detail"]


def test_token_is_required_everywhere(store: LabelStore) -> None:
    with TestClient(create_app(store.path, token="s3cret", prerender=0)) as c:
        for path in ("/", "/static/app.js", "/api/status", "/clips/x/left", "/stats"):
            r = c.get(path)
            assert r.status_code == 401 and "token" in r.json()["detail"]
        assert c.post("/api/next", json={"annotator": "a"}).status_code == 401
        assert c.get("/api/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/status", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/api/status", headers={"X-Pbrl-Token": "s3cret"}).status_code == 200
        first = c.get("/?token=s3cret")  # the page's first load sets an HttpOnly cookie
        assert first.status_code == 200 and "pbrl_token" in first.headers["set-cookie"]
        assert "httponly" in first.headers["set-cookie"].lower()
        assert c.get("/api/status").status_code == 200  # the cookie now carries it


def test_foreign_host_header_is_refused(store: LabelStore) -> None:
    app = create_app(store.path, prerender=0, allowed_hosts=["127.0.0.1", "localhost"])
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        assert c.get("/api/health").status_code == 200
        assert c.get("/api/health", headers={"host": "evil.example:8000"}).status_code == 400


def test_non_loopback_bind_without_token_is_refused(
    store: LabelStore, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        label_main(["serve", "--store", str(store.path), "--host", "0.0.0.0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "refusing to serve on 0.0.0.0 without a token" in err and "--token" in err


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, words in [
        (["queries", "--store", str(tmp_path / "s.sqlite"), "--from-dataset", "x"], "--num"),
        (["serve"], "required: --store"),
        (
            ["queries", "--store", str(tmp_path / "s.sqlite"), "--num", "x"],
            "'x' is not a whole number",
        ),
        (["queries", "--store", str(tmp_path / "s.sqlite"), "--from-run", str(tmp_path)], "--num"),
        (
            [
                "queries",
                "--store",
                str(tmp_path / "s.sqlite"),
                "--from-run",
                str(tmp_path),
                "--num",
                "3",
            ],
            "config.yaml",
        ),
        (["export", "--store", str(tmp_path / "none.sqlite"), "--out", "x.npz"], "does not exist"),
    ]:
        with pytest.raises(SystemExit) as exc:
            label_main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("pbrl.label: error:") and words in err and "\n" not in err, err


def test_eval_video_from_store_metadata(
    client: TestClient, store: LabelStore, tmp_path: Path
) -> None:
    assert client.get("/api/status").json()["eval_video"] is None
    video = write_video(np.zeros((4, 16, 16, 3), np.uint8), tmp_path / "eval.mp4", fps=10)
    store.set_meta(eval_video=str(video), eval_video_step=5000, eval_video_return=12.5)
    ev = client.get("/api/status").json()["eval_video"]
    assert ev["url"].startswith("/eval/latest") and ev["step"] == "5000"
    r = client.get(ev["url"])
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    assert r.content == video.read_bytes()
    store.set_meta(eval_video=str(tmp_path / "labels.sqlite"))  # only video files are served
    assert client.get("/eval/latest").status_code == 404


def test_clips_render_lazily_and_ahead(tmp_path: Path, env_queries) -> None:  # type: ignore[no-untyped-def]
    store = LabelStore(tmp_path / "labels.sqlite")
    store.add_queries(env_queries, source="s")
    app = create_app(store.path, prerender=4, codec="vp9", width=64, height=64)
    with TestClient(app) as c:
        held = lease(c)
        r = c.get(held["clips"]["right"])
        assert r.status_code == 200 and r.headers["content-type"] == "video/webm"
        assert r.content[:4] == b"\x1a\x45\xdf\xa3"  # EBML: a WebM file
        ranged = c.get(held["clips"]["left"], headers={"Range": "bytes=0-99"})
        assert ranged.status_code == 206 and len(ranged.content) == 100
        deadline = time.time() + 60  # the worker renders the rest while nobody asks
        while app.state.clips.rendered < len(env_queries) and time.time() < deadline:
            time.sleep(0.1)
        answer = c.post(
            "/api/answer",
            json={"annotator": "alice", "lease_id": held["lease_id"], "label": "left"},
        ).json()
        assert answer["lease"]["ready"]  # the next pair is cached before it is shown


def test_queries_from_run_and_export_cli(
    tmp_path: Path,
    env_queries,  # type: ignore[no-untyped-def]
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pbrl.data.pool import TrajectoryPool

    # A fake run directory: config.yaml and a trajectory pool with simulator state.
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "config.yaml").write_text(
        f"name: fake\nenv:\n  id: {ENV}\n  kwargs: {{}}\nfeedback:\n  segment_length: 6\n"
    )
    segs = env_queries.first
    pool = TrajectoryPool(1, 500, segs.obs.shape[-1], segs.act.shape[-1], (), (2, 2), ENV, "fake")
    queries, _ = sources.queries_from_env(ENV, 2, segment_length=6, seed=1, steps=300)
    rng = np.random.default_rng(0)
    for _ in range(300):
        pool.add(
            rng.normal(size=(1, 4)),
            rng.normal(size=(1, 1)),
            np.ones(1),
            rng.normal(size=(1, 4)),
            np.zeros(1, bool),
            np.zeros(1, bool),
            qpos=rng.normal(size=(1, 2)),
            qvel=rng.normal(size=(1, 2)),
        )
    pool.save(run / "checkpoint" / "pool.npz")
    store = tmp_path / "s.sqlite"
    label_main(["queries", "--from-run", str(run), "--num", "5", "--store", str(store)])
    assert "added 5 pairs of InvertedPendulum-v5 (6 steps each)" in capsys.readouterr().out
    ds = PreferenceDataset(queries, np.array([np.nan, np.nan]))
    ds.save(tmp_path / "unlabeled.npz")
    label_main(
        [
            "queries",
            "--from-queries",
            str(tmp_path / "unlabeled.npz"),
            "--store",
            str(store),
            "--answers-per-query",
            "2",
        ]
    )
    db = LabelStore(store)
    assert db.counts()["total"] == 7
    for who in ("a", "b"):
        while (held := db.lease(who)) is not None:
            db.answer(held.lease_id, who, "left" if who == "a" else "right")
    out = tmp_path / "prefs.npz"
    label_main(["export", "--store", str(store), "--out", str(out), "--aggregate", "per-annotator"])
    per = PreferenceDataset.load(out)
    assert len(per) == 5 + 2 * 2 and set(per.annotator) == {"a", "b"}
    label_main(["export", "--store", str(store), "--out", str(out)])
    majority = PreferenceDataset.load(out)
    assert len(majority) == 7 and sorted(majority.labels.tolist()).count(0.5) == 2
    stats = json.loads((tmp_path / "prefs.stats.json").read_text())
    assert stats["pairwise"]["a | b"] == {"n": 2, "agreement": 0.0}
    label_main(["stats", "--store", str(store)])
    assert "between annotators: 0% (n=2)" in capsys.readouterr().out


# -- a real server process ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(store: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pbrl.label",
            "serve",
            "--store",
            str(store),
            "--port",
            str(port),
            "--prerender",
            "0",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the label server did not start in 60 s")


def labeler(
    url: str, name: str, acked: list, stop: threading.Event, start: threading.Barrier | None = None
) -> None:
    """Answer pairs until none are left (or the server dies); record acknowledged answers."""
    with httpx.Client(base_url=url, timeout=30) as c:
        if start is not None:
            start.wait()
        while not stop.is_set():
            try:
                held = c.post("/api/next", json={"annotator": name}).json()["lease"]
                if held is None:
                    return
                label = ("left", "right", "equal", "skip")[len(acked) % 4]
                r = c.post(
                    "/api/answer",
                    json={
                        "annotator": name,
                        "lease_id": held["lease_id"],
                        "query_id": held["query_id"],
                        "label": label,
                    },
                )
            except httpx.HTTPError:
                return  # the server is gone: whatever was not acknowledged may be lost
            if r.status_code == 200:
                acked.append(
                    (
                        r.json()["answer"]["id"],
                        held["query_id"],
                        name,
                        r.json()["answer"]["label"],
                        held["lease_id"],
                    )
                )


def test_server_sigkill_mid_stream_loses_no_acknowledged_answer(tmp_path: Path) -> None:
    path = tmp_path / "labels.sqlite"
    store = LabelStore(path)
    store.add_queries(pair_queries([1.0] * 300, [0.0] * 300), source="s")
    port = free_port()
    proc = start_server(path, port)
    url = f"http://127.0.0.1:{port}"
    acked: list = []
    stop = threading.Event()
    threads = [threading.Thread(target=labeler, args=(url, f"p{i}", acked, stop)) for i in range(3)]
    for t in threads:
        t.start()
    deadline = time.time() + 60
    while len(acked) < 30 and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # mid-stream: clients are still submitting
    proc.wait(10)
    for t in threads:
        t.join(30)
    assert len(acked) >= 30

    proc = start_server(path, port)  # restart on the same store
    try:
        rows = {r["id"]: r for r in LabelStore(path).answers()}
        for answer_id, query_id, name, label, _ in acked:
            row = rows[answer_id]
            assert (row["query_id"], row["annotator"], row["label"]) == (query_id, name, label)
        pairs = [(r["query_id"], r["annotator"]) for r in rows.values()]
        assert len(pairs) == len(set(pairs))  # no duplicates
        assert len({r["query_id"] for r in rows.values()}) == len(rows)  # one answer per pair
        # A client retrying an acknowledged answer after the restart gets a 409, not a duplicate.
        _, query_id, name, _, lease_id = acked[0]
        r = httpx.post(
            f"{url}/api/answer", json={"annotator": name, "lease_id": lease_id, "label": "left"}
        )
        assert r.status_code == 409
        # Labeling goes on where it stopped: each person first gets back the pair they held.
        more: list = []
        for i in range(3):
            labeler(url, f"p{i}", more, threading.Event())
        assert LabelStore(path).counts()["answered"] == 300
    finally:
        proc.kill()
        proc.wait(10)


def test_eight_simultaneous_clients_get_distinct_queries(tmp_path: Path) -> None:
    path = tmp_path / "labels.sqlite"
    LabelStore(path).add_queries(pair_queries([1.0] * 80, [0.0] * 80), source="s")
    port = free_port()
    proc = start_server(path, port)
    try:
        acked: list = []
        start = threading.Barrier(8)
        threads = [
            threading.Thread(
                target=labeler,
                args=(f"http://127.0.0.1:{port}", f"c{i}", acked, threading.Event(), start),
            )
            for i in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        proc.kill()
        proc.wait(10)
    queries = [a[1] for a in acked]
    assert len(queries) == 80 and len(set(queries)) == 80  # distinct pairs, all answered
    assert len({a[2] for a in acked}) >= 2  # the work was actually shared
    rows = LabelStore(path).answers()
    assert len(rows) == 80 and sorted(r["id"] for r in rows) == sorted(a[0] for a in acked)


# -- issue 11: strict answers, bounded bodies, safe starts, read-only commands ----------------
@pytest.mark.parametrize(
    "label", ["missing", None, "nan", "", "NaN-literal", "null"], ids=lambda x: repr(x)
)
def test_an_answer_without_a_label_is_refused_not_skipped(
    client: TestClient, store: LabelStore, label: object
) -> None:
    held = lease(client)
    body: dict[str, object] = {"annotator": "alice", "lease_id": held["lease_id"]}
    if label == "NaN-literal":  # Python's JSON reader takes a bare NaN
        r = client.post(
            "/api/answer",
            content=json.dumps(body)[:-1] + ', "label": NaN}',
            headers={"content-type": "application/json"},
        )
    else:
        if label != "missing":
            body["label"] = label
        r = client.post("/api/answer", json=body)
    assert r.status_code == 422, r.text
    assert '"skip"' in r.json()["detail"] and "\n" not in r.json()["detail"]
    assert store.counts()["answers"] == 0
    r = client.post("/api/answer", json={**body, "label": "skip"})  # the explicit skip
    assert r.status_code == 200 and r.json()["answer"]["label"] is None
    assert store.answers()[0]["label"] is None


def test_page_sends_skip_for_the_s_key() -> None:
    from importlib import resources

    app_js = (resources.files("pbrl.gui") / "static" / "app.js").read_text()
    assert 's: "skip", S: "skip"' in app_js  # the key map; answer() posts the word as label
    assert "label: choice" in app_js


def test_request_bodies_are_capped(client: TestClient, store: LabelStore) -> None:
    held = lease(client)
    body = {"annotator": "alice", "lease_id": held["lease_id"], "label": "left"}
    big = json.dumps({**body, "pad": "x" * 10_000_000}).encode()
    r = client.post("/api/answer", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "too large" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield json.dumps(body)[:-1].encode() + b', "pad": "'
        for _ in range(100):
            yield b"x" * 1000
        yield b'"}'

    r = client.post("/api/answer", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert store.counts()["answers"] == 0
    assert client.post("/api/answer", json=body).status_code == 200  # a normal answer


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--port", "99999"], "--port 99999 is out of range: use a port from 1 to 65535"),
        (["--port", "0"], "--port 0 is out of range"),
        (["--lease-s", "0"], "--lease-s 0 is invalid"),
        (["--lease-s", "-5"], "--lease-s -5 is invalid"),
        (["--lease-s", "nan"], "--lease-s nan is invalid"),
        (["--prerender", "-1"], "--prerender -1 is invalid"),
        (["--store", "{tmp}/somefile.txt/labels.sqlite"], "somefile.txt is a file, not a folder"),
        (["--store", "{tmp}"], "is a folder, not a label store file"),
        (["--store", "{tmp}/music.sqlite"], "is not a pbrl label store (its tables are songs)"),
        (["--cache", "{tmp}/somefile.txt/clips"], "cannot make the clip folder"),
    ],
)
def test_serve_refuses_bad_settings_before_serving(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    words: str,
) -> None:
    import sqlite3

    import pbrl.gui.server

    real_create_app = pbrl.gui.server.create_app

    def serve(store: str, **kwargs: Any) -> None:  # builds the app, never listens
        kwargs = {k: v for k, v in kwargs.items() if k not in ("host", "port", "log_level")}
        real_create_app(store, **kwargs)
        raise AssertionError("the server started")

    monkeypatch.setattr(pbrl.gui.server, "serve", serve)
    (tmp_path / "somefile.txt").write_text("not a folder")
    conn = sqlite3.connect(tmp_path / "music.sqlite")
    conn.execute("CREATE TABLE songs (title TEXT)")
    conn.commit()
    conn.close()
    argv = [a.format(tmp=tmp_path) for a in argv]
    store = [] if "--store" in argv else ["--store", str(tmp_path / "labels.sqlite")]
    with pytest.raises(SystemExit) as exc:
        label_main(["serve", *store, *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pbrl.label: error:") and words in err and "\n" not in err, err


def _without_root_powers() -> list[str]:
    """A command prefix under which root obeys file permissions (as everyone else does)."""
    if os.geteuid() != 0:
        return []
    import shutil

    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: file permissions do not apply")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.parametrize("what", ["file", "folder"])
def test_serve_refuses_a_read_only_store_at_start(tmp_path: Path, what: str) -> None:
    path = tmp_path / "ro" / "labels.sqlite"
    LabelStore(path).add_queries(pair_queries([1.0], [0.0]), source="s")
    (tmp_path / "ro" / "labels_clips").mkdir()
    locked = path if what == "file" else path.parent
    locked.chmod(0o444 if what == "file" else 0o555)
    cmd = [sys.executable, "-m", "pbrl.label", "serve", "--store", str(path)]
    try:
        result = subprocess.run(
            [*_without_root_powers(), *cmd, "--port", str(free_port()), "--prerender", "0"],
            capture_output=True,
            text=True,
            timeout=60,  # a server that started anyway would run until this kills it
        )
    finally:
        locked.chmod(0o755 if what == "folder" else 0o644)
    assert result.returncode == 2, result.stderr
    err = result.stderr.strip()
    assert err.startswith("pbrl.label: error:") and "\n" not in err, err
    assert ("is read-only" if what == "file" else "ro is not writable") in err


@pytest.mark.parametrize("command", ["stats", "export"])
def test_read_only_commands_change_nothing_and_refuse_foreign_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    import sqlite3

    foreign = tmp_path / "music.sqlite"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE songs (title TEXT)")
    conn.commit()
    conn.close()
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    extra = ["--out", str(tmp_path / "out.npz")] if command == "export" else []
    for path, words in [
        (foreign, "is not a pbrl label store (its tables are songs)"),
        (empty, "is not a pbrl label store (an empty database)"),
        (tmp_path / "none.sqlite", "does not exist"),
    ]:
        before = path.read_bytes() if path.exists() else None
        with pytest.raises(SystemExit) as exc:
            label_main([command, "--store", str(path), *extra])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("pbrl.label: error:") and words in err and "\n" not in err, err
        assert (path.read_bytes() if path.exists() else None) == before  # untouched
        assert not Path(f"{path}-wal").exists() and not Path(f"{path}-shm").exists()
    conn = sqlite3.connect(foreign)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["songs"]
    conn.close()
    assert not (tmp_path / "out.npz").exists()


def test_export_writes_stats_where_the_readme_says(
    store: LabelStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    held = store.lease("alice")
    assert held is not None
    store.answer(held.lease_id, "alice", "left")
    out = tmp_path / "sub" / "prefs"  # no suffix: the dataset gets .npz, stats sit beside it
    label_main(["export", "--store", str(store.path), "--out", str(out)])
    printed = capsys.readouterr().out
    assert (tmp_path / "sub" / "prefs.npz").is_file()
    stats = tmp_path / "sub" / "prefs.stats.json"
    assert json.loads(stats.read_text())["progress"]["answers"] == 1
    assert f"to {tmp_path / 'sub' / 'prefs.npz'}" in printed and str(stats) in printed
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    labeling = readme.split("## Labeling by people")[1].split("\n## ")[0]
    assert "`<out stem>.stats.json`" in labeling and "prefs.stats.json" in labeling
    assert "<out>.stats.json" not in labeling


# -- queries from an offline dataset -------------------------------------------------------------
def _hopper_episode(rng: np.random.Generator, length: int, state: bool) -> object:
    from pbrl.data.offline import Episode

    term, trunc = np.zeros(length, bool), np.zeros(length, bool)
    trunc[-1] = True
    qpos = np.concatenate(  # upright-ish Hopper states: x, z = 1.25, small angles
        [
            np.linspace(0, 1, length + 1)[:, None],
            np.full((length + 1, 1), 1.25),
            0.05 * rng.normal(size=(length + 1, 4)),
        ],
        axis=1,
    )
    qvel = 0.1 * rng.normal(size=(length + 1, 6))
    return Episode(
        np.concatenate([qpos[:, 1:], qvel], 1),
        rng.uniform(-1, 1, (length, 3)).astype(np.float32),
        np.ones(length),
        term,
        trunc,
        qpos if state else None,
        qvel if state else None,
    )


def test_queries_from_a_local_minari_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("minari", reason="needs the `offline` extra (minari[hdf5])")
    from pbrl.data.offline import save_minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    rng = np.random.default_rng(0)
    save_minari(
        "pbrl-test/hopper/state-v0",
        [_hopper_episode(rng, n, True) for n in (12, 9)],
        "Hopper-v5",
    )
    save_minari("pbrl-test/hopper/nostate-v0", [_hopper_episode(rng, 10, False)], "Hopper-v5")
    path = tmp_path / "labels.sqlite"
    base = ["queries", "--store", str(path), "--num", "3", "--segment-length", "4"]
    label_main([*base, "--from-dataset", "pbrl-test/hopper/state-v0", "--seed", "1"])
    assert "added 3 pairs of Hopper-v5 (4 steps each)" in capsys.readouterr().out
    db = LabelStore(path)
    rows = db.upcoming(10)
    assert len(rows) == 3 and {r["env_id"] for r in rows} == {"Hopper-v5"}
    first, _ = db.segments(rows[0]["id"])
    assert first.qpos is not None and first.qpos.shape == (1, 5, 6) and first.length == 4
    assert db.query(rows[0]["id"])["source"] == "pbrl-test/hopper/state-v0"
    with TestClient(create_app(path, prerender=0, width=64, height=64)) as c:  # clips render
        held = lease(c)
        r = c.get(held["clips"]["left"])
        assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"

    for dataset, words in [
        ("pbrl-test/hopper/nostate-v0", "recorded no simulator state (qpos/qvel"),
        ("pbrl/hopper/medium-v0", "`python scripts/make_dataset.py --env hopper --kinds medium`"),
        (
            "pbrl-tiny/hopper/medium-replay-v0",
            "make_dataset.py --preset tiny --env hopper --kinds medium-replay --namespace pbrl-tiny",
        ),
        ("mujoco/hopper/medium-v0", "`minari download mujoco/hopper/medium-v0`"),
    ]:
        with pytest.raises(SystemExit) as exc:
            label_main([*base, "--from-dataset", dataset])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("pbrl.label: error:") and words in err and "\n" not in err, err
        if dataset.startswith("pbrl"):
            assert "minari download" not in err  # pbrl's own ids are not on Minari's server
    assert LabelStore(path).counts()["total"] == 3


# -- clips people can watch ----------------------------------------------------------------------
def test_short_clips_loop_and_reacher_is_visible(tmp_path: Path) -> None:
    """Reacher's 25-step segments last 0.5 s: the clip repeats them to >= 2 s; its camera
    looks from above, close, with a bright target (the default view is a small grey patch)."""
    import imageio_ffmpeg

    from pbrl.gui.clips import LOOP_HOLD_S

    queries, info = sources.queries_from_env("Reacher-v5", 1, segment_length=25, seed=0)
    store = LabelStore(tmp_path / "labels.sqlite")
    store.add_queries(queries, source="s")
    with TestClient(create_app(store.path, prerender=0, width=128, height=128)) as c:
        held = lease(c)
        r = c.get(held["clips"]["left"])
        assert r.status_code == 200
    clip = tmp_path / "left.mp4"
    clip.write_bytes(r.content)
    reader = imageio_ffmpeg.read_frames(str(clip))
    meta = reader.__next__()
    frames = np.stack([np.frombuffer(f, np.uint8).reshape(128, 128, 3) for f in reader]).astype(int)
    assert len(frames) / meta["fps"] >= 2.0, (len(frames), meta["fps"])
    period = 26 + round(LOOP_HOLD_S * meta["fps"])  # 26 states, then the last one held
    assert len(frames) % period == 0
    assert np.abs(frames[0] - frames[period]).mean() < 2  # the segment starts over
    red = (frames[..., 0] > 150) & (frames[..., 1] < 70) & (frames[..., 2] < 70)
    assert red.sum(axis=(1, 2)).min() >= 15  # the target is visible in every frame
    assert frames.mean() > 150  # a bright floor, not the default dim grey (~80)
    png = os.environ.get("PBRL_SAVE_CLIP_FRAME")  # look at it: PBRL_SAVE_CLIP_FRAME=x.png
    if png:
        import imageio.v3 as iio

        iio.imwrite(png, frames[10].astype(np.uint8))
