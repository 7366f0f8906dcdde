"""What a step returns, and the process readings its figures are made of (CPU, RSS)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Self

import psutil


@dataclass(frozen=True)
class Result:
    """A step's figures. Fields are named as the results JSON's keys (under NEST when set),
    so that a step whose dependency was not run can take the dependency's figures from an
    earlier results file (from_json) and the JSON keeps its shape."""

    NEST: ClassVar[str | None] = None  # the key the figures sit under, if not at the top
    OPTIONAL: ClassVar[frozenset[str]] = frozenset()  # fields left out of the JSON when None
    rss_mb: dict[str, float] = field(default_factory=dict, kw_only=True)  # into "rss_mb"

    def to_json(self) -> dict[str, Any]:
        figures = {
            name: getattr(self, name)
            for name in self._names()
            if not (name in self.OPTIONAL and getattr(self, name) is None)
        }
        return {self.NEST: figures} if self.NEST else figures

    @classmethod
    def from_json(cls, results: dict[str, Any]) -> Self:
        """The figures from a whole results JSON; KeyError names the first one it lacks."""
        data = results[cls.NEST] if cls.NEST else results
        return cls(
            **{
                name: data.get(name) if name in cls.OPTIONAL else data[name]
                for name in cls._names()
            }
        )

    @classmethod
    def _names(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name != "rss_mb"]


class CpuClock:
    """CPU seconds each named side spends from now until per_event() is asked."""

    def __init__(self, sides: dict[str, Callable[[], float]]) -> None:
        self.sides = sides
        self.before = {name: cpu() for name, cpu in sides.items()}

    def per_event(self, events: float) -> dict[str, float]:
        """Microseconds of CPU per event, by side."""
        return {
            name: round(1e6 * (cpu() - self.before[name]) / events, 1)
            for name, cpu in self.sides.items()
        }


def cpu_seconds(proc: psutil.Process) -> float:
    try:
        times = proc.cpu_times()
    except psutil.NoSuchProcess:  # a PostgreSQL child that exited while being counted
        return 0.0
    return times.user + times.system


def rss_mb(proc: psutil.Process) -> float:
    try:
        return round(proc.memory_info().rss / 2**20, 1)
    except psutil.NoSuchProcess:  # a PostgreSQL child that exited while being counted
        return 0.0
