"""The rough edges a new user hit (issue 11, items 9, 14, 16): quiet runs, one progress style,
one-line errors for a missing extra and for segments the data cannot give."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from pbrl.data.offline import Episode, OfflineDataset
from pbrl.errors import ConfigError
from pbrl.run import Progress
from pbrl.train import CONF_DIR, validate


def test_mujoco_deprecation_and_opengl_notes_are_silenced():
    code = (
        "import logging; logging.basicConfig(level=logging.INFO)\n"
        "import pbrl, gymnasium as gym\n"
        "import OpenGL.GL  # noqa: F401  (the import that logs the accelerate note)\n"
        "for _ in range(3): gym.make('HalfCheetah-v5').reset(seed=0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"MUJOCO_GL": "egl", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "settotalmass" not in out.stderr + out.stdout
    assert "OpenGL_accelerate" not in out.stderr + out.stdout


def test_progress_is_a_plain_line_when_output_is_not_a_terminal(caplog):
    caplog.set_level(logging.INFO, logger="pbrl")
    progress = Progress(1000, "pebble", every_fraction=0.25, every_s=1e9)
    for n in range(0, 1001, 50):
        progress.update_to(n, ep_return="12.5")
    progress.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "pbrl"]
    assert progress.bar is None  # pytest's captured stderr is not a terminal
    assert 4 <= len(lines) <= 5, lines
    assert lines[0].startswith("pebble: 250/1000 steps (25%)") and "ep_return 12.5" in lines[0]


def test_an_offline_run_without_the_offline_extra_is_one_line(monkeypatch):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["+exp=offline_tiny"])
    monkeypatch.setitem(sys.modules, "minari", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[offline\]'"):
        validate(cfg)


def _episode(length: int, terminated: bool) -> Episode:
    rng = np.random.default_rng(length)
    term, trunc = np.zeros(length, bool), np.zeros(length, bool)
    (term if terminated else trunc)[-1] = True
    return Episode(
        rng.normal(size=(length + 1, 4)), rng.normal(size=(length, 2)), np.ones(length), term, trunc
    )


def test_segment_length_against_the_dataset(caplog):
    from pbrl.offline.runner import check_segment_length

    short = OfflineDataset.from_episodes(
        [_episode(5, False), _episode(6, False)], dataset_id="short"
    )
    with pytest.raises(ConfigError, match="longer than every episode of short"):
        check_segment_length(short, 10, needed=True)
    check_segment_length(short, 10, needed=False)  # BC and the oracle compare nothing
    mixed = OfflineDataset.from_episodes(
        [_episode(5, False), _episode(6, False), _episode(30, False)], dataset_id="mixed"
    )
    with caplog.at_level(logging.WARNING, logger="pbrl"):
        check_segment_length(mixed, 10, needed=True)
    assert any("longer than 67% of the episodes of mixed" in r.getMessage() for r in caplog.records)


# -- issue 25 ------------------------------------------------------------------------------


def run_module(module: str, *args: str, cwd, env=None, code: str | None = None, timeout=180):
    """``python -m MODULE ARGS`` (or ``python -c CODE ARGS``) in ``cwd``, as a user runs it."""
    import os

    full = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1", **(env or {})}
    full["PYTHONPATH"] = os.pathsep.join(
        [str(CONF_DIR.parent), *filter(None, [full.get("PYTHONPATH")])]
    )
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout)


def one_error_line(out: subprocess.CompletedProcess) -> str:
    """The one line a failed start prints (after the run's announcement, when it got that far:
    a missing dataset is found once the run has started)."""
    lines = [ln for ln in (out.stdout + out.stderr).strip().splitlines() if ln.strip()]
    lines = [ln for ln in lines if "[pbrl][INFO] - run " not in ln]
    assert out.returncode == 2 and len(lines) == 1, (out.returncode, out.stdout, out.stderr)
    return lines[0]


def test_a_failed_offline_start_leaves_no_run_directory(tmp_path):
    out = run_module(
        "pbrl.train",
        "+exp=offline_tiny",
        "dataset.id=pbrl-tiny/hopper/nothing-v0",
        cwd=tmp_path,
        env={"MINARI_DATASETS_PATH": str(tmp_path / "minari")},
    )
    assert "is not in the local Minari store" in one_error_line(out)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert not any(p.startswith("outputs") for p in left), left


def run_without(missing: tuple[str, ...], module: str, *args: str, cwd, timeout=180):
    """``python -m MODULE ARGS`` as if the packages ``missing`` were not installed."""
    code = (
        "import runpy, sys\n"
        f"for name in {missing!r}:\n"
        "    sys.modules[name] = None  # an import of it fails as if not installed\n"
        f"sys.argv[0] = {module!r}\n"
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
    )
    return run_module(module, *args, cwd=cwd, code=code, timeout=timeout)


def test_label_serve_without_the_gui_extra_is_one_line(tmp_path):
    out = run_without(("fastapi",), "pbrl.label", "serve", "--store", "x.sqlite", cwd=tmp_path)
    line = one_error_line(out)
    assert "pbrl.label serve needs the gui extra" in line and "pip install -e '.[gui]'" in line
    assert not (tmp_path / "x.sqlite").exists()


def test_a_human_teacher_without_the_gui_extra_is_one_line(tmp_path):
    out = run_without(("uvicorn",), "pbrl.train", "+exp=human_quickstart", cwd=tmp_path)
    line = one_error_line(out)
    assert "teacher=human" in line and "pip install -e '.[gui]'" in line
    assert not (tmp_path / "outputs").exists()


def test_sim_mujoco_warp_without_mujoco_warp_is_one_line(tmp_path):
    out = run_without(
        ("mujoco_warp",), "pbrl.train", "+exp=prefppo_halfcheetah", "sim=mujoco_warp", cwd=tmp_path
    )
    line = one_error_line(out)
    assert "sim=mujoco_warp needs MuJoCo Warp" in line and "pip install mujoco-warp" in line


@pytest.mark.parametrize(
    "launcher,plugin,extra",
    [
        ("joblib", "hydra_plugins.hydra_joblib_launcher", "sweep"),
        ("submitit_local", "hydra_plugins.hydra_submitit_launcher", "sweep"),
        ("slurm", "hydra_plugins.hydra_submitit_launcher", "sweep"),
        ("ray_local", "hydra_plugins.hydra_ray_launcher", "ray"),
    ],
)
def test_a_launcher_without_its_extra_is_one_line(launcher, plugin, extra, tmp_path):
    out = run_without(
        (plugin,),
        "pbrl.train",
        "-m",
        "+exp=quickstart",
        "seed=0,1",
        f"hydra/launcher={launcher}",
        cwd=tmp_path,
    )
    line = one_error_line(out)
    assert f"hydra/launcher={launcher} needs the {extra} extra" in line
    assert f"pip install -e '.[{extra}]'" in line
    assert not (tmp_path / "multirun").exists()


def rounds_held(schedule, first: int, total: int, n_envs: int = 1) -> list[int]:
    """The steps at which FeedbackCallback holds a round in a run of ``total`` steps."""
    from types import SimpleNamespace

    from pbrl.online.feedback import FeedbackCallback

    callback = FeedbackCallback(schedule, None, None, None, start_at=first)  # type: ignore[arg-type]
    held: list[int] = []

    def feedback_round() -> None:
        held.append(callback.num_timesteps)
        callback.state.queries += schedule.round_size(callback.state.queries)

    callback.feedback_round = feedback_round  # type: ignore[method-assign]
    callback.model = SimpleNamespace(num_timesteps=0, _total_timesteps=total)  # type: ignore[assignment]
    while callback.model.num_timesteps < total:  # as SB3's learn loop
        callback.model.num_timesteps += n_envs
        callback.on_step()
    return held


def test_the_rounds_warning_counts_the_rounds_the_run_holds(monkeypatch, caplog):
    from pbrl.online import trainer

    monkeypatch.setattr(trainer, "_WARNED", set())
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["+exp=human_quickstart", "max_feedback=100"])
    with caplog.at_level(logging.WARNING, logger="pbrl"):
        algo, schedule = trainer.check(cfg)
    first = max(algo.unsupervised_steps, schedule.first_at)
    held = rounds_held(schedule, first, int(cfg.total_timesteps))
    assert held == [1000, 2000, 3000, 4000, 5000, 6000, 7000]  # none at step 8000, the end
    assert schedule.rounds(first, int(cfg.total_timesteps)) == len(held)
    warned = [r.getMessage() for r in caplog.records if "queries fit" in r.getMessage()]
    assert len(warned) == 1 and f"({len(held)} rounds of 10" in warned[0], warned
    for total, n_envs in ((7999, 1), (8001, 1), (8000, 4), (8002, 4)):
        held = rounds_held(schedule, first, total, n_envs)
        assert len(held) == schedule.rounds(first, total), (total, n_envs, held)


def test_no_shipped_experiment_warns_about_its_own_budget(monkeypatch, caplog):
    from pbrl import recipes
    from pbrl.online import trainer
    from pbrl.train import choices

    monkeypatch.setattr(trainer, "_WARNED", set())
    exps = choices("exp")
    assert "human_quickstart" in exps and "quickstart" in exps
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for name in exps:
            cfg = compose("config", overrides=[f"+exp={name}"])
            if cfg.algo.get("kind", "online") != "offline":
                with caplog.at_level(logging.WARNING, logger="pbrl"):
                    recipes.recipe_for(cfg).check(cfg)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned == []


@pytest.mark.parametrize(
    "arg,near",
    [
        ("+exp=prefpo_halfcheetah", "prefppo_halfcheetah"),
        ("teacher=oracel", "oracle"),
        ("env=hoper", "hopper"),
    ],
)
def test_a_misspelled_group_value_names_the_closest_first(arg, near, tmp_path):
    args = [arg] if arg.startswith("+exp") else ["+exp=quickstart", arg]
    line = one_error_line(run_module("pbrl.train", *args, cwd=tmp_path))
    group, _, value = arg.lstrip("+").partition("=")
    assert line.startswith(f"pbrl.train: error: unknown {group} {value!r}: did you mean {near}? ")
    assert "choose one of" in line and line.index(f"mean {near}?") < line.index("choose one of")
    listed = line.split("choose one of ", 1)[1].split(", ")
    assert near in listed and len(listed) > 3  # then the whole list
    assert not (tmp_path / "outputs").exists()


def test_a_plus_on_an_existing_key_is_one_line_of_advice(tmp_path):
    out = run_module("pbrl.train", "+exp=quickstart", "+algo.kwargs.train_freq=32", cwd=tmp_path)
    line = one_error_line(out)
    assert "the key algo.kwargs.train_freq exists: drop the +" in line
    assert "(algo.kwargs.train_freq=32)" in line
    assert not (tmp_path / "outputs").exists()


def test_help_hides_the_exps_base_group(tmp_path):
    out = run_module("pbrl.train", "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    groups = [ln.split(":")[0] for ln in out.stdout.splitlines() if ": " in ln]
    assert "exp" in groups and "teacher" in groups and "algo" in groups
    assert "exp/base" not in out.stdout


def test_readme_names_every_run_output_and_where_datasets_go():
    readme = (CONF_DIR.parent / "README.md").read_text()
    table = readme.split("## What a run produces", 1)[1].split("\n## ", 1)[0]
    files = [row.split("`")[1] for row in table.splitlines() if row.startswith("| `")]
    assert {"summary.json", "tb/", "checkpoint/", "config.yaml"} <= set(files)
    assert {"train.log", "tb/progress.csv"} <= set(files)
    assert "(docs/offline.md)" in readme  # where datasets go: the offline page says
    offline = (CONF_DIR.parent / "docs" / "offline.md").read_text()
    assert "~/.minari/datasets/" in offline and "MINARI_DATASETS_PATH=" in offline


_RUN_SCRIPT = "import runpy, sys; sys.argv.pop(0); runpy.run_path(sys.argv[0], run_name='__main__')"


def _sweep_job(root, num: int, overrides: list[str], ret: float) -> None:
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    summary = {
        "exp": "quickstart",
        "algo": "pebble",
        "env_id": "Reacher-v5",
        "teacher": {"_target_": "pbrl.teachers.ScriptedTeacher", "beta": "inf", "gamma": 1.0},
        "seed": int(overrides[1].split("=")[1]),
        "total_timesteps": 300,
        "num_labels": 8,
        "eval_true_return_mean": ret,
        "eval_true_return_std": 0.0,
        "random_true_return_mean": -40.0,
        "reward_model_test_accuracy": 0.9,
        "wall_time_s": 10.0,
        "peak_rss_mb": 500.0,
    }
    (job / "summary.json").write_text(json.dumps(summary))


def test_sweep_summary_shows_each_jobs_overrides_not_the_teacher_dict(tmp_path):
    import csv

    for num, (teacher, seed) in enumerate([("oracle", 0), ("oracle", 1), ("mistake", 0)]):
        _sweep_job(tmp_path, num, ["+exp=quickstart", f"seed={seed}", f"teacher={teacher}"], -5.0)
    script = str(CONF_DIR.parent / "scripts" / "sweep_summary.py")
    out = run_module("", script, str(tmp_path), cwd=tmp_path, code=_RUN_SCRIPT)
    assert out.returncode == 0, out.stderr
    md = (tmp_path / "summary.md").read_text()
    assert "_target_" not in md and "ScriptedTeacher" not in md
    runs = [ln for ln in md.splitlines() if ln.startswith("| 0 |") or ln.startswith("| 2 |")]
    assert "+exp=quickstart seed=0 teacher=oracle" in runs[0]
    assert "+exp=quickstart seed=0 teacher=mistake" in runs[1]
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert [r["overrides"] for r in rows][2] == "+exp=quickstart seed=0 teacher=mistake"
    assert {r["configuration"] for r in rows} == {
        "+exp=quickstart teacher=oracle",
        "+exp=quickstart teacher=mistake",
    }


def test_sweep_summary_without_the_sweep_extra_is_one_line(tmp_path):
    _sweep_job(tmp_path, 0, ["+exp=quickstart", "seed=0"], -5.0)
    script = str(CONF_DIR.parent / "scripts" / "sweep_summary.py")
    code = "import sys; sys.modules['matplotlib'] = None\n" + _RUN_SCRIPT
    out = run_module("", script, str(tmp_path), cwd=tmp_path, code=code)
    out.stdout = ""  # the tables come first; the plot is what needs the extra
    line = one_error_line(out)
    assert "needs the sweep extra" in line and "pip install -e '.[sweep]'" in line


def test_an_expert_no_better_than_random_gives_no_normalized_score(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_dataset", CONF_DIR.parent / "scripts" / "make_dataset.py"
    )
    assert spec is not None and spec.loader is not None
    make = importlib.util.module_from_spec(spec)
    sys.modules["make_dataset"] = make  # dataclasses look their module up while it runs
    spec.loader.exec_module(make)
    make.warn_if_no_expert("Hopper-v5", 16.3, 250.0)
    assert capsys.readouterr().out == ""
    make.warn_if_no_expert("Hopper-v5", 16.3, 9.4)  # the tiny preset's "expert"
    said = capsys.readouterr().out.strip().splitlines()
    assert len(said) == 1 and "(return 9.4) is no better than random (16.3)" in said[0]
    worse = OfflineDataset.from_episodes(
        [_episode(5, True)], dataset_id="d", ref_min_score=16.3, ref_max_score=9.4
    )
    assert worse.normalized_score(12.0) is None  # not a score that rises as the policy falls
    good = OfflineDataset.from_episodes(
        [_episode(5, True)], dataset_id="d", ref_min_score=10.0, ref_max_score=20.0
    )
    assert good.normalized_score(15.0) == pytest.approx(50.0)


BROWSERLESS = """
import pytest

pytest.skip("no chromium binary on PATH (apt-get install -y chromium)", allow_module_level=True)


def test_page():
    pass
"""


@pytest.mark.parametrize("ci", ["", "true"])
def test_browser_tests_never_skip_silently(ci, tmp_path):
    (tmp_path / "test_page.py").write_text(BROWSERLESS)
    (tmp_path / "test_other.py").write_text("def test_other():\n    pass\n")
    tests = str(CONF_DIR.parent / "tests")
    out = run_module(
        "pytest",
        "-p",
        "browser_skips",
        "-p",
        "no:cacheprovider",
        str(tmp_path),
        cwd=tmp_path,
        env={"CI": ci, "PYTHONPATH": tests},
    )
    said = [ln for ln in out.stdout.splitlines() if ln.startswith("browser tests skipped")]
    if ci:
        assert out.returncode != 0, out.stdout  # a collection error stops the run
        assert "browser test would skip under CI=true" in out.stdout
        assert "apt-get install -y chromium" in out.stdout
    else:
        assert out.returncode == 0, out.stdout
        assert len(said) == 1 and said[0].endswith(
            "install Chromium to run them: apt-get install -y chromium"
        )


def test_doctor_checks_the_install(tmp_path):
    out = run_module("pbrl.doctor", "--outputs", str(tmp_path / "outputs"), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = {ln.split("  ")[0]: ln for ln in out.stdout.splitlines()}
    for extra in ("gui", "sweep", "offline", "vlm", "clip", "warp"):
        row = rows[f"extra {extra}"]
        assert " ok " in row or ("missing" in row and "pip install" in row), row
    assert "ok" in rows["MuJoCo renders headless (MUJOCO_GL=egl)"]
    assert "ok" in rows["ffmpeg encodes H.264 (imageio)"]
    assert f"SQLite WAL in {tmp_path}" in out.stdout  # outputs/ does not exist yet: its parent
    assert "GPU (torch)" in rows and "Warp devices" in rows
    assert not list(tmp_path.iterdir())  # the checks leave nothing behind


def test_doctor_names_a_missing_extra_and_fails_only_for_the_core(tmp_path):
    out = run_without(("fastapi", "imageio"), "pbrl.doctor", cwd=tmp_path)
    rows = {ln.split("  ")[0]: ln for ln in out.stdout.splitlines()}
    assert "missing" in rows["extra gui"] and "pip install -e '.[gui]'" in rows["extra gui"]
    assert "FAILED" in rows["ffmpeg encodes H.264 (imageio)"]
    assert out.returncode == 1 and "the core install is broken" in out.stderr
    ok = run_without(("fastapi",), "pbrl.doctor", cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
