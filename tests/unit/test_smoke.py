"""`queueflow smoke` fails clearly when the deployment does not answer (its success path runs
in tests/chart/test_chart_commands.py against real processes)."""

from __future__ import annotations

from queueflow.cli import main
from tests.helpers import free_port


def test_smoke_fails_with_a_reason_when_ingest_is_unreachable(capsys) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["smoke", "--ingest-url", url, "--reporting-url", url, "--timeout", "1"]) == 1
    assert "POST /event failed" in capsys.readouterr().err
