package vaultevents_test

import (
	"strconv"
	"testing"

	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/triggers/vaultevents"
)

func itoa(n int) string { return strconv.Itoa(n) }

func runTrigger(t *testing.T, tr *vaultevents.Trigger) func() { return testutil.Run(t, tr) }
