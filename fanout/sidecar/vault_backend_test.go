package sidecar_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/fanout/agent/vaultfetch"
	"github.com/rekey-dev/rekey/fanout/sidecar"
	"github.com/rekey-dev/rekey/handlers/vault/vaulttest"
	"github.com/rekey-dev/rekey/schemas"
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

// TestRunCredentialsThroughSidecar: a read naming its run (X-Rekey-Run)
// of a secret made per run gets credentials made for that run alone, the
// same for every read of the run, through rekey's API and Vault's; DELETE
// /v1/runs/{id} removes the run's user from PostgreSQL at once and the
// run id is refused from then on, while the other run keeps its user.
func TestRunCredentialsThroughSidecar(t *testing.T) {
	v, pg := servers.Database(t)
	ctx := context.Background()
	_, err := v.Client.Logical().WriteWithContext(ctx, "database/roles/acme-run", map[string]any{
		"db_name":             vaulttest.DBConnection,
		"creation_statements": []string{`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`},
		"default_ttl":         "1h", "max_ttl": "2h",
	})
	require.NoError(t, err)
	m := sidecar.Mapping{VaultRunRoles: map[string]string{"run-db": "{tenant}-run"}}
	db, err := vaultfetch.NewDatabase(v.Client, vaultfetch.DatabaseConfig{RunRoles: m.VaultRunRoles})
	require.NoError(t, err)
	e := newEnvCfg(t, nil, m, nil, func(c *agent.Config) { c.RunIssuer = db })
	used := e.subscribe("rekey.used.acme.run-db.>")

	user := func(base, path string, h map[string]string) (string, string) {
		t.Helper()
		code, body := call(t, "GET", base+path, h, "")
		require.Equal(t, 200, code, body)
		var r struct {
			Value string
			Data  map[string]any
		}
		require.NoError(t, json.Unmarshal([]byte(body), &r))
		if r.Value != "" {
			c, err := vaultfetch.ParseCredentials([]byte(r.Value))
			require.NoError(t, err)
			return c.Username, c.Password
		}
		return r.Data["username"].(string), r.Data["password"].(string)
	}
	run1 := with(bearer, "X-Rekey-Run", "run-1")
	u1, p1 := user(e.rekey, "/v1/secrets/run-db", run1)
	again, _ := user(e.rekey, "/v1/secrets/run-db", run1)
	require.Equal(t, u1, again, "one user per run")
	u2, p2 := user(e.vault, "/v1/database/creds/acme-run", map[string]string{"X-Vault-Token": vaultToken, "X-Rekey-Run": "run-2"})
	require.NotEqual(t, u1, u2, "each run its own user")
	require.True(t, pgRoleExists(t, pg, u1))
	require.True(t, pgRoleExists(t, pg, u2))

	code, body := call(t, "DELETE", e.rekey+"/v1/runs/run-1", bearer, "")
	require.Equal(t, 204, code, body)
	require.False(t, pgRoleExists(t, pg, u1), "run-1's user still in PostgreSQL after DELETE")
	require.True(t, pgRoleExists(t, pg, u2), "run-2's user dropped with run-1")

	// The ended run never begins again with new credentials.
	code, body = call(t, "GET", e.rekey+"/v1/secrets/run-db", run1, "")
	require.Equal(t, 410, code, body)
	code, body = call(t, "GET", e.vault+"/v1/database/creds/acme-run", map[string]string{"X-Vault-Token": vaultToken, "X-Rekey-Run": "run-1"}, "")
	require.Equal(t, 410, code, body)
	e.requireNoValue(p1, p2)

	// The use reports (and so the audit trail) link each run to its
	// lease, with the tool: the lease id is the version.
	require.NoError(t, e.agent.Close())
	leases := map[string]string{}
	for len(leases) < 2 {
		select {
		case m := <-used:
			ev, err := schemas.Decode(m.Data)
			require.NoError(t, err)
			var r schemas.UsageReport
			require.NoError(t, ev.DecodeData(schemas.TypeUsageReport, &r))
			require.NoError(t, r.Validate())
			require.Contains(t, r.Version, "database/creds/acme-run/")
			leases[r.Run] = r.Version
		case <-time.After(10 * time.Second):
			t.Fatalf("use reports of the runs: got %v", leases)
		}
	}
	require.NotEqual(t, leases["run-1"], leases["run-2"])
}

// pgRoleExists reports whether PostgreSQL has a role named user.
func pgRoleExists(t testing.TB, pg *vaulttest.Postgres, user string) bool {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), pg.URL("postgres"))
	require.NoError(t, err)
	defer conn.Close(context.Background())
	var n int
	require.NoError(t, conn.QueryRow(context.Background(), "SELECT count(*) FROM pg_roles WHERE rolname = $1", user).Scan(&n))
	return n > 0
}
