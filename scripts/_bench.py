"""What the benchmark scripts share: a finished run is read back instead of rerun.

A run's result is a JSON file written in one step (a temporary file renamed into place), so
it is either whole or absent. On a rerun of a benchmark:

* the result exists, parses, and was made with the same settings: it is reused;
* it is missing or unreadable (the run crashed or was killed): the run's leftovers are
  removed and it runs again from scratch, so its wall time is one whole run's;
* it was made with other settings: the benchmark stops with one line, rather than mixing
  settings in one table or overwriting a finished run (give those settings another --out).

Imported by ``scripts/bench_*.py`` and ``scripts/replay_*.py`` as ``_bench`` (the scripts'
folder is on ``sys.path`` when a script runs).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any


class SettingsChanged(SystemExit):
    """A finished run made with other settings sits where this one would go."""


def slug(name: str) -> str:
    """A variant's name as a folder name: letters and digits kept, the rest ``_``."""
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def parse_setting(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME:key=value,key=value`` (a replay script's ``--set``) as the name and the values:
    ints, floats (with a dot) and ``null`` (None)."""
    name, _, spec = text.partition(":")
    values: dict[str, Any] = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        values[key] = None if value == "null" else float(value) if "." in value else int(value)
    return name, values


def read_json(path: Path) -> Any | None:
    """``path``'s JSON, or None when it is missing or not whole."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` so that a reader sees all of it or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    tmp.replace(path)


def finished(result: dict | None, settings: Any, stored: Any, where: Path) -> bool:
    """Whether ``result`` (a run's record, None when absent) is reusable: it exists and its
    ``stored`` settings equal ``settings``. Other settings raise :class:`SettingsChanged`."""
    if result is None:
        return False
    if stored != settings:
        raise SettingsChanged(
            f"[bench] {where} holds a finished run with other settings ({stored} != {settings}); "
            "give these settings another --out, or delete it to rerun"
        )
    print(f"[bench] reusing {where}", flush=True)
    return True


def clear(*paths: Path) -> None:
    """Remove what an unfinished run left (a run folder, a half-written log), so that it
    reruns from scratch."""
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def make_dataset() -> ModuleType:
    """``scripts/make_dataset.py`` as a module (its ``parse_args`` and ``build``), for the
    benchmarks that build their datasets on first use."""
    if "make_dataset" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "make_dataset", Path(__file__).resolve().parent / "make_dataset.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["make_dataset"] = module
        spec.loader.exec_module(module)
    return sys.modules["make_dataset"]
