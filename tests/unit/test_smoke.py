"""`queueflow smoke` fails clearly when the deployment does not answer (its success path runs
in tests/chart/test_chart_commands.py against real processes)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import free_port


def test_smoke_fails_with_a_reason_when_ingest_is_unreachable() -> None:
    # A process of its own, as the helm test pod runs it: the CLI configures logging onto
    # its stdout, which in-process would be this test's capture, closed after it.
    url = f"http://127.0.0.1:{free_port()}"
    command = ["smoke", "--ingest-url", url, "--reporting-url", url, "--timeout", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "queueflow", *command],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "POST /event failed" in done.stderr
