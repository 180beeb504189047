#!/usr/bin/env bash
# Checks that embedding the agent costs nothing of rekey's server side.
#
# .ci/agent-sample is a program in a module of its own that imports
# fanout/agent, as an outside program would (its go.mod replaces the rekey
# modules with the local directories). It must build, and its module graph
# (`go list -m all`) must hold nats.go and what the agent needs, nothing of
# the server side: no nats-server, no AWS SDK, no Vault, no k8s.io, no
# Prometheus, no test library, no rekey root module. The fetchers are
# optional modules: each may bring its own SDK (awsfetch the AWS SDK,
# vaultfetch hashicorp/vault/api and what vault/api's own go.mod requires,
# testify included) and nothing else of that list.
#
# Runs with GOFLAGS=-mod=readonly (set by .ci/run): a go.mod or go.sum that
# is not tidy fails here.
set -euo pipefail
cd "$(dirname "$0")/.."

# Extended regular expressions over module paths.
server='^github\.com/rekey-dev/rekey$|^github\.com/nats-io/nats-server|^github\.com/nats-io/jwt|^k8s\.io/|^sigs\.k8s\.io/|^github\.com/prometheus/|^github\.com/sivchari/kumo|^github\.com/jackc/|^github\.com/spf13/cobra|^github\.com/goccy/go-yaml|^github\.com/santhosh-tekuri/|^github\.com/robfig/cron|^github\.com/schollz/|^github\.com/hashicorp/vault$'
aws='^github\.com/aws/'
vault='^github\.com/hashicorp/'
testlibs='^github\.com/stretchr/testify'

failed=0
# check DIR FORBIDDEN: lists DIR's module graph and fails on a module whose
# path matches FORBIDDEN.
check() {
  local dir="$1" forbidden="$2" mods bad
  mods="$(cd "$dir" && go list -m -f '{{.Path}}' all)"
  bad="$(grep -E "$forbidden" <<<"$mods" || true)"
  echo "-- $dir: $(wc -l <<<"$mods") modules in the graph"
  if [ -n "$bad" ]; then
    echo "$dir requires modules of the server side:"; echo "$bad" | sed 's/^/   /'
    failed=1
  fi
}

# A go.mod that still lists what the code no longer needs (say, after a
# dependency was moved out of schemas) would not fail a build; this does.
for dir in .ci/agent-sample schemas fanout/agent fanout/agent/awsfetch fanout/agent/vaultfetch; do
  if ! (cd "$dir" && go mod tidy -diff); then
    echo "$dir: go.mod or go.sum is not tidy; run go mod tidy there"; failed=1
  fi
done

echo "-- .ci/agent-sample: build and vet"
(cd .ci/agent-sample && go build -o /dev/null . && go vet .)
(cd .ci/agent-sample && go list -m all | sed 's/^/   /')
check .ci/agent-sample "$server|$aws|$vault|$testlibs"
check schemas "$server|$aws|$vault|$testlibs"
check fanout/agent "$server|$aws|$vault|$testlibs"
check fanout/agent/awsfetch "$server|$vault|$testlibs"
check fanout/agent/vaultfetch "$server|$aws"
exit "$failed"
