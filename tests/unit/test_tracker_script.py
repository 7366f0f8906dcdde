"""The tracker ingest serves: under 1,200 bytes gzipped, and exactly what terser makes of the
readable source (so the two never drift apart)."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import pytest

from queueflow.ingest.tracker_js import SCRIPT

SOURCE = Path(str(SCRIPT)).parent
BUDGET_GZIPPED = 1200


def test_the_tracker_is_small() -> None:
    minified = SCRIPT.read_bytes()
    assert len(gzip.compress(minified, compresslevel=9)) <= BUDGET_GZIPPED
    assert len(gzip.compress(minified, compresslevel=6)) <= BUDGET_GZIPPED


def test_it_speaks_the_contract() -> None:
    """Names the page relies on survive minification (they are strings or properties)."""
    minified = SCRIPT.read_text()
    for needle in (
        '"data-"',
        '"site"',
        '"endpoint"',
        '"user-id"',
        '"hash"',
        '"respect-dnt"',
        '"queueflow_uid"',
        "sendBeacon",
        "keepalive",
        "globalPrivacyControl",
        "doNotTrack",
        '"pushState"',
        '"replaceState"',
        '"popstate"',
        '"hashchange"',
        "event_id",
        '"identify"',
        '"pageview"',
    ):
        assert needle in minified, needle


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed (terser runs on it)")
def test_the_minified_file_is_terser_output_of_the_source(tmp_path: Path) -> None:
    for name in ("tracker.js", "package.json", "package-lock.json"):
        shutil.copy(SOURCE / name, tmp_path / name)
    npm = ["npm", "--no-audit", "--no-fund", "--silent"]
    subprocess.run([*npm, "ci"], cwd=tmp_path, check=True, timeout=300)
    subprocess.run([*npm, "run", "build"], cwd=tmp_path, check=True, timeout=120)
    assert (tmp_path / "tracker.min.js").read_bytes() == SCRIPT.read_bytes(), "run `make tracker`"
