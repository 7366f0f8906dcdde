"""Debian's Chromium for the browser tests, driven by Playwright (never a downloaded browser):
where it is, and the flags a root, offline machine needs (see the machine notes): no sandbox
as root, and no background networking that the closed network would refuse. A test module
calls `require()` first: without the browser it skips, saying why."""

from __future__ import annotations

import shutil
from types import ModuleType

import pytest

FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require() -> tuple[str, ModuleType]:
    """The browser's path and Playwright's sync API, or a module-level skip."""
    path = shutil.which("chromium")
    if path is None:
        pytest.skip(
            "browser test: Debian's chromium is not installed (.ci/chromium.sh)",
            allow_module_level=True,
        )
    return path, pytest.importorskip("playwright.sync_api")
