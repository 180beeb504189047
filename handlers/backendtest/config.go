package backendtest

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/orchestrator"
)

// ParseRekey parses a rekey.yaml made of backend's section
// (backends.<backend>, left out when section is empty) and the tenants,
// both written without indentation, and fails t unless it is valid.
func ParseRekey(t *testing.T, backend, section, tenants string) *orchestrator.Config {
	t.Helper()
	src := "tenants:\n" + indent(tenants, "  ")
	if section != "" {
		src = "backends:\n  " + backend + ":\n" + indent(section, "    ") + src
	}
	rekey, err := orchestrator.Parse([]byte(src))
	require.NoError(t, err, "rekey config")
	return &rekey
}

// indent puts by in front of every line that is not blank.
func indent(s, by string) string {
	var b strings.Builder
	for line := range strings.Lines(s) {
		if strings.TrimSpace(line) != "" {
			b.WriteString(by)
		}
		b.WriteString(line)
	}
	return b.String()
}
