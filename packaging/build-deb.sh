#!/bin/sh
# Build the Debian package (the one command): packaging/build-deb.sh
#
# 1. cargo build --release
# 2. the generated assets, made by the binary itself: the man page (litekeeper.1.gz) and the
#    bash, zsh and fish completions, into <target dir>/release/assets/ (cargo-deb rewrites the
#    target/release/ prefix of asset paths to the real target directory, CARGO_TARGET_DIR
#    included)
# 3. cargo deb --no-build (the metadata is [package.metadata.deb] in Cargo.toml)
# and prints the path of the .deb as the last line of stdout.
# Needs cargo-deb: cargo install --locked cargo-deb
set -eu

cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null 2>&1 || {
	echo "build-deb.sh: cargo-deb not found; install it with: cargo install --locked cargo-deb" >&2
	exit 1
}

cargo build --release --locked
target=$(cargo metadata --no-deps --format-version 1 |
	sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$target" ] || target=${CARGO_TARGET_DIR:-target}
bin="$target/release/litekeeper"

assets="$target/release/assets"
rm -rf "$assets"
mkdir -p "$assets"
"$bin" manpage | gzip -9n >"$assets/litekeeper.1.gz"
"$bin" completions bash >"$assets/litekeeper.bash"
"$bin" completions zsh >"$assets/_litekeeper"
"$bin" completions fish >"$assets/litekeeper.fish"

out=$(cargo deb --no-build --locked 2>&1) || {
	printf '%s\n' "$out" >&2
	exit 1
}
printf '%s\n' "$out" | grep -v '\.deb$' >&2 || true
deb=$(printf '%s\n' "$out" | grep '\.deb$' | tail -n 1)
[ -f "$deb" ] || {
	echo "build-deb.sh: cargo deb printed no .deb path" >&2
	exit 1
}
echo "$deb"
