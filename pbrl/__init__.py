"""pbrl: preference-based reinforcement learning for robotics and control."""

import logging
import os
import sys

# Headless rendering by default; must be set before MuJoCo's renderer is first imported.
os.environ.setdefault("MUJOCO_GL", "egl")

__version__ = "0.1.0"


def _quiet() -> None:
    """Silence two harmless messages every run printed: MuJoCo 4's deprecation warning for
    gymnasium's HalfCheetah XML (``settotalmass``, once per model compiled) and PyOpenGL's
    note that its optional accelerator is missing. Other MuJoCo warnings still print."""
    logging.getLogger("OpenGL.acceleratesupport").setLevel(logging.WARNING)
    try:
        import mujoco
    except ImportError:  # pragma: no cover - mujoco is a dependency
        return
    previous = mujoco.get_mju_user_warning()

    def warn(message: str) -> None:
        if "settotalmass" in message:
            return
        if previous is not None:
            previous(message)
        else:
            print(f"WARNING: {message}", file=sys.stderr)

    mujoco.set_mju_user_warning(warn)


_quiet()
