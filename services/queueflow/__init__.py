"""QueueFlow: website analytics events from HTTP to a Redis Stream to PostgreSQL aggregates."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("queueflow")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
