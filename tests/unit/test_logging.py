"""What configure_logging writes: no control character from a logged value reaches the
terminal, in either format, and exceptions keep their frames but not their local variables,
for QueueFlow's own lines and for stdlib records (uvicorn's) alike."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import pytest
import structlog

from queueflow.core.observability import configure_logging

HOSTILE = "/\x1b[31mred\x1b]0;title\x07\nforged line\r\x7f\u009b2J"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    yield
    root.handlers[:], root.level = handlers, level
    structlog.configure(**config)


def raised() -> ValueError:
    secret = "hunter2"  # a local variable: it must not be logged
    try:
        raise ValueError(f"bad {secret[:0]}path \x1b[31m")
    except ValueError as exc:
        return exc


def write_lines(fmt: str) -> None:
    configure_logging("info", fmt)
    structlog.get_logger("queueflow.test").info(
        "request", path=HOSTILE, bare="/\x1b[31mred", status=200
    )
    logging.getLogger("uvicorn.error").warning("Invalid path %s", HOSTILE)
    structlog.get_logger("queueflow.test").error("request failed", exc_info=raised())
    logging.getLogger("uvicorn.error").error("Exception in ASGI application\n", exc_info=raised())


def test_console_escapes_control_characters_in_every_value(capsys) -> None:
    write_lines("console")
    out = capsys.readouterr().out
    # Only the renderer's own colour codes remain: each is ESC [ digits m.
    assert not re.search(r"\x1b(?!\[[0-9;]*m)", out)
    assert not re.search("[\x00-\x09\x0b-\x1a\x1c-\x1f\x7f-\x9f]", out)
    assert "\x1b[31mred" not in out
    escaped = r"/\x1b[31mred\x1b]0;title\x07\nforged line\r\x7f\x9b2J"
    assert out.count(escaped) == 2  # the structlog line and the stdlib one
    assert not any(line.startswith("forged line") for line in out.splitlines())
    # Tracebacks keep their line breaks, frames and message (escaped), not their locals.
    assert out.count("Traceback (most recent call last):") == 2
    assert out.count("in raised") == 2
    assert out.count(r"ValueError: bad path \x1b[31m") == 2
    assert "hunter2" not in out


def test_json_lines_escape_control_characters_and_keep_the_values(capfd) -> None:
    write_lines("json")
    raw = capfd.readouterr().out.encode()
    assert not re.search(rb"[\x00-\x09\x0b-\x1f\x7f]|\xc2[\x80-\x9f]", raw)
    lines = [json.loads(line) for line in raw.splitlines()]
    assert lines[0]["path"] == HOSTILE  # escaped in the line, intact once parsed
    assert lines[1]["event"] == f"Invalid path {HOSTILE}"
    for line in lines[2:]:
        [exception] = line["exception"]
        assert exception["exc_type"] == "ValueError"
        assert exception["exc_value"] == "bad path \x1b[31m"
        assert [frame["name"] for frame in exception["frames"]] == ["raised"]
        assert "locals" not in exception["frames"][0]
        assert "exc_info" not in line
    assert lines[3]["logger"] == "uvicorn.error"
    assert b"hunter2" not in raw
