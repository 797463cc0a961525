"""Browser tests never skip silently (a pytest plugin that tests/conftest.py loads).

A test or test module skipped because Chromium (or Playwright) is missing is counted, and the
run ends with one line saying so and naming the command that installs Chromium. With
``CI=true`` such a skip is a failure instead: CI must run the browser tests.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

INSTALL = "apt-get install -y chromium"
WORDS = ("chromium", "playwright")


def browser_skip_reason(report: Any) -> str | None:
    """The reason of a skip for want of a browser, or None."""
    if not report.skipped:
        return None
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason if any(w in reason.lower() for w in WORDS) else None


def _fail_in_ci(report: Any) -> None:
    reason = browser_skip_reason(report)
    if reason is not None and os.environ.get("CI", "").lower() == "true":
        report.outcome = "failed"
        report.longrepr = f"browser test would skip under CI=true ({reason}): {INSTALL}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Generator[None, Any, None]:
    outcome = yield
    _fail_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    outcome = yield
    _fail_in_ci(outcome.get_result())


def pytest_terminal_summary(terminalreporter: Any) -> None:
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if browser_skip_reason(r)]
    if skipped:
        terminalreporter.write_line(
            f"browser tests skipped ({len(skipped)}: {browser_skip_reason(skipped[0])}); "
            f"install Chromium to run them: {INSTALL}"
        )
