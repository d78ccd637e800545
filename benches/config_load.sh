#!/usr/bin/env bash
# Loading a configuration of COUNT plain [[database]] stanzas (default 5,000), each with a
# files rule and a backup: the wall time and peak RSS of `litekeeper status` (which loads
# and validates the whole file, then reads the state DB). No database file needs to exist.
# Usage: benches/config_load.sh [COUNT]   (LITEKEEPER_BIN=path skips the release build;
#   KEEP=1 keeps the generated configuration)
set -euo pipefail
count=${1:-5000}
cd "$(dirname "$0")/.."
. benches/bin.sh
T=$(mktemp -d /tmp/lk-load.XXXXXX)
[ -n "${KEEP:-}" ] && echo "kept $T" || trap 'rm -rf "$T"' EXIT
{
  printf '[daemon]\nstate_dir = "%s/state"\nlock_dir = "%s/locks"\n\n' "$T" "$T"
  for i in $(seq 1 "$count"); do
    cat <<STANZA
[[database]]
name = "app$i"
path = "/srv/app$i/app.db"
[database.prune]
schedule = "0 3 * * *"
[[database.prune.files]]
dir = "/srv/app$i/uploads"
pattern = '^(?P<id>[0-9a-f-]{36})_'
referenced_by = "SELECT id FROM file"
[database.backup]
schedule = "0 2 * * *"
dir = "/srv/backups/app$i"

STANZA
  done
} >"$T/lk.toml"
echo "databases: $count ($(wc -c <"$T/lk.toml") bytes of configuration)"
/usr/bin/time -f "status: %e s wall, %U s user CPU, %M KiB peak RSS" "$bin" -c "$T/lk.toml" status >/dev/null
