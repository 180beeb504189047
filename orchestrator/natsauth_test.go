package orchestrator_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/orchestrator"
)

// TestNATSConfigBlockLoads: the block printed by `rekeyctl nats-config`
// is accepted by nats-server's own config parser and yields the same
// permissions as the embedded server's users.
func TestNATSConfigBlockLoads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nats.conf")
	require.NoError(t, os.WriteFile(path, []byte("jetstream: {}\n"+orchestrator.NATSConfigBlock([]string{"acme", "globex-eu"})), 0o600))
	t.Setenv("REKEYD_NATS_PASSWORD", "p-rekeyd")
	t.Setenv("REKEY_AGENT_ACME_NATS_PASSWORD", "p-acme")
	t.Setenv("REKEY_AGENT_GLOBEX_EU_NATS_PASSWORD", "p-globex")
	for _, r := range orchestrator.Roles {
		t.Setenv(orchestrator.RolePasswordEnv(r), "p-"+string(r))
	}
	opts, err := server.ProcessConfigFile(path)
	require.NoError(t, err)
	users := map[string]*server.User{}
	for _, u := range opts.Users {
		users[u.Username] = u
	}
	require.Len(t, users, 3+len(orchestrator.Roles))
	for _, r := range orchestrator.Roles {
		u := users[orchestrator.RoleUser(r)]
		require.NotNil(t, u, r)
		require.Equal(t, "p-"+string(r), u.Password)
		want := orchestrator.RolePermissions(r, []string{"acme", "globex-eu"})
		require.Equal(t, want.Publish.Allow, u.Permissions.Publish.Allow, r)
		require.Equal(t, want.Subscribe.Allow, u.Permissions.Subscribe.Allow, r)
	}
	require.Equal(t, "p-acme", users["agent-acme"].Password)
	require.Equal(t, "p-globex", users["agent-globex-eu"].Password)
	require.Nil(t, users["rekeyd"].Permissions)
	require.Equal(t, orchestrator.AgentPermissions("acme").Publish.Allow, users["agent-acme"].Permissions.Publish.Allow)
	require.Equal(t, orchestrator.AgentPermissions("globex-eu").Subscribe.Allow, users["agent-globex-eu"].Permissions.Subscribe.Allow)
}

func TestNATSAuthPasswords(t *testing.T) {
	dir := t.TempDir()
	a, err := orchestrator.LoadNATSAuth(dir)
	require.NoError(t, err)
	b, err := orchestrator.ReadNATSAuth(dir)
	require.NoError(t, err)
	require.Equal(t, a.Password("agent-acme"), b.Password("agent-acme"), "passwords survive a restart")
	require.NotEqual(t, a.Password("agent-acme"), a.Password("agent-globex"))
	fi, err := os.Stat(filepath.Join(dir, orchestrator.NATSSecretFile))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	_, err = orchestrator.ReadNATSAuth(t.TempDir())
	require.Error(t, err, "ReadNATSAuth never creates the secret")
}

func TestRedactURL(t *testing.T) {
	require.Equal(t, "nats://rekeyd:xxxxx@nats.nats.svc:4222", orchestrator.RedactURL("nats://rekeyd:s3cr3t-pw@nats.nats.svc:4222"))
	require.Equal(t, "nats://127.0.0.1:4222", orchestrator.RedactURL("nats://127.0.0.1:4222"))
	require.NotContains(t, orchestrator.RedactURL("nats://u:p%zz@h"), "p%zz")
}
