package vault_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/handlers/vault"
)

// TestKVLocations: the locations the Vault events trigger maps paths
// back with are the backend's own (templates, options.path), kind kv only.
func TestKVLocations(t *testing.T) {
	cfg, err := parse(t, "kv_mount: kv\n", twoTenants)
	require.NoError(t, err)
	locs, err := cfg.KVLocations()
	require.NoError(t, err)
	require.ElementsMatch(t, []vault.KVLocation{
		{Tenant: "acme", Secret: "openai-key", Mount: "kv", Path: "tenants/acme/openai-key"},
		{Tenant: "globex", Secret: "openai-key", Mount: "kv", Path: "tenants/globex/llm/openai"},
	}, locs, "billing-db is a static role: only rekey writes its record")
}
