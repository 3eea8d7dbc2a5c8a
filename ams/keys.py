"""Every Redis key AMS writes or reads, in one place (docs/architecture.md, "Redis data model").

Per session `s` (all expiring together when the session is abandoned), under `ams:s:{s}:`:
  meta      hash    device, student, rates, clip counters (written by ingest) and the training fields
                    version, phase, trained_clip_seq, checkpoint_version (written only by a phase commit)
  frames    zset    frame key scored by capture timestamp (video seconds): the buffer B
  blobs     hash    f:{key} -> PNG frame, l:{key} -> PNG teacher label (at the student's input size)
  model     string  the student's state_dict at `checkpoint_version` (torch.save)
  adam      string  Adam coordinate-descent state (m, v, step) at `checkpoint_version`
  updates   list    the last N ModelUpdate messages (catch-up; the chain from the checkpoint on restore)
Per session, the replicas' ownership (services/trainer/leases.py):
  ams:lease:{s}         hash    {owner, token}, expiring unless renewed
  ams:lease:{s}:fence   string  the fencing counter (never goes back)
  ams:lease:{s}:want    string  another replica asks for the session (expires with one lease period)
Fleet-wide:
  ams:schema            string  the layout version of everything here (ams/schema.py: checked at start,
                                older ones migrated, newer ones refused); ams:schema:lock while migrating
  ams:revoked:certs     hash    revoked certificate serial (lowercase hex) -> JSON {name, role, revoked_at}
                                (ams/revocation.py; the name-keyed hash `ams:revoked` of earlier versions is not read)
"""
from __future__ import annotations

SESSION_PARTS = ("meta", "frames", "blobs", "model", "adam", "updates")
LEASE_PREFIX = "ams:lease:"
REVOKED_CERTS = "ams:revoked:certs"
REVOKED_BY_NAME = "ams:revoked"          # before schema v1: name -> reason; reported by the migration, not read
SCHEMA = "ams:schema"


def session_key(sid: str, part: str) -> str:
    """The key of one part (SESSION_PARTS) of a session's state."""
    return f"ams:s:{sid}:{part}"


def session_keys(sid: str) -> list[str]:
    return [session_key(sid, part) for part in SESSION_PARTS]


def lease_key(sid: str) -> str:
    return f"{LEASE_PREFIX}{sid}"


def fence_key(sid: str) -> str:
    return f"{LEASE_PREFIX}{sid}:fence"


def want_key(sid: str) -> str:
    return f"{LEASE_PREFIX}{sid}:want"


def lease_sid(key: str) -> str | None:
    """The session of a lease hash's key (None for a fence or want key, or any other key)."""
    if not key.startswith(LEASE_PREFIX) or ":" in key[len(LEASE_PREFIX):]:
        return None
    return key[len(LEASE_PREFIX):]
