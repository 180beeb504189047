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
  "FuzzDecode ./schemas"
  "FuzzDecodeAsMatchesDecode ./schemas"
  "FuzzParseRef ./schemas"
  "FuzzValidateIDMatchesPattern ./schemas"
  "FuzzGeneratorValidate ./handlers"
  "FuzzVersionID ./handlers/vault"
  "FuzzLocate ./handlers/vault"
  "FuzzLookup ./handlers/awssm"
  "FuzzVersionID ./handlers/awssm"
  "FuzzParseInvalidation ./fanout/agent"
  "FuzzParseCredentials ./fanout/agent/vaultfetch"
  "FuzzParseAlertmanager ./triggers/siem"
  "FuzzParseGrafana ./triggers/siem"
  "FuzzParseSplunk ./triggers/siem"
  "FuzzParseDatadog ./triggers/siem"
  "FuzzParsePagerDuty ./triggers/siem"
  "FuzzParseGeneric ./triggers/siem"
  "FuzzParseReport ./triggers/usage"
  "FuzzAuthenticate ./triggers/selfservice"
  "FuzzParseMessage ./triggers/awsevents"
)
for target in "${targets[@]}"; do
  set -- $target
  echo "-- $1 $2"
  go test -run='^$' -fuzz="^$1\$" -fuzztime="$fuzztime" -fuzzminimizetime=5s "$2"
done
