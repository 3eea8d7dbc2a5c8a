#!/bin/sh
# Redis for AMS: compose mounts this file, Kubernetes carries the same text in the redis-start ConfigMap
# (deploy/k8s/redis.yaml; tests/unit/test_k8s.py checks they agree). Run as the image's redis user
# (uid 999), never root. It writes the ACL file from the passwords in the environment (their SHA-256
# only, mode 0600, on a tmpfs: no password on disk, in the repository or on a command line) and starts
# redis-server with it and the arguments given (persistence), bounded by REDIS_MAXMEMORY with
# noeviction: when Redis is full, writes fail loudly instead of evicting sessions.
#   trainer  sessions (ams:s:*), leases (ams:lease:*) and the schema version (ams:schema*) read-write,
#            revocations (ams:revoked*) read-only;
#            the commands services/trainer/store/redis_store.py and leases.py send (and their Lua scripts run), no
#            FLUSHALL/FLUSHDB/KEYS/SCAN/CONFIG/DEBUG/SHUTDOWN/ACL/... (a new key prefix or command the
#            trainer uses goes here too: tests/unit/test_deploy_config.py runs the store against these rules)
#   teacher  revocation and schema version reads only (ams:revoked*, ams:schema: read-only key permission)
#   admin    ams-admin revoke / unrevoke / revoked (ams:revoked*); ams-admin sessions and schema read
#            sessions' meta, leases and the schema version (SCAN, read-only key permission); ams-admin
#            backup has Redis write its snapshot (BGSAVE, LASTSAVE, INFO, DBSIZE)
#   default  off: a connection that does not authenticate as one of them can do nothing
set -eu
: "${REDIS_TRAINER_PASSWORD:?}" "${REDIS_TEACHER_PASSWORD:?}" "${REDIS_ADMIN_PASSWORD:?}"
acl="${REDIS_ACL_FILE:-/tmp/users.acl}"
sha() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
umask 077
cat > "$acl" <<ACL
user default off resetpass resetkeys resetchannels -@all
user trainer on #$(sha "$REDIS_TRAINER_PASSWORD") resetchannels ~ams:s:* ~ams:lease:* ~ams:schema* %R~ams:revoked* -@all +ping +select +get +set +mget +del +exists +expire +pexpire +ttl +pttl +incr +hget +hset +hmget +hgetall +hdel +hlen +hexists +hkeys +zadd +zrem +zrange +zrangebyscore +zcard +zcount +rpush +lrange +ltrim +llen +multi +exec +discard +watch +unwatch +eval +evalsha +script|load +script|exists
user teacher on #$(sha "$REDIS_TEACHER_PASSWORD") resetchannels %R~ams:revoked* %R~ams:schema -@all +ping +select +get +hget +hmget +hexists
user admin on #$(sha "$REDIS_ADMIN_PASSWORD") resetchannels ~ams:revoked* %R~ams:schema %R~ams:s:*:meta %R~ams:lease:* -@all +ping +select +get +scan +hget +hmget +hgetall +hexists +hlen +hset +hdel +bgsave +lastsave +dbsize +info
ACL
exec redis-server --aclfile "$acl" --maxmemory "${REDIS_MAXMEMORY:-2gb}" --maxmemory-policy noeviction "$@"
