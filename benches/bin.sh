# Sourced by the benchmark scripts: sets `bin`, the litekeeper they measure.
# LITEKEEPER_BIN=path measures that binary (LK_BIN, the older name upload.sh and zstd.sh used,
# is still read); otherwise this tree's release build, built first.
bin=${LITEKEEPER_BIN:-${LK_BIN:-}}
if [ -z "$bin" ]; then
  bin_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  (cd "$bin_root" && cargo build --release --quiet)
  bin=$bin_root/target/release/litekeeper
fi
[ -x "$bin" ] || { echo "$0: litekeeper binary $bin is not an executable file" >&2; exit 1; }
