"""The one training entry point: ``python -m pbrl.train +exp=NAME [key=value ...]``.

Bad input (unknown experiment, env id, teacher parameter) is reported as one line naming
the problem and the valid choices, with exit code 2, before any work starts.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pbrl.errors import ConfigError, closest, closest_name, require_extra

if TYPE_CHECKING:
    from pbrl.recipes import Checked

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
log = logging.getLogger("pbrl")


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def check_group_overrides(argv: list[str]) -> None:
    """Catch unknown config-group options before Hydra prints a multi-line error."""
    groups = [p.name for p in CONF_DIR.iterdir() if p.is_dir()]
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if sep and key in groups and value and "," not in value and value not in choices(key):
            near = closest_name(value, choices(key))
            hint = f"did you mean {near}? " if near else ""
            raise ConfigError(
                f"unknown {key} {value!r}: {hint}choose one of {', '.join(choices(key))}"
            )


def validate(cfg: DictConfig) -> Checked:
    """Every check that needs no simulation, once: the env, backend, budget and device here,
    the recipe's own settings in its ``check``, and the teacher, built once."""
    import gymnasium as gym

    import pbrl.envs  # noqa: F401  (registers pbrl/ environments)

    env_id = cfg.env.id
    if env_id not in gym.registry:
        mujoco_ids = sorted(
            k
            for k, v in gym.registry.items()
            if "mujoco" in str(v.entry_point) and k.endswith("-v5")
        )
        raise ConfigError(
            f"unknown env id {env_id!r} (env.id): registered MuJoCo choices: "
            f"{', '.join(mujoco_ids)}; or use env=<{'|'.join(choices('env'))}>"
        )
    from pbrl.sim import BATCHED_ENV_IDS, SIMS

    if cfg.sim not in SIMS:
        raise ConfigError(f"unknown sim {cfg.sim!r}: choose one of {', '.join(SIMS)}")
    if cfg.sim == "mujoco_warp":
        require_extra("warp", ("mujoco_warp", "warp"), "sim=mujoco_warp")
    if cfg.sim != "gymnasium" and env_id not in BATCHED_ENV_IDS:
        raise ConfigError(
            f"sim={cfg.sim} does not implement {env_id!r}: choose one of "
            f"{', '.join(BATCHED_ENV_IDS)}, or sim=gymnasium"
        )
    if not isinstance(cfg.total_timesteps, int) or cfg.total_timesteps <= 0:
        raise ConfigError(f"total_timesteps={cfg.total_timesteps} must be a positive integer")
    if not isinstance(cfg.seed, int):
        raise ConfigError(f"seed={cfg.seed!r} must be an integer")
    if cfg.max_feedback < 0:
        raise ConfigError(f"max_feedback={cfg.max_feedback} must be >= 0")
    from pbrl.run import resolve_device

    resolve_device(str(cfg.device))
    if cfg.get("user") and cfg.algo.get("kind", "online") != "offline":  # VPL's user latent
        raise ConfigError(f"user={cfg.user} picks an annotator's latent: it needs algo=vpl_iql")
    if cfg.algo.get("kind", "online") == "offline":
        try:
            import minari  # noqa: F401
        except ImportError:
            raise ConfigError(
                "offline runs read Minari datasets, which need the offline extra: "
                "pip install -e '.[offline]'"
            ) from None
    from pbrl import recipes

    return recipes.check(cfg)


def resume_config(cfg: DictConfig) -> tuple[DictConfig, Path]:
    """The saved config of the run to resume, with this command's overrides on top."""
    run_dir = Path(cfg.resume).expanduser().resolve()
    saved = run_dir / "config.yaml"
    if not saved.exists():
        raise ConfigError(
            f"resume={cfg.resume}: no config.yaml there; pass the run directory "
            "of an earlier pbrl.train run (it holds config.yaml and checkpoint/)"
        )
    base = OmegaConf.load(saved)
    overrides = [
        o
        for o in HydraConfig.get().overrides.task
        if not o.lstrip("+").startswith(("resume=", "exp="))
    ]
    for o in overrides:
        key = o.partition("=")[0]
        if not o.startswith(("+", "~", "hydra.")) and OmegaConf.select(base, key) is None:
            known = _dotted_keys(base)
            raise ConfigError(
                f"resume: {key!r} is not a setting of that run{closest(key, known)} "
                f"(a new key needs a leading +)"
            )
    base.merge_with(
        OmegaConf.from_dotlist([o.lstrip("+") for o in overrides if not o.startswith("hydra.")])
    )
    base.resume = None
    return cast(DictConfig, base), run_dir  # _main wrote config.yaml from a DictConfig


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def _main(cfg: DictConfig) -> dict[str, object]:
    hydra_dir = Path(HydraConfig.get().runtime.output_dir)
    run_dir = hydra_dir
    resuming = bool(cfg.resume)
    try:
        if resuming:
            cfg, run_dir = resume_config(cfg)
            from pbrl.checkpoint import Checkpoint

            checkpoint = Checkpoint(run_dir)
            checkpoint.recover()
            if checkpoint.complete():
                checkpoint.verify()  # a damaged checkpoint fails before anything is rewritten
        from pbrl import recipes
        from pbrl.run import announce

        checked = validate(cfg)  # a config that fails here never started: one error line
        announce(cfg, run_dir, resuming)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        summary = recipes.run(cfg, run_dir, checked)
    except ConfigError as exc:  # Hydra would print a traceback for an Exception
        if run_dir == hydra_dir and not (run_dir / "summary.json").exists():
            discard(run_dir)  # a run that never started leaves no directory behind
        fail(exc)
    log.info("summary: %s", run_dir / "summary.json")
    print(
        f"eval_true_return_mean={summary['eval_true_return_mean']:.1f} "
        f"(random {summary['random_true_return_mean']:.1f}), labels={summary['num_labels']}, "
        f"run dir: {run_dir}"
    )
    return summary


def discard(run_dir: Path) -> None:
    """Undo what Hydra and the start of a run made for a run that never started: its
    ``.hydra/``, log and ``config.yaml``, the empty folders a runner made (``checkpoint/``),
    then the run directory and the folders above it, each only if empty and inside the
    working directory (never the working directory itself)."""
    log_name = f"{HydraConfig.get().job.name}.log"
    made = {".hydra", log_name, "config.yaml"}
    for sub in ("checkpoint", "tb"):
        if (run_dir / sub).is_dir() and not any((run_dir / sub).iterdir()):
            made.add(sub)
    if run_dir.is_dir() and any(p.name not in made for p in run_dir.iterdir()):
        return  # the run started (labels, checkpoint, logs): a resume needs all of it
    shutil.rmtree(run_dir / ".hydra", ignore_errors=True)
    (run_dir / log_name).unlink(missing_ok=True)
    (run_dir / "config.yaml").unlink(missing_ok=True)
    for sub in ("checkpoint", "tb"):
        if (run_dir / sub).is_dir() and not any((run_dir / sub).iterdir()):
            (run_dir / sub).rmdir()
    cwd = Path.cwd().resolve()
    folder = run_dir.resolve()
    while folder != cwd and cwd in folder.parents and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


def fail(exc: Exception) -> NoReturn:
    print(f"pbrl.train: error: {exc}", file=sys.stderr)
    sys.exit(2)


HYDRA_FLAGS = (
    "--help",
    "-h",
    "--hydra-help",
    "--info",
    "-i",
    "--cfg",
    "-c",
    "--resolve",
    "--version",
    "--shell-completion",
    "-sc",
)


# hydra/launcher=NAME -> (the extra, the plugin module it installs)
LAUNCHERS = {
    "joblib": ("sweep", "hydra_plugins.hydra_joblib_launcher"),
    "submitit_local": ("sweep", "hydra_plugins.hydra_submitit_launcher"),
    "submitit_slurm": ("sweep", "hydra_plugins.hydra_submitit_launcher"),
    "slurm": ("sweep", "hydra_plugins.hydra_submitit_launcher"),
    "ray": ("ray", "hydra_plugins.hydra_ray_launcher"),
    "ray_local": ("ray", "hydra_plugins.hydra_ray_launcher"),
}


def check_launcher(argv: list[str]) -> None:
    """A launcher whose plugin is not installed names the extra that installs it (Hydra
    would list the launchers it has)."""
    for arg in argv:
        key, _, value = arg.lstrip("+~").partition("=")
        if key == "hydra/launcher" and value in LAUNCHERS:
            extra, module = LAUNCHERS[value]
            require_extra(extra, (module,), f"hydra/launcher={value}")


def check_arguments(argv: list[str]) -> list[str]:
    """One-line errors for what Hydra would answer with a multi-line one (or not at all),
    and the extra arguments a resume needs. Returns ``argv`` to hand to Hydra."""
    if any(a.split("=")[0] in HYDRA_FLAGS for a in argv):
        return argv
    check_launcher(argv)
    check_group_overrides(argv)
    args = [a for a in argv if not a.startswith("-")]
    resume = next((a.partition("=")[2] for a in args if a.startswith("resume=")), None)
    if resume:
        if not any(a.startswith("hydra.run.dir=") for a in args):
            # log into the resumed run's own folder; write no second .hydra/ there
            argv = [*argv, f"hydra.run.dir={resume}", "hydra.output_subdir=null"]
        return argv
    if not any(a.lstrip("+").startswith("exp=") for a in args):
        raise ConfigError(
            "no experiment given: run python -m pbrl.train +exp=NAME with one of "
            f"{', '.join(choices('exp'))} (or resume=RUN_DIR)"
        )
    check_keys(args)
    return argv


def check_keys(args: list[str]) -> None:
    """A misspelled key (``total_timestep=100``) names the closest valid one."""
    from hydra import compose, initialize_config_dir

    groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    structural: list[str] = []
    plain: list[str] = []
    for a in args:
        key, sep, value = a.partition("=")
        if not sep or key.lstrip("+~").startswith("hydra") or "," in value:
            continue  # Hydra's own settings and sweeps are Hydra's to check
        bare = key.lstrip("+~")
        (structural if key[0] in "+~" or bare in groups or "/" in bare else plain).append(a)
    from hydra.errors import HydraException

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        try:
            base = compose("config", overrides=structural)
        except HydraException as exc:
            raise ConfigError(composition_advice(exc, structural)) from None
    known = _dotted_keys(base)
    for a in plain:
        key = a.partition("=")[0]
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(base, parent) if parent else base
        if not isinstance(node, DictConfig) or leaf not in node:
            raise ConfigError(
                f"unknown setting {key!r}{closest(key, known)} (a new key needs a leading +)"
            )


def composition_advice(exc: Exception, overrides: list[str]) -> str:
    """One line for Hydra's multi-line composition error: the override and its fix."""
    message = " ".join(str(exc).split())
    for o in overrides:
        key, _, value = o.partition("=")
        bare = key.lstrip("+~")
        if f"'{bare}'" not in message:
            continue
        if key.startswith("+") and "already" in message:
            return f"{o}: the key {bare} exists: drop the + ({bare}={value})"
    return message


def _dotted_keys(cfg: Any, prefix: str = "") -> list[str]:
    out = []
    for k, v in cfg.items():
        name = f"{prefix}{k}"
        out.append(name)
        if isinstance(v, DictConfig):
            out += _dotted_keys(v, name + ".")
    return out


# config groups that only exps build on: not choices of their own in --help
HIDDEN_GROUPS = ("exp/base:",)


def main() -> None:
    try:
        sys.argv[1:] = check_arguments(sys.argv[1:])
    except ConfigError as exc:
        fail(exc)
    if not any(a in ("--help", "-h") for a in sys.argv[1:]):
        _main()
        return
    text = io.StringIO()
    try:
        with contextlib.redirect_stdout(text):
            _main()
    finally:
        lines = text.getvalue().splitlines(keepends=True)
        sys.stdout.write("".join(ln for ln in lines if not ln.startswith(HIDDEN_GROUPS)))


if __name__ == "__main__":
    main()
