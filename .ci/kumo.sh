#!/usr/bin/env bash
# Builds the kumo AWS emulator (github.com/sivchari/kumo, v0.33.1) from the Go
# module proxy into the git-ignored .cache/bin/kumo, once per machine; a second
# run reuses the binary. The triggers/awsevents and internal/daemon AWS tests
# run it as a child process on 127.0.0.1 for SQS and EventBridge (they look in
# $REKEY_KUMO_BIN, then .cache/bin/kumo).
#
# `go install github.com/sivchari/kumo/cmd/kumo@v0.33.1` fails on checksum
# look-ups of two of its AWS modules, so this downloads the module and builds
# cmd/kumo inside a writable copy of it, whose own go.sum has the hashes.
# About 8 minutes with a cold build cache on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

kumo_version="v0.33.1"
cache="$root/.cache"
bin="$cache/bin/kumo"
stamp="$cache/bin/kumo.version"
src_dir="$cache/kumo-src-$kumo_version"

export PATH="/usr/local/go/bin:${PATH}"
export GOTOOLCHAIN=local
export GOFLAGS="-buildvcs=false -mod=mod"

if [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$kumo_version" ]; then
  echo "kumo: reusing $bin ($kumo_version)"
  exit 0
fi

if [ ! -f "$src_dir/go.mod" ]; then
  echo "== kumo: downloading github.com/sivchari/kumo@$kumo_version"
  # Outside any module, so the project's go.mod and go.sum stay untouched.
  tmp="$(mktemp -d)"
  src="$(cd "$tmp" && go mod download -json "github.com/sivchari/kumo@$kumo_version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  rmdir "$tmp"
  if [ -z "$src" ] || [ ! -d "$src" ]; then echo "kumo: could not download the module" >&2; exit 1; fi
  mkdir -p "$cache"
  rm -rf "$src_dir.tmp"
  cp -r "$src" "$src_dir.tmp"
  chmod -R u+w "$src_dir.tmp"
  mv "$src_dir.tmp" "$src_dir"
fi

echo "== kumo: building cmd/kumo (several minutes the first time)"
mkdir -p "$cache/bin"
(cd "$src_dir" && go build -trimpath -o "$bin.tmp" ./cmd/kumo)
mv "$bin.tmp" "$bin"
echo "$kumo_version" > "$stamp"
echo "kumo: built $bin"
