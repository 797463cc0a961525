"""The labeling page in a real browser: Playwright driving Debian's Chromium, headless.

Skipped (with the reason) where ``playwright`` or a ``chromium`` binary is missing; never
downloads a browser. ``PBRL_UPDATE_SCREENSHOT=1`` also writes docs/label_page.png.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pbrl.gui import sources
from pbrl.gui.server import BackgroundServer
from pbrl.store import LabelStore
from pbrl.video import write_video

playwright_api = pytest.importorskip(
    "playwright.sync_api",
    reason="playwright is not installed (pip install playwright; never `playwright install`)",
)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no chromium binary on PATH (apt-get install -y chromium)", allow_module_level=True)

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
ENV = "InvertedPendulum-v5"
N = 7
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except Exception as exc:  # a broken or sandboxed chromium: say so instead of failing
            pytest.skip(f"chromium at {CHROMIUM} does not start under playwright: {exc}")
        yield b
        b.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def warm_server(
    tmp_path: Path, n: int = N, env: str = ENV, length: int = 20, size: int = 192, **kwargs: object
) -> BackgroundServer:
    """A served store whose clips are all rendered before the page opens."""
    store = LabelStore(tmp_path / "labels.sqlite")
    queries, info = sources.queries_from_env(env, n, segment_length=length, seed=0)
    store.add_queries(queries, source="browser-test")
    return prerendered(
        BackgroundServer(
            store.path, port=free_port(), prerender=n, width=size, height=size, **kwargs
        ),
        n,
    )


def prerendered(server: BackgroundServer, n: int, timeout: float = 180.0) -> BackgroundServer:
    """``server`` started, once its ``n`` queries' clips are all rendered."""
    server.start()
    clips = server.app.state.clips
    clips.poke()
    deadline = time.time() + timeout
    while clips.rendered < n and time.time() < deadline:
        time.sleep(0.1)
    assert clips.rendered == n, "pre-rendering did not finish"
    return server


def wait_playing(page: object) -> None:
    """Both clips loaded, with a duration, and their clocks advance (and stay in sync)."""
    page.wait_for_function(  # type: ignore[attr-defined]
        "() => ['left', 'right'].every(id => { const v = document.getElementById(id);"
        " return v.readyState >= 2 && v.duration > 0 && !v.paused; })",
        timeout=30000,
    )
    t0 = page.evaluate("[left.currentTime, right.currentTime]")  # type: ignore[attr-defined]
    page.wait_for_timeout(400)  # type: ignore[attr-defined]
    t1 = page.evaluate("[left.currentTime, right.currentTime]")  # type: ignore[attr-defined]
    duration = page.evaluate("left.duration")  # type: ignore[attr-defined]
    for a, b in zip(t0, t1, strict=True):  # advanced (or wrapped around at the loop end)
        assert b != a and (b > a or b < 0.2 * duration), (t0, t1)


def answers(store: LabelStore, include_retracted: bool = False) -> dict[str, float | None]:
    return {r["query_id"]: r["label"] for r in store.answers(include_retracted)}


def test_keyboard_labeling_in_chromium(browser: object, tmp_path: Path) -> None:
    server = warm_server(tmp_path)
    store = LabelStore(tmp_path / "labels.sqlite")
    try:
        page = browser.new_page(viewport={"width": 1200, "height": 900})  # type: ignore[attr-defined]
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        sent: list[object] = []  # the label of every answer the page posts
        page.on(
            "request",
            lambda r: (
                sent.append(json.loads(r.post_data or "{}").get("label"))
                if r.url.endswith("/api/answer")
                else None
            ),
        )
        page.goto(server.url + "/?annotator=alice")
        page.wait_for_function("document.body.dataset.query", timeout=30000)
        wait_playing(page)
        assert abs(page.evaluate("left.currentTime - right.currentTime")) < 0.2  # in sync
        assert page.inner_text("#task").startswith("Keep the pole balanced")
        assert page.inner_text("#pending") == str(N)

        expected = {}
        for key, label in [
            ("ArrowLeft", 0.0),
            ("ArrowRight", 1.0),
            ("ArrowDown", 0.5),
            ("=", 0.5),
            ("s", None),
        ]:
            shown = page.evaluate("document.body.dataset.query")
            page.keyboard.press(key)
            page.wait_for_function(
                f"document.body.dataset.query !== '{shown}' && "
                "document.body.dataset.state === 'ready'",
                timeout=30000,
            )
            expected[shown] = label
            assert answers(store) == expected, key  # stored in SQLite, with the right label
            wait_playing(page)  # the next pair plays at once: its clips were cached
        # The skip key sends the word "skip": a missing label is refused by the server.
        assert sent == ["left", "right", "equal", "equal", "skip"]
        assert page.inner_text("#mine") == "5" and page.inner_text("#answered") == "5"
        assert page.inner_text("#pending") == str(N - 5)

        # Undo: the skipped pair comes back, its answer is retracted (kept in the store).
        skipped = [q for q, lab in expected.items() if lab is None][0]
        page.keyboard.press("u")
        page.wait_for_function(f"document.body.dataset.query === '{skipped}'", timeout=30000)
        page.wait_for_function("document.getElementById('mine').textContent === '4'")
        assert skipped not in answers(store) and skipped in answers(store, include_retracted=True)
        assert "Undone" in page.inner_text("#message")
        page.keyboard.press("ArrowRight")
        page.wait_for_function(f"document.body.dataset.query !== '{skipped}'", timeout=30000)
        assert answers(store)[skipped] == 1.0

        # Buttons do the same as keys; the speed control drives both clips.
        shown = page.evaluate("document.body.dataset.query")
        page.click("#btn-left")
        page.wait_for_function(f"document.body.dataset.query !== '{shown}'", timeout=30000)
        assert answers(store)[shown] == 0.0
        page.select_option("#speed", "2")
        assert page.evaluate("[left.playbackRate, right.playbackRate]") == [2, 2]
        page.keyboard.press("[")
        assert page.evaluate("[left.playbackRate, right.playbackRate]") == [1, 1]
        assert page.inner_text("#mine") == "6"
        assert server.app.state.clips.rendered == N  # every clip came from the warm cache

        # The stats view: alice's answers, and her agreement with the scripted oracle.
        page.goto(server.url + "/stats")
        page.wait_for_selector("#annotators tbody tr", timeout=30000)
        row = page.inner_text("#annotators tbody tr")
        assert row.startswith("alice") and "6" in row and "%" in row
        assert "6 answers" in page.inner_text("#summary")
        assert not errors, errors
        page.close()
    finally:
        server.stop()


def test_token_page_and_eval_video(browser: object, tmp_path: Path) -> None:
    server = warm_server(tmp_path, n=2, token="s3cret")
    store = LabelStore(tmp_path / "labels.sqlite")
    video = write_video(np.full((10, 32, 32, 3), 90, np.uint8), tmp_path / "eval_000001000.mp4", 10)
    store.set_meta(eval_video=str(video), eval_video_step=1000, eval_video_return=3.5)
    try:
        page = browser.new_page()  # type: ignore[attr-defined]
        denied = page.goto(server.url + "/?annotator=bob")
        assert denied is not None and denied.status == 401
        page.goto(server.url + "/?token=s3cret&annotator=bob")
        assert "s3cret" not in page.url  # the secret leaves the address bar
        page.wait_for_function("document.body.dataset.query", timeout=30000)
        wait_playing(page)
        page.wait_for_function("!document.getElementById('eval').hidden", timeout=30000)
        page.wait_for_function(
            "document.getElementById('evalvideo').readyState >= 1", timeout=30000
        )
        assert "1,000 environment steps" in page.inner_text("#evalinfo")
        shown = page.evaluate("document.body.dataset.query")
        page.keyboard.press("ArrowRight")
        page.wait_for_function(f"document.body.dataset.query !== '{shown}'", timeout=30000)
        assert answers(store) == {shown: 1.0}
        page.close()
    finally:
        server.stop()


@pytest.mark.slow
def test_screenshot(browser: object, tmp_path: Path) -> None:
    """The page as a person sees it (HalfCheetah); PBRL_UPDATE_SCREENSHOT=1 updates the docs."""
    server = warm_server(tmp_path, n=3, env="HalfCheetah-v5", length=40, size=320)
    store = LabelStore(tmp_path / "labels.sqlite")
    from pbrl.video import record_episode

    _, video = record_episode(
        "HalfCheetah-v5",
        lambda o: np.zeros(6),
        0,
        tmp_path / "eval.mp4",
        max_steps=60,
        width=160,
        height=160,
    )
    store.set_meta(eval_video=str(video), eval_video_step=20000, eval_video_return=-3.2)
    for name, label in (("bob", "left"), ("carol", "right")):
        lease = store.lease(name)
        store.answer(lease.lease_id, name, label)
    try:
        page = browser.new_page(viewport={"width": 1100, "height": 1000})  # type: ignore[attr-defined]
        page.goto(server.url + "/?annotator=alice")
        page.wait_for_function("document.body.dataset.query", timeout=30000)
        wait_playing(page)
        page.wait_for_function("!document.getElementById('eval').hidden", timeout=30000)
        page.wait_for_timeout(700)
        out = tmp_path / "label_page.png"
        page.screenshot(path=str(out), full_page=True)
        assert out.stat().st_size > 20_000
        if os.environ.get("PBRL_UPDATE_SCREENSHOT"):
            (REPO / "docs").mkdir(exist_ok=True)
            shutil.copy(out, REPO / "docs" / "label_page.png")
        page.close()
    finally:
        server.stop()
