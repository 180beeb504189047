#!/usr/bin/env bash
# Builds HashiCorp Vault v1.14.0 (the last MPL-2.0 line) from the Go module
# proxy into the git-ignored .cache/bin/vault, once per machine; a second run
# reuses the binary when `vault version` says v1.14.0. The handlers/vault
# tests run it as `vault server -dev` on 127.0.0.1 (they look in
# $REKEY_VAULT_BIN, then .cache/bin/vault).
#
# Why it is built this way (see issue #3):
#   - newer Vault releases do not compile from the proxy (their nested sdk
#     module's tags do not match the release code);
#   - v1.14.0 needs github.com/hashicorp/vault/sdk v0.9.2, used here through a
#     local copy in .cache/ (build/vault/go.mod has the replace), with the one
#     start-up sanity check "defines a CreateOperation but no ExistenceCheck"
#     in framework/backend.go disabled (it panics on 1.14's sys/managed-keys);
#   - godebug x509negativeserial=1 in build/vault/go.mod (else a panic at start
#     in gosnowflake's CA parsing under Go >= 1.23);
#   - GONOSUMDB=github.com/hashicorp: some HashiCorp plugin modules are not in
#     the checksum database. build/vault/go.sum pins what was downloaded.
#
# Usage: bash .ci/vault.sh            build or reuse .cache/bin/vault
#        bash .ci/vault.sh --repin    rebuild with -mod=mod and rewrite build/vault/go.{mod,sum}
# Takes about 6 minutes with a cold build cache on 2 cores, a binary of ~180 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

vault_version="1.14.0"
sdk_version="v0.9.2"
cache="$root/.cache"
bin="$cache/bin/vault"
sdk_dir="$cache/vault-sdk-$sdk_version"
marker="rekey: ExistenceCheck sanity check disabled by .ci/vault.sh"

export PATH="/usr/local/go/bin:${PATH}"
export GOTOOLCHAIN=local
export GONOSUMDB=github.com/hashicorp
export GOFLAGS="-buildvcs=false"

repin=0
if [ "${1:-}" = "--repin" ]; then repin=1; fi

if [ "$repin" = 0 ] && [ -x "$bin" ] && "$bin" version 2>/dev/null | grep -q "^Vault v${vault_version} "; then
  echo "vault: reusing $bin ($("$bin" version))"
  exit 0
fi

# 1. The patched copy of the sdk module.
if ! grep -qF "$marker" "$sdk_dir/framework/backend.go" 2>/dev/null; then
  echo "== vault: local copy of github.com/hashicorp/vault/sdk@$sdk_version"
  src="$(go mod download -json "github.com/hashicorp/vault/sdk@$sdk_version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  if [ -z "$src" ] || [ ! -d "$src" ]; then echo "vault: could not download the sdk module" >&2; exit 1; fi
  rm -rf "$sdk_dir.tmp"
  mkdir -p "$cache"
  cp -r "$src" "$sdk_dir.tmp"
  chmod -R u+w "$sdk_dir.tmp"
  f="$sdk_dir.tmp/framework/backend.go"
  n="$(grep -c '^		if p.ExistenceCheck == nil {$' "$f" || true)"
  if [ "$n" != 1 ]; then echo "vault: expected the ExistenceCheck check once in $f, found $n" >&2; exit 1; fi
  sed -i "s|^		if p.ExistenceCheck == nil {\$|		if false \&\& p.ExistenceCheck == nil { // $marker|" "$f"
  grep -qF "$marker" "$f"
  rm -rf "$sdk_dir"
  mv "$sdk_dir.tmp" "$sdk_dir"
fi

# 2. Build. With a pinned go.sum the build is -mod=readonly, so it uses
# exactly the pinned versions; --repin (or a missing go.sum) resolves them
# again with -mod=mod and rewrites build/vault/go.mod and go.sum.
cd "$root/build/vault"
mode="-mod=readonly"
if [ "$repin" = 1 ] || [ ! -s go.sum ]; then
  mode="-mod=mod"
  go mod edit \
    -require="github.com/hashicorp/vault@v${vault_version}" \
    -require="github.com/hashicorp/vault/sdk@${sdk_version}" \
    -replace="github.com/hashicorp/vault/sdk=../../.cache/vault-sdk-${sdk_version}" \
    -godebug=x509negativeserial=1
fi
echo "== vault: building v$vault_version into $bin ($mode; several minutes with a cold build cache)"
mkdir -p "$(dirname "$bin")"
start=$(date +%s)
go build $mode -trimpath -o "$bin.tmp" .
mv "$bin.tmp" "$bin"
echo "vault: built $("$bin" version) in $(( $(date +%s) - start ))s"
