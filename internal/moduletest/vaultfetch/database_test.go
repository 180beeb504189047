package vaultfetch_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/fanout/agent/vaultfetch"
	"github.com/rekey-dev/rekey/handlers/vault/vaulttest"
	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/schemas"
)

// dynamicRole makes a Vault dynamic role that creates PostgreSQL users.
func dynamicRole(t testing.TB, name, ttl, maxTTL string) {
	t.Helper()
	v, _ := vaulttest.NeedDatabase(t)
	_, err := v.Client.Logical().WriteWithContext(t.Context(), "database/roles/"+name, map[string]any{
		"db_name":             vaulttest.DBConnection,
		"creation_statements": []string{`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`},
		"default_ttl":         ttl,
		"max_ttl":             maxTTL,
	})
	require.NoError(t, err)
}

// runDatabase runs d's renewal loop for the test.
func runDatabase(t *testing.T, d *vaultfetch.Database) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done, "Run")
	})
}

func credentials(t testing.TB, s agent.Secret) vaultfetch.Credentials {
	t.Helper()
	c, err := vaultfetch.ParseCredentials(s.Value)
	require.NoError(t, err)
	return c
}

// TestDynamicCredentialsRenewed: credentials of a dynamic role with a 3s
// TTL still log in after 6s because Run renewed their lease, while
// credentials of the same role that nobody renews no longer do. A second
// fetch supersedes the first lease, and an invalidation stops renewing.
func TestDynamicCredentialsRenewed(t *testing.T) {
	t.Parallel()
	v, pg := vaulttest.NeedDatabase(t)
	ctx := t.Context()
	role := testutil.Uniq("acme-ro")
	dynamicRole(t, role, "3s", "30s")
	logs := &testutil.SyncBuffer{}
	d, err := vaultfetch.NewDatabase(v.Client, vaultfetch.DatabaseConfig{
		DynamicRoles: map[string]string{"reports-db": role},
		Logger:       debugLogger(logs),
	})
	require.NoError(t, err)
	require.Equal(t, []string{"reports-db"}, d.Secrets())
	runDatabase(t, d)

	s, err := d.Fetch(ctx, "acme", "reports-db")
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(s.Version, "database/creds/"+role+"/"), "version is the lease id: %s", s.Version)
	require.Equal(t, []string{s.Version}, d.Leases())
	c := credentials(t, s)
	require.NoError(t, pg.Login(ctx, c.Username, c.Password))

	// The control: credentials of the same role that nobody renews.
	raw, err := v.Client.Logical().ReadWithContext(ctx, "database/creds/"+role)
	require.NoError(t, err)
	unrenewed := vaultfetch.Credentials{Username: raw.Data["username"].(string), Password: raw.Data["password"].(string)}
	require.NoError(t, pg.Login(ctx, unrenewed.Username, unrenewed.Password))

	time.Sleep(6 * time.Second)
	require.NoError(t, pg.Login(ctx, c.Username, c.Password), "renewed credentials no longer log in")
	require.Error(t, pg.Login(ctx, unrenewed.Username, unrenewed.Password), "the control's lease should have expired")
	lk, err := v.Client.Sys().LookupWithContext(ctx, s.Version)
	require.NoError(t, err, "renewed lease is gone")
	require.NotNil(t, lk)

	// A new fetch of the secret supersedes the lease: only the new one is
	// renewed.
	s2, err := d.Fetch(ctx, "acme", "reports-db")
	require.NoError(t, err)
	require.NotEqual(t, s.Version, s2.Version)
	require.Equal(t, []string{s2.Version}, d.Leases())

	// An invalidation of the secret, through the agent's hook, stops it.
	d.Invalidated(agent.Invalidated{Invalidation: schemas.Invalidation{Tenant: "acme", Secret: "reports-db", Kind: schemas.InvalidationRotated}})
	require.Empty(t, d.Leases())

	// Forget, and a tenant-wide invalidation.
	s3, err := d.Fetch(ctx, "acme", "reports-db")
	require.NoError(t, err)
	d.Forget(s3.Version)
	require.Empty(t, d.Leases())
	_, err = d.Fetch(ctx, "acme", "reports-db")
	require.NoError(t, err)
	d.Invalidated(agent.Invalidated{Invalidation: schemas.Invalidation{Tenant: "globex", Kind: schemas.InvalidationRevoked}})
	require.Len(t, d.Leases(), 1, "another tenant's revocation")
	d.Invalidated(agent.Invalidated{Invalidation: schemas.Invalidation{Tenant: "acme", Kind: schemas.InvalidationRevoked}})
	require.Empty(t, d.Leases())

	requireNoSecret(t, logs.String(), c.Password, unrenewed.Password)
}

// TestDynamicLeaseMaxTTL: renewal stops when Vault grants less than asked
// (the lease reached its max TTL); the lease then expires.
func TestDynamicLeaseMaxTTL(t *testing.T) {
	t.Parallel()
	v, _ := vaulttest.NeedDatabase(t)
	role := testutil.Uniq("acme-short")
	dynamicRole(t, role, "3s", "4s")
	d, err := vaultfetch.NewDatabase(v.Client, vaultfetch.DatabaseConfig{DynamicRoles: map[string]string{"short-db": "{tenant}-" + strings.TrimPrefix(role, "acme-")}})
	require.NoError(t, err)
	runDatabase(t, d)
	s, err := d.Fetch(t.Context(), "acme", "short-db")
	require.NoError(t, err)
	require.Len(t, d.Leases(), 1)
	require.Eventually(t, func() bool { return len(d.Leases()) == 0 }, 10*time.Second, 100*time.Millisecond,
		"renewal did not stop at the max TTL")
	require.Eventually(t, func() bool {
		_, err := v.Client.Sys().LookupWithContext(t.Context(), s.Version)
		return err != nil
	}, 10*time.Second, 200*time.Millisecond, "lease still there after its max TTL")
}

// TestHoldFor: a lease is not renewed longer than HoldFor after its fetch.
func TestHoldFor(t *testing.T) {
	t.Parallel()
	v, _ := vaulttest.NeedDatabase(t)
	role := testutil.Uniq("acme-hold")
	dynamicRole(t, role, "3s", "60s")
	d, err := vaultfetch.NewDatabase(v.Client, vaultfetch.DatabaseConfig{
		DynamicRoles: map[string]string{"hold-db": role}, HoldFor: 2500 * time.Millisecond,
	})
	require.NoError(t, err)
	runDatabase(t, d)
	_, err = d.Fetch(t.Context(), "acme", "hold-db")
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(d.Leases()) == 0 }, 10*time.Second, 100*time.Millisecond,
		"lease renewed past HoldFor")
}

// TestStaticCredentials: a static role's credentials log in; Version is
// last_vault_rotation and changes with rotate-role.
func TestStaticCredentials(t *testing.T) {
	t.Parallel()
	v, pg := vaulttest.NeedDatabase(t)
	ctx := t.Context()
	role := testutil.Uniq("acme-app-db")
	user := strings.ReplaceAll(role, "-", "_")
	pg.Exec(t, `CREATE ROLE "`+user+`" LOGIN PASSWORD 'not-the-password-yet'`)
	_, err := v.Client.Logical().WriteWithContext(ctx, "database/static-roles/"+role, map[string]any{
		"db_name": vaulttest.DBConnection, "username": user, "rotation_period": "24h",
	})
	require.NoError(t, err)
	d, err := vaultfetch.NewDatabase(v.Client, vaultfetch.DatabaseConfig{StaticRoles: map[string]string{"app-db": role}})
	require.NoError(t, err)

	s, err := d.Fetch(ctx, "acme", "app-db")
	require.NoError(t, err)
	_, err = time.Parse(time.RFC3339Nano, s.Version)
	require.NoError(t, err, "version is last_vault_rotation: %s", s.Version)
	c := credentials(t, s)
	require.Equal(t, user, c.Username)
	require.NoError(t, pg.Login(ctx, c.Username, c.Password))
	require.Empty(t, d.Leases(), "static credentials have no lease")

	time.Sleep(1100 * time.Millisecond) // last_vault_rotation has second precision on some versions
	_, err = v.Client.Logical().WriteWithContext(ctx, "database/rotate-role/"+role, nil)
	require.NoError(t, err)
	s2, err := d.Fetch(ctx, "acme", "app-db")
	require.NoError(t, err)
	require.NotEqual(t, s.Version, s2.Version)
	c2 := credentials(t, s2)
	require.NotEqual(t, c.Password, c2.Password)
	require.NoError(t, pg.Login(ctx, c2.Username, c2.Password))
	require.Error(t, pg.Login(ctx, c.Username, c.Password), "old password still logs in")
}

func TestDatabaseErrors(t *testing.T) {
	t.Parallel()
	v, _ := vaulttest.NeedDatabase(t)
	d, err := vaultfetch.NewDatabase(v.Client, vaultfetch.DatabaseConfig{
		StaticRoles:  map[string]string{"gone-static": testutil.Uniq("no-such-static")},
		DynamicRoles: map[string]string{"gone-dynamic": testutil.Uniq("no-such-dynamic")},
	})
	require.NoError(t, err)
	for _, s := range []string{"gone-static", "gone-dynamic", "unconfigured"} {
		_, err := d.Fetch(t.Context(), "acme", s)
		require.Error(t, err, s)
		if s == "unconfigured" {
			require.ErrorIs(t, err, vaultfetch.ErrNotConfigured)
			require.ErrorIs(t, err, agent.ErrNotFound)
		}
	}
	require.Empty(t, d.Leases())

	for _, tc := range []struct {
		name string
		cfg  vaultfetch.DatabaseConfig
		err  string
	}{
		{"role with slash", vaultfetch.DatabaseConfig{StaticRoles: map[string]string{"a": "x/y"}}, "must not contain /"},
		{"both kinds", vaultfetch.DatabaseConfig{StaticRoles: map[string]string{"a": "x"}, DynamicRoles: map[string]string{"a": "y"}}, "both"},
		{"bad mount", vaultfetch.DatabaseConfig{Mount: "db/{secret}"}, "placeholder"},
		{"negative hold", vaultfetch.DatabaseConfig{HoldFor: -time.Second}, "negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.ErrorContains(t, tc.cfg.Validate(), tc.err)
		})
	}
}

func TestParseCredentials(t *testing.T) {
	t.Parallel()
	c, err := vaultfetch.ParseCredentials([]byte(`{"username":"u","password":"p-s3cr3t"}`))
	require.NoError(t, err)
	require.Equal(t, vaultfetch.Credentials{Username: "u", Password: "p-s3cr3t"}, c)
	require.NotContains(t, c.String(), "p-s3cr3t")
	for _, in := range []string{`p-s3cr3t`, `{"username":"u"}`, `{"password":"p-s3cr3t"}`} {
		_, err := vaultfetch.ParseCredentials([]byte(in))
		require.Error(t, err)
		require.NotContains(t, err.Error(), "p-s3cr3t")
	}
}
