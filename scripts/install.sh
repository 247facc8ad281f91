#!/usr/bin/env bash
# `make install`: puts `rbee` and its daemons on your PATH as links to this checkout's release build, in
# $RBEE_BIN_DIR, else $CARGO_HOME/bin (~/.cargo/bin: on PATH wherever rustup installed Rust). Links, not
# copies: `rbee up` finds the project (nats-server, models) from the real path, and a rebuild is live.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin_dir="${RBEE_BIN_DIR:-${CARGO_HOME:-$HOME/.cargo}/bin}"
mkdir -p "$bin_dir"
for name in rbee rbee-queen rbee-hive rbee-worker rbee-rpc-server; do
  src="$root/target/release/$name"
  if [ ! -x "$src" ]; then
    echo "install: $src is missing: run \`make build\` first" >&2
    exit 1
  fi
  ln -sfn "$src" "$bin_dir/$name"
done
echo "install: linked rbee, rbee-queen, rbee-hive, rbee-worker, rbee-rpc-server into $bin_dir"
case ":$PATH:" in
  *":$bin_dir:"*) ;;
  *) echo "install: $bin_dir is not on your PATH; add it (export PATH=\"$bin_dir:\$PATH\")" ;;
esac
