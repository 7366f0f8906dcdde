"""Named failures that callers handle differently."""


class ConfigError(Exception):
    """A setting is missing or malformed: the process stops with exit code 2."""


class StreamUnavailable(Exception):
    """Redis could not take the write in time: ingest answers 503 with Retry-After."""


class MigrationError(Exception):
    """The migration files and the database's record of them disagree."""
