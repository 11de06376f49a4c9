"""The example database a fleet shares (docs/fleet.md): ``--database redis://HOST:PORT[/DB]``
is hypothesis's `RedisExampleDatabase`, so a failing example one worker finds is replayed
first by every other; a directory path is hypothesis's `DirectoryBasedExampleDatabase`."""

from __future__ import annotations

from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase

KEY_PREFIX = b"mynacard-conformance:"


class DatabaseError(ValueError):
    """The database cannot be used; one line says why."""


def example_database(where: str | None) -> ExampleDatabase | None:
    """The database `where` names (None: none); a Redis server must answer a PING."""
    if where is None:
        return None
    if not where.startswith(("redis://", "rediss://", "unix://")):
        return DirectoryBasedExampleDatabase(where)
    try:
        import redis
        from hypothesis.extra.redis import RedisExampleDatabase
    except ImportError as error:
        raise DatabaseError(
            f"--database {where}: Redis needs the redis package: install mynacard[fleet] ({error})"
        ) from None
    try:
        client = redis.Redis.from_url(where)
        client.ping()
    except (redis.RedisError, ValueError) as error:
        raise DatabaseError(f"--database {where}: {error}") from None
    return RedisExampleDatabase(client, key_prefix=KEY_PREFIX)
