package demo_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/internal/demo"
)

// TestDemo runs the README's demo command end to end.
func TestDemo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	require.NoError(t, demo.Demo(ctx, &out, nil))
	s := out.String()
	for _, want := range []string{
		"== rotate acme/openai-key",
		"agents now read acme/openai-key at version 2",
		"== rotate globex/billing-db",
		"globex agents now fail closed: Get -> agent: tenant revoked",
		"revocation report after",
		"globex agents serve again: globex/openai-key at version 2",
	} {
		require.Contains(t, s, want)
	}
	require.Equal(t, 4, strings.Count(s, "all 4 "), "every event reached all four agents of its tenant:\n%s", s)
}
