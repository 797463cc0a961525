"""The labeling page in Chromium with a personalized reward (reward=vpl) announced: each
annotator's progress shows how sure the model is about their latent z, after each answer.

Skipped (with the reason) where ``playwright`` or a ``chromium`` binary is missing, as
tests/test_label_browser.py (whose browser fixture and helpers it uses).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from test_label_browser import browser, free_port, prerendered  # noqa: F401  (a fixture)

from pbrl.data import PreferenceDataset
from pbrl.gui import sources
from pbrl.gui.server import BackgroundServer
from pbrl.rewards import VPLConfig, VPLReward
from pbrl.store import LabelStore
from pbrl.teachers.human import HumanTeacher

ENV = "pbrl/TwoGoal-v0"
N = 3


def test_page_shows_z_spread_after_each_answer(browser: object, tmp_path: Path) -> None:  # noqa: F811
    queries, _ = sources.queries_from_env(ENV, 24, segment_length=10, seed=0)
    labels = PreferenceDataset(
        queries,
        np.arange(24, dtype=np.float64) % 2,
        np.array(["alice", "bob"] * 12),
    )
    torch.manual_seed(0)
    model = VPLReward(
        4, 2, VPLConfig(hidden=16, n_layers=2, latent_dim=4, context_size=4, updates=3)
    )
    model.fit(labels, np.random.default_rng(0))
    store = LabelStore(tmp_path / "labels.sqlite")
    store.add_queries(queries[np.arange(N)], source="vpl-page")
    teacher = HumanTeacher(store=str(store.path))
    teacher.set_reward_model(model)  # what a reward=vpl run with teacher=human announces
    server = prerendered(
        BackgroundServer(store.path, port=free_port(), prerender=N, width=128, height=128), N
    )
    try:
        page = browser.new_page(viewport={"width": 1200, "height": 900})  # type: ignore[attr-defined]
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/?annotator=alice")
        page.wait_for_function("document.body.dataset.state === 'ready'", timeout=30000)
        assert page.is_visible("#zspread-box")
        assert page.inner_text("#zspread") == "1.00"  # the prior: nothing known about her
        assert "from 0 labels" in page.get_attribute("#zspread-box", "title")
        for k in (1, 2):
            page.keyboard.press("ArrowLeft")
            page.wait_for_function(
                f"document.getElementById('zspread-box').title.includes('from {k} labels')",
                timeout=30000,
            )
            mine = store.annotator_labels("alice")
            assert mine is not None
            _, log_var = model.posterior(mine)
            shown = float(page.inner_text("#zspread"))
            assert abs(shown - float(np.exp(0.5 * log_var).mean())) < 0.006
        assert not errors, errors
        page.close()
    finally:
        server.stop()
        teacher.close()


def test_page_hides_z_spread_without_a_latent_reward(browser: object, tmp_path: Path) -> None:  # noqa: F811
    queries, _ = sources.queries_from_env(ENV, N, segment_length=10, seed=0)
    store = LabelStore(tmp_path / "labels.sqlite")
    store.add_queries(queries, source="plain")
    server = prerendered(
        BackgroundServer(store.path, port=free_port(), prerender=N, width=128, height=128), N
    )
    try:
        page = browser.new_page()  # type: ignore[attr-defined]
        page.goto(server.url + "/?annotator=alice")
        page.wait_for_function("document.body.dataset.state === 'ready'", timeout=30000)
        assert not page.is_visible("#zspread-box")
        page.close()
    finally:
        server.stop()
