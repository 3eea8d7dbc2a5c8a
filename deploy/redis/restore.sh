#!/bin/sh
# Restore a backup of AMS's Redis (an RDB file: the dump.rdb that `ams-admin backup` has Redis write) into
# a Redis data directory, for the AOF persistence the stack runs with (--appendonly yes reads only the AOF,
# so a dump.rdb put there alone would be ignored). With that Redis stopped, as its user:
#   sh restore.sh BACKUP.rdb DATA_DIR
# A redis-server on a private socket loads the backup, writes the AOF from it (CONFIG SET appendonly yes)
# and stops; start Redis as usual and it comes back with exactly the backup's keys. What was in DATA_DIR
# is moved aside to DATA_DIR/before-restore-<time>/, never deleted. docs/operations.md, "State: backup,
# restore, upgrade" has the compose and Kubernetes commands; tests/integration/test_state_lifecycle.py runs it.
set -eu
[ $# -eq 2 ] || { echo "usage: restore.sh BACKUP.rdb DATA_DIR" >&2; exit 2; }
backup=$1 data=$2
[ -f "$backup" ] || { echo "restore.sh: no backup file $backup" >&2; exit 2; }
[ -d "$data" ] || { echo "restore.sh: no data directory $data" >&2; exit 2; }
aside="$data/before-restore-$(date +%Y%m%dT%H%M%S)"
for f in appendonlydir dump.rdb; do
  if [ -e "$data/$f" ]; then mkdir -p "$aside" && mv "$data/$f" "$aside/"; fi
done
[ -d "$aside" ] && echo "restore.sh: the state that was there is in $aside"
cp "$backup" "$data/dump.rdb"
sock="$data/restore.sock"
redis-server --port 0 --unixsocket "$sock" --unixsocketperm 700 --dir "$data" --dbfilename dump.rdb \
  --appendonly no --save "" --daemonize no --loglevel warning &
pid=$!
cli() { redis-cli -s "$sock" "$@"; }
until [ "$(cli ping 2>/dev/null)" = PONG ]; do       # LOADING until the whole backup is in memory
  kill -0 "$pid" 2>/dev/null || { echo "restore.sh: redis-server could not load $backup" >&2; exit 1; }
  sleep 0.2
done
keys=$(cli dbsize)
cli config set appendonly yes >/dev/null
until cli info persistence | tr -d '\r' | grep -q '^aof_enabled:1$' \
   && cli info persistence | tr -d '\r' | grep -q '^aof_rewrite_in_progress:0$' \
   && cli info persistence | tr -d '\r' | grep -q '^aof_rewrite_scheduled:0$'; do
  sleep 0.2
done
cli info persistence | tr -d '\r' | grep -q '^aof_last_bgrewrite_status:ok$' || { echo "restore.sh: writing the AOF failed" >&2; exit 1; }
cli shutdown >/dev/null 2>&1 || true
wait "$pid" || true
echo "restore.sh: $keys keys from $backup are in $data (AOF written); start Redis as usual"
