"""The version of the state AMS keeps in Redis (`keys.SCHEMA`), checked before it is used.

A release reads and writes one layout, `SCHEMA_VERSION`. The trainer checks the stored version at start
and with every health probe (so a Redis restored from a backup is checked too):

- none stored: a store from before versioning (v0) or an empty one; migrated;
- older: each step of `MIGRATIONS` runs in order, then the new version is stored. Steps are idempotent
  and run under a short Redis lock, so replicas starting together migrate once;
- newer: written by a later release. This one refuses it (`SchemaTooNew`): the trainer does not start,
  or stays NOT_SERVING, and writes nothing; the teacher does not start. Roll back Redis or upgrade.

The teacher and `ams-admin` only read the version (`check`), never migrate.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import redis

from ams import keys

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
LOCK_TTL_S = 30


class SchemaTooNew(RuntimeError):
    """Redis holds state of a later release than this one reads."""


def _v0_to_v1(client: redis.Redis) -> None:
    """v0 (before versioning) had the same session, lease and revocation layout; only the name-keyed
    revocation hash of earlier releases (`ams:revoked`) is not read any more. Its names cannot be mapped
    to certificate serials here (the CA's index is the operator's), so they are reported, not dropped."""
    names = sorted(n.decode() if isinstance(n, bytes) else str(n) for n in client.hkeys(keys.REVOKED_BY_NAME))
    if names:
        log.warning("Redis holds %d revocations by name from before schema v1, which are not enforced: run "
                    "`ams-admin revoke NAME --dir <pki>` for each of %s", len(names), ", ".join(names[:20]))


MIGRATIONS: dict[int, Callable[[redis.Redis], None]] = {0: _v0_to_v1}   # from version -> step to version + 1


def stored_version(client: redis.Redis) -> int | None:
    value = client.get(keys.SCHEMA)
    return None if value is None else int(value)


def check(client: redis.Redis, readable_up_to: int = SCHEMA_VERSION) -> int:
    """The stored version (0 when none); SchemaTooNew if it is above `readable_up_to`."""
    version = stored_version(client) or 0
    if version > readable_up_to:
        raise SchemaTooNew(f"Redis holds AMS state of schema v{version}; this release reads up to "
                           f"v{readable_up_to}. Upgrade this service, or restore the backup taken before the upgrade "
                           "(docs/operations.md, \"State: backup, restore, upgrade\")")
    return version


def ensure(client: redis.Redis, target: int = SCHEMA_VERSION,
           migrations: dict[int, Callable[[redis.Redis], None]] = MIGRATIONS) -> int:
    """Check, then migrate an older store step by step up to `target`; the version now stored."""
    version = check(client, target)
    if version == target and stored_version(client) is not None:
        return version
    with client.lock(keys.SCHEMA + ":lock", timeout=LOCK_TTL_S, blocking_timeout=LOCK_TTL_S):
        version = check(client, target)               # another replica may have migrated meanwhile
        while version < target:
            started = time.monotonic()
            migrations[version](client)
            version += 1
            client.set(keys.SCHEMA, version)
            log.info("Redis state migrated to schema v%d in %.2f s", version, time.monotonic() - started)
        if stored_version(client) is None:
            client.set(keys.SCHEMA, version)
    return version
