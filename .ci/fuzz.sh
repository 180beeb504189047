#!/usr/bin/env bash
# Fuzzes every parser of outside input for a fixed time each, over the
# corpora committed in testdata/fuzz. Used by .ci/run (8s each) and by
# `task fuzz` (FUZZTIME, 30s by default).
#
# Usage: bash .ci/fuzz.sh [fuzztime]
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime="${1:-8s}"
targets=(
  "FuzzDecode ./internal/moduletest/schemas"
  "FuzzDecodeAsMatchesDecode ./internal/moduletest/schemas"
  "FuzzParseRef ./internal/moduletest/schemas"
  "FuzzValidateIDMatchesPattern ./internal/moduletest/schemas"
  "FuzzGeneratorValidate ./handlers"
  "FuzzVersionID ./handlers/vault"
  "FuzzLocate ./handlers/vault"
  "FuzzLookup ./handlers/awssm"
  "FuzzVersionID ./handlers/awssm"
  "FuzzParseAck ./fanout"
  "FuzzParsePresence ./fanout"
  "FuzzParseInvalidation ./fanout/agent"
  "FuzzNames ./fanout/sidecar"
  "FuzzScan ./fanout/agent"
  "FuzzParseCredentials ./internal/moduletest/vaultfetch"
  "FuzzParseAlertmanager ./triggers/siem"
  "FuzzParseGrafana ./triggers/siem"
  "FuzzParseSplunk ./triggers/siem"
  "FuzzParseDatadog ./triggers/siem"
  "FuzzParsePagerDuty ./triggers/siem"
  "FuzzParseGeneric ./triggers/siem"
  "FuzzParsePresets ./triggers/siem"
  "FuzzPlaceholder ./triggers/siem"
  "FuzzParseReport ./triggers/usage"
  "FuzzParseReport ./triggers/leak"
  "FuzzAuthenticate ./triggers/api/tenantauth"
  "FuzzParseMessage ./triggers/awsevents"
  "FuzzIdentityFromClaims ./orchestrator/agentauth"
  "FuzzParseJWKS ./orchestrator/agentauth"
)
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# fuzz NAME PKG runs go test in the module that holds PKG: fanout/agent,
# its fetchers and schemas are modules of their own (see go.mod).
fuzz() {
  local dir="${2#./}" mod pkg
  mod="$dir"
  while [ "$mod" != "." ] && [ ! -f "$mod/go.mod" ]; do mod="$(dirname "$mod")"; done
  if [ "$mod" = "." ]; then pkg="./$dir"; elif [ "$mod" = "$dir" ]; then pkg="."; else pkg="./${dir#"$mod"/}"; fi
  (cd "$mod" && go test -run='^$' -fuzz="^$1\$" -fuzztime="$fuzztime" -fuzzminimizetime=5s "$pkg") 2>&1 | tee "$log"
  return "${PIPESTATUS[0]}"
}
for target in "${targets[@]}"; do
  set -- $target
  echo "-- $1 $2"
  if ! fuzz "$1" "$2"; then
    # The fuzzing engine sometimes ends a run with its own "context
    # deadline exceeded" when the time is up while it is still minimizing
    # a new interesting (not failing) input. That is not a finding: no
    # failing input is written. Run the target once more; a real failure
    # always writes one and fails here.
    if grep -q "context deadline exceeded" "$log" && ! grep -q "Failing input written to" "$log"; then
      echo "-- $1: the engine's deadline error, no failing input; running it once more"
      fuzz "$1" "$2"
    else
      exit 1
    fi
  fi
done
