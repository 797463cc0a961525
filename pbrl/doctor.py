"""Check an install: ``python -m pbrl.doctor [--outputs DIR]``.

Prints one table row per check with what to do about it: the optional extras (an extra that
is not installed is a row naming its install command, not a failure), headless MuJoCo
rendering with the chosen ``MUJOCO_GL`` backend, H.264 encoding through imageio's ffmpeg,
SQLite's write-ahead log in the outputs folder, and the GPU and Warp devices. Exit code 1
only when the core install is broken (MuJoCo cannot render, ffmpeg cannot encode, SQLite WAL
fails), else 0.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pbrl.errors import INSTALL

# extra -> the modules it installs (pyproject.toml's optional dependencies)
EXTRAS: dict[str, tuple[str, ...]] = {
    "gui": ("fastapi", "uvicorn"),
    "sweep": (
        "hydra_plugins.hydra_joblib_launcher",
        "hydra_plugins.hydra_submitit_launcher",
        "matplotlib",
    ),
    "offline": ("minari",),
    "vlm": ("openai",),
    "clip": ("open_clip",),
    "warp": ("mujoco_warp", "warp"),
}
WHAT = {
    "gui": "the labeling page (pbrl.label serve, teacher=human)",
    "sweep": "Hydra launchers (joblib, submitit, Slurm), sweep plots",
    "offline": "offline datasets (Minari)",
    "vlm": "teacher=vlm (OpenAI-compatible endpoints)",
    "clip": "reward=clip (VLM-RM)",
    "warp": "sim=mujoco_warp (MuJoCo Warp)",
}

# A 2-geom scene rendered off-screen in a fresh process (a broken GL driver may crash it).
RENDER = """
import os, sys
import mujoco, numpy as np
xml = '<mujoco><worldbody><light pos="0 0 3"/><geom type="plane" size="1 1 .1"/>' \\
      '<body pos="0 0 .3"><freejoint/><geom type="sphere" size=".1" rgba="1 0 0 1"/></body>' \\
      '</worldbody></mujoco>'
model = mujoco.MjModel.from_xml_string(xml)
data = mujoco.MjData(model)
mujoco.mj_forward(model, data)
renderer = mujoco.Renderer(model, 48, 64)
renderer.update_scene(data)
frame = renderer.render()
renderer.close()
assert frame.shape == (48, 64, 3) and frame.std() > 0, "the frame is blank"
print("ok")
"""


@dataclass
class Row:
    check: str
    status: str  # ok | missing | FAILED | info
    detail: str
    todo: str = ""
    core: bool = False  # a failure here breaks the install

    @property
    def broken(self) -> bool:
        return self.core and self.status == "FAILED"


def importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:  # ImportError, or a package that fails while importing
        return False
    return True


def check_extras() -> list[Row]:
    rows = []
    for extra, modules in EXTRAS.items():
        missing = [m for m in modules if not importable(m)]
        if missing:
            rows.append(
                Row(
                    f"extra {extra}",
                    "missing",
                    f"not installed ({', '.join(missing)}): {WHAT[extra]}",
                    INSTALL[extra],
                )
            )
        else:
            rows.append(Row(f"extra {extra}", "ok", WHAT[extra]))
    return rows


def check_render(timeout: float = 120) -> Row:
    backend = os.environ.get("MUJOCO_GL", "egl")
    name = f"MuJoCo renders headless (MUJOCO_GL={backend})"
    todo = {
        "egl": "install an EGL driver (Debian: apt-get install -y libegl1 libgl1-mesa-dri), "
        "or try MUJOCO_GL=osmesa",
        "osmesa": "apt-get install -y libosmesa6, or try MUJOCO_GL=egl",
    }.get(backend, "set MUJOCO_GL=egl (or osmesa with libosmesa6)")
    try:
        out = subprocess.run(
            [sys.executable, "-c", RENDER],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "MUJOCO_GL": backend},
        )
    except subprocess.TimeoutExpired:
        return Row(name, "FAILED", f"no frame in {timeout:.0f} s", todo, core=True)
    if out.returncode == 0 and out.stdout.strip().endswith("ok"):
        return Row(name, "ok", "a 64x48 frame", core=True)
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
    return Row(name, "FAILED", lines[-1] if lines else f"exit {out.returncode}", todo, core=True)


def check_ffmpeg() -> Row:
    name = "ffmpeg encodes H.264 (imageio)"
    todo = "pip install 'imageio[ffmpeg]' (it brings its own ffmpeg)"
    try:
        import imageio.v2 as imageio
        import numpy as np

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "clip.mp4"
            frames = np.zeros((8, 48, 64, 3), np.uint8)
            frames[:, :, :, 0] = np.arange(8, dtype=np.uint8)[:, None, None] * 30
            imageio.mimwrite(path, list(frames), fps=10, codec="libx264", macro_block_size=16)
            size = path.stat().st_size
    except Exception as exc:
        return Row(name, "FAILED", f"{type(exc).__name__}: {exc}".splitlines()[0], todo, True)
    if size == 0:
        return Row(name, "FAILED", "an empty file", todo, core=True)
    return Row(name, "ok", f"an 8-frame clip, {size} bytes", core=True)


def check_sqlite(outputs: Path) -> Row:
    folder = outputs
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the folder a run would create outputs/ in
    name = f"SQLite WAL in {folder}"
    todo = (
        "run from a folder on a local disk you can write (WAL needs shared memory: "
        "not NFS or other network file systems)"
    )
    try:
        with tempfile.TemporaryDirectory(dir=folder, prefix=".pbrl-doctor-") as tmp:
            db = sqlite3.connect(Path(tmp) / "check.sqlite")
            try:
                mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                db.execute("CREATE TABLE t (x)")
                db.execute("INSERT INTO t VALUES (1)")
                db.commit()
                n = db.execute("SELECT count(*) FROM t").fetchone()[0]
            finally:
                db.close()
    except (OSError, sqlite3.Error) as exc:
        return Row(name, "FAILED", f"{type(exc).__name__}: {exc}", todo, core=True)
    if mode != "wal" or n != 1:
        return Row(name, "FAILED", f"journal_mode={mode}", todo, core=True)
    return Row(name, "ok", "journal_mode=wal, a write read back", core=True)


def check_devices() -> list[Row]:
    import torch

    if torch.cuda.is_available():
        gpu = Row("GPU (torch)", "ok", f"{torch.cuda.get_device_name(0)}: device=cuda works")
    else:
        gpu = Row(
            "GPU (torch)",
            "info",
            f"none visible (torch {torch.__version__}): runs use the CPU",
            "for device=cuda: a CUDA build of torch and an NVIDIA driver",
        )
    if not importable("warp"):
        return [gpu, Row("Warp devices", "info", "Warp is not installed", INSTALL["warp"])]
    try:
        import warp as wp

        wp.config.quiet = True
        devices = [str(d) for d in wp.get_devices()]
    except Exception as exc:
        return [gpu, Row("Warp devices", "info", f"Warp does not start: {exc}")]
    cuda = [d for d in devices if d.startswith("cuda")]
    return [
        gpu,
        Row(
            "Warp devices",
            "ok" if cuda else "info",
            ", ".join(devices),
            "" if cuda else "sim=mujoco_warp runs on the CPU only (slow); a GPU makes it fast",
        ),
    ]


def table(rows: list[Row]) -> str:
    head = ("check", "status", "detail", "what to do")
    cells = [(r.check, r.status, r.detail, r.todo or "-") for r in rows]
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(3)]
    lines = []
    for c in [head, *cells]:
        lines.append("  ".join(c[i].ljust(widths[i]) for i in range(3)) + "  " + c[3])
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * len(head[3]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pbrl.doctor", description=__doc__)
    parser.add_argument(
        "--outputs", type=Path, default=Path("outputs"), help="where runs write (outputs/)"
    )
    args = parser.parse_args(argv)
    rows = [
        Row("pbrl", "ok", f"{Path(__file__).parent} on Python {sys.version.split()[0]}"),
        *check_extras(),
        check_render(),
        check_ffmpeg(),
        check_sqlite(args.outputs.expanduser().absolute()),
        *check_devices(),
    ]
    print(table(rows))
    broken = [r.check for r in rows if r.broken]
    if broken:
        print(f"pbrl.doctor: the core install is broken: {'; '.join(broken)}", file=sys.stderr)
        return 1
    missing = sum(r.status == "missing" for r in rows)
    print(f"pbrl.doctor: the core install works ({missing} optional extras not installed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
