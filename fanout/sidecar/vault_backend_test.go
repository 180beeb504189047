package sidecar_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/fanout/agent/vaultfetch"
	"github.com/rekey-dev/rekey/fanout/sidecar"
	"github.com/rekey-dev/rekey/handlers/vault/vaulttest"
)

// servers are a Vault dev server and PostgreSQL, started by the first test
// that needs them (they fail, never skip, when missing) and stopped by
// TestMain.
var servers vaulttest.Servers

func TestMain(m *testing.M) {
	code := m.Run()
	servers.Stop()
	os.Exit(code)
}

// TestVaultFetcherThroughVaultAPI: the sidecar's agent reads straight from
// Vault (vaultfetch: KV and a database static role, with the sidecar's own
// token), and hvac reads the KV secret and the static credentials through
// the sidecar's Vault API; the credentials log in to PostgreSQL. Another
// tenant's role is not found.
func TestVaultFetcherThroughVaultAPI(t *testing.T) {
	v, pg := servers.Database(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pg.URL("postgres"))
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `CREATE ROLE "acme_app_db" LOGIN PASSWORD 'not-the-password-yet'`)
	require.NoError(t, err)
	_ = conn.Close(ctx)
	_, err = v.Client.Logical().WriteWithContext(ctx, "database/static-roles/acme-app-db", map[string]any{
		"db_name": vaulttest.DBConnection, "username": "acme_app_db", "rotation_period": "24h",
	})
	require.NoError(t, err)
	_, err = v.Client.Logical().WriteWithContext(ctx, "secret/data/tenants/acme/openai-key", map[string]any{
		"data": map[string]any{"value": "sk-from-vault-0123456789", "rekey_version": "7", "rekey_tenant": "acme"},
	})
	require.NoError(t, err)

	m := sidecar.Mapping{VaultStaticRoles: map[string]string{"billing-db": "{tenant}-app-db"}}
	kv, err := vaultfetch.NewKV(v.Client, vaultfetch.KVConfig{})
	require.NoError(t, err)
	db, err := vaultfetch.NewDatabase(v.Client, vaultfetch.DatabaseConfig{StaticRoles: m.VaultStaticRoles})
	require.NoError(t, err)
	mux, err := vaultfetch.NewMux(vaultfetch.MuxConfig{Routes: map[string]agent.Fetcher{"billing-db": db}, Default: kv})
	require.NoError(t, err)
	e := newEnvWith(t, mux, m)
	env := []string{"VAULT_ADDR=" + e.vault, "VAULT_TOKEN=" + vaultToken}

	var got struct{ Data map[string]any }
	require.NoError(t, json.Unmarshal([]byte(runPy(t, "hvac_client.py", env, "get", "tenants/acme/openai-key")), &got))
	data := got.Data["data"].(map[string]any)
	require.Equal(t, "sk-from-vault-0123456789", data["value"])
	require.Equal(t, "7", data["rekey_version"])
	require.EqualValues(t, 7, got.Data["metadata"].(map[string]any)["version"])

	require.NoError(t, json.Unmarshal([]byte(runPy(t, "hvac_client.py", env, "static", "acme-app-db")), &got))
	require.Equal(t, "acme_app_db", got.Data["username"])
	password := got.Data["password"].(string)
	require.NotEqual(t, "not-the-password-yet", password)
	cfg, err := pgx.ParseConfig(fmt.Sprintf("postgres://%s:%d/postgres?sslmode=disable&connect_timeout=10", pg.Host, pg.Port))
	require.NoError(t, err)
	cfg.User, cfg.Password = "acme_app_db", password
	login, err := pgx.ConnectConfig(ctx, cfg)
	require.NoError(t, err, "the credentials served log in")
	_ = login.Close(ctx)

	require.Equal(t, "ERROR InvalidPath\n", runPy(t, "hvac_client.py", env, "static", "globex-app-db"))
	e.requireNoValue("sk-from-vault-0123456789", password)
}
