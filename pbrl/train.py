"""The one training entry point: ``python -m pbrl.train +exp=NAME [key=value ...]``.

Bad input (unknown experiment, env id, teacher parameter) is reported as one line naming
the problem and the valid choices, with exit code 2, before any work starts.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, NoReturn, cast

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pbrl.errors import ConfigError

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
            raise ConfigError(f"unknown {key} {value!r}: choose one of {', '.join(choices(key))}")


def validate(cfg: DictConfig) -> None:
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
    if cfg.sim != "gymnasium" and env_id not in BATCHED_ENV_IDS:
        raise ConfigError(
            f"sim={cfg.sim} does not implement {env_id!r}: choose one of "
            f"{', '.join(BATCHED_ENV_IDS)}, or sim=gymnasium"
        )
    if cfg.total_timesteps <= 0:
        raise ConfigError(f"total_timesteps={cfg.total_timesteps} must be positive")
    if cfg.max_feedback < 0:
        raise ConfigError(f"max_feedback={cfg.max_feedback} must be >= 0")
    # Build the teacher once here so an invalid parameter fails before training starts.
    import numpy as np
    from hydra.utils import instantiate

    try:
        instantiate(cfg.teacher, rng=np.random.default_rng(0))
    except Exception as exc:
        cause: BaseException = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise ConfigError(str(cause)) from exc


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
    base.merge_with(OmegaConf.from_dotlist([o.lstrip("+") for o in overrides]))
    base.resume = None
    return cast(DictConfig, base), run_dir  # _main wrote config.yaml from a DictConfig


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def _main(cfg: DictConfig) -> dict[str, Any]:
    try:
        if cfg.resume:
            cfg, run_dir = resume_config(cfg)
        else:
            run_dir = Path(HydraConfig.get().runtime.output_dir)
        validate(cfg)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        if cfg.algo.get("kind", "online") == "offline":
            from pbrl.offline import run_offline

            summary = run_offline(cfg, run_dir)
        else:
            from pbrl.online.trainer import run_online

            summary = run_online(cfg, run_dir)
    except ConfigError as exc:  # Hydra would print a traceback for an Exception
        fail(exc)
    log.info("summary: %s", run_dir / "summary.json")
    print(
        f"eval_true_return_mean={summary['eval_true_return_mean']:.1f} "
        f"(random {summary['random_true_return_mean']:.1f}), labels={summary['num_labels']}, "
        f"run dir: {run_dir}"
    )
    return summary


def fail(exc: Exception) -> NoReturn:
    print(f"pbrl.train: error: {exc}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    try:
        check_group_overrides(sys.argv[1:])
    except ConfigError as exc:
        fail(exc)
    _main()


if __name__ == "__main__":
    main()
