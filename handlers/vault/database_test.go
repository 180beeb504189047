package vault_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/handlers/backendtest"
	"github.com/rekey-dev/rekey/handlers/vault"
	"github.com/rekey-dev/rekey/handlers/vault/vaulttest"
	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/schemas"
)

// staticRole makes a PostgreSQL user and a Vault static role for it, named
// <tenant>-<secret> as the backend's default; Vault sets a password at once.
func staticRole(t testing.TB, tenant string) handlers.SecretRef {
	t.Helper()
	v, pg := vaulttest.NeedDatabase(t)
	secret := testutil.Uniq("app-db")
	role := tenant + "-" + secret
	user := strings.ReplaceAll(role, "-", "_")
	pg.Exec(t, `CREATE ROLE "`+user+`" LOGIN PASSWORD 'not-the-password-yet'`)
	_, err := v.Client.Logical().WriteWithContext(t.Context(), "database/static-roles/"+role, map[string]any{
		"db_name": vaulttest.DBConnection, "username": user, "rotation_period": "24h",
	})
	require.NoError(t, err)
	return handlers.SecretRef{Tenant: tenant, Secret: secret, Backend: vault.Name, Options: map[string]string{vault.OptKind: vault.KindStaticRole}}
}

// TestStaticRoleRotation: the saga rotates a database static role with
// rotate-role; afterwards the old password no longer logs in to PostgreSQL
// and the new one does. Finish is idempotent through last_vault_rotation.
func TestStaticRoleRotation(t *testing.T) {
	t.Parallel()
	_, pg := vaulttest.NeedDatabase(t)
	logs := &backendtest.LogBuffer{}
	b := newBackend(t, baseConfig(t, ""), logs.Logger())
	ctx := t.Context()
	ref := staticRole(t, "acme")

	before, err := b.StaticCredentials(ctx, ref)
	require.NoError(t, err)
	require.NoError(t, pg.Login(ctx, before.Username, before.Password), "login with the password Vault set")
	cur, err := b.Current(ctx, ref)
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(cur.ID, "vault-"), "version of a password Vault set itself: %s", cur.ID)

	tok := schemas.NewULID()
	v, err := b.Create(ctx, ref, tok)
	require.NoError(t, err)
	require.NoError(t, b.Set(ctx, ref, v))
	require.NoError(t, b.Test(ctx, ref, v))
	same, err := b.StaticCredentials(ctx, ref)
	require.NoError(t, err)
	require.Equal(t, before.Password, same.Password, "password changed before Finish")
	staged, err := b.Staged(ctx, ref)
	require.NoError(t, err)
	require.Len(t, staged, 1)
	require.Equal(t, tok, staged[0].Token)

	begin := time.Now()
	require.NoError(t, b.Finish(ctx, ref, v))
	t.Logf("static role rotation (rotate-role + record): %s", time.Since(begin))
	after, err := b.StaticCredentials(ctx, ref)
	require.NoError(t, err)
	require.NotEqual(t, before.Password, after.Password)
	require.True(t, after.LastRotation.After(before.LastRotation))
	cur, err = b.Current(ctx, ref)
	require.NoError(t, err)
	require.Equal(t, v.ID, cur.ID)

	err = pg.Login(ctx, before.Username, before.Password)
	require.True(t, vaulttest.IsAuthFailure(err), "old password still logs in (err %v)", err)
	require.NoError(t, pg.Login(ctx, after.Username, after.Password), "new password does not log in")

	// Finish again, and a whole retried saga with the same token: no
	// second rotation.
	require.NoError(t, b.Finish(ctx, ref, v))
	again, err := b.Create(ctx, ref, tok)
	require.NoError(t, err)
	require.Equal(t, v.ID, again.ID)
	require.NoError(t, b.Finish(ctx, ref, again))
	still, err := b.StaticCredentials(ctx, ref)
	require.NoError(t, err)
	require.Equal(t, after.Password, still.Password, "a repeated Finish rotated again")

	// A Finish that crashed after rotate-role but before recording it:
	// the retry sees last_vault_rotation moved and does not rotate again.
	v2, err := b.Create(ctx, ref, schemas.NewULID())
	require.NoError(t, err)
	_, err = vaulttest.NeedVault(t).Client.Logical().WriteWithContext(ctx, "database/rotate-role/acme-"+ref.Secret, nil)
	require.NoError(t, err)
	rotated, err := b.StaticCredentials(ctx, ref)
	require.NoError(t, err)
	require.NoError(t, b.Finish(ctx, ref, v2))
	final, err := b.StaticCredentials(ctx, ref)
	require.NoError(t, err)
	require.Equal(t, rotated.Password, final.Password, "Finish rotated a role already rotated after Create")
	cur, err = b.Current(ctx, ref)
	require.NoError(t, err)
	require.Equal(t, v2.ID, cur.ID)

	// Rollback of an intent leaves the password alone.
	v3, err := b.Create(ctx, ref, schemas.NewULID())
	require.NoError(t, err)
	require.NoError(t, b.Rollback(ctx, ref, v3))
	staged, err = b.Staged(ctx, ref)
	require.NoError(t, err)
	require.Empty(t, staged)
	require.Error(t, b.Finish(ctx, ref, v3), "Finish of a rolled back intent")
	unchanged, err := b.StaticCredentials(ctx, ref)
	require.NoError(t, err)
	require.Equal(t, final.Password, unchanged.Password)

	backendtest.RequireNoValue(t, logs.String(), []byte(before.Password), []byte(after.Password), []byte(final.Password))
}

// TestStaticRoleMissing: a static-role secret whose role does not exist
// fails for good at Create.
func TestStaticRoleMissing(t *testing.T) {
	t.Parallel()
	vaulttest.NeedDatabase(t)
	b := newBackend(t, baseConfig(t, ""), nil)
	ref := handlers.SecretRef{Tenant: "acme", Secret: testutil.Uniq("nope"), Backend: vault.Name, Options: map[string]string{vault.OptKind: vault.KindStaticRole}}
	_, err := b.Create(t.Context(), ref, schemas.NewULID())
	require.ErrorIs(t, err, handlers.ErrPermanent)
	require.ErrorContains(t, err, "does not exist")
}

// dynamicRole makes a Vault dynamic role that creates PostgreSQL users.
func dynamicRole(t testing.TB, name string) {
	t.Helper()
	v, _ := vaulttest.NeedDatabase(t)
	_, err := v.Client.Logical().WriteWithContext(t.Context(), "database/roles/"+name, map[string]any{
		"db_name":             vaulttest.DBConnection,
		"creation_statements": []string{`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`},
		"default_ttl":         "1h",
		"max_ttl":             "2h",
	})
	require.NoError(t, err)
}

type dbCreds struct{ user, password string }

// issue reads n dynamic credentials of role, 8 at a time.
func issue(t testing.TB, role string, n int) []dbCreds {
	t.Helper()
	v := vaulttest.NeedVault(t)
	out := make([]dbCreds, n)
	g, ctx := errgroup.WithContext(t.Context())
	g.SetLimit(8)
	for i := range n {
		g.Go(func() error {
			sec, err := v.Client.Logical().ReadWithContext(ctx, "database/creds/"+role)
			if err != nil {
				return err
			}
			out[i] = dbCreds{user: sec.Data["username"].(string), password: sec.Data["password"].(string)}
			return nil
		})
	}
	require.NoError(t, g.Wait())
	return out
}

// logins tries every credential, 8 at a time, and returns one error (nil:
// logged in) per credential.
func logins(t testing.TB, creds []dbCreds) []error {
	t.Helper()
	_, pg := vaulttest.NeedDatabase(t)
	errs := make([]error, len(creds))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, c := range creds {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			errs[i] = pg.Login(ctx, c.user, c.password)
		}()
	}
	wg.Wait()
	return errs
}

// TestRevokeTenantLeases: 200 dynamic credentials of one tenant (over two
// roles) and 20 of another; revoking the first tenant revokes all 200 (they
// no longer log in, their users are gone from PostgreSQL) and leaves the
// other tenant's working.
func TestRevokeTenantLeases(t *testing.T) {
	t.Parallel()
	_, pg := vaulttest.NeedDatabase(t)
	logs := &backendtest.LogBuffer{}
	b := newBackend(t, baseConfig(t, ""), logs.Logger())
	ctx := t.Context()
	// Tenants of their own, so that other tests' roles do not count.
	victim, bystander := testutil.Uniq("tv"), testutil.Uniq("tb")
	dynamicRole(t, victim+"-readonly")
	dynamicRole(t, victim+"-writer")
	dynamicRole(t, bystander+"-readonly")

	begin := time.Now()
	creds := append(issue(t, victim+"-readonly", 120), issue(t, victim+"-writer", 80)...)
	others := issue(t, bystander+"-readonly", 20)
	t.Logf("issued %d + %d dynamic credentials in %s", len(creds), len(others), time.Since(begin))
	for i, err := range logins(t, creds) {
		require.NoError(t, err, "credential %d does not log in before the revocation", i)
	}
	countUsers := func(tenant string) int {
		return pg.Count(t, `SELECT count(*) FROM pg_roles WHERE rolname LIKE $1`, "%"+tenant+"-%")
	}
	require.Equal(t, 200, countUsers(victim))

	begin = time.Now()
	n, err := b.RevokeTenant(ctx, victim)
	elapsed := time.Since(begin)
	require.NoError(t, err)
	require.Equal(t, 200, n, "leases counted as revoked")
	t.Logf("RevokeTenant(%s): %d leases over 2 roles revoked in %s (revoke-prefix, then until Vault lists no lease)", victim, n, elapsed)

	for i, err := range logins(t, creds) {
		require.True(t, vaulttest.IsAuthFailure(err), "revoked credential %d (%s) still logs in, or failed otherwise: %v", i, creds[i].user, err)
	}
	require.Equal(t, 0, countUsers(victim), "revoked users left in PostgreSQL")
	for i, err := range logins(t, others) {
		require.NoError(t, err, "the other tenant's credential %d stopped working", i)
	}
	require.Equal(t, 20, countUsers(bystander))

	// Again: nothing left to revoke.
	n, err = b.RevokeTenant(ctx, victim)
	require.NoError(t, err)
	require.Zero(t, n)
	require.Contains(t, logs.String(), "revoked tenant leases")
	for _, c := range creds[:10] {
		backendtest.RequireNoValue(t, logs.String(), []byte(c.password))
	}
}

// TestForceRevokeTenant: revoke-force removes the tenant's leases from
// Vault (its last resort when the database cannot be reached).
func TestForceRevokeTenant(t *testing.T) {
	t.Parallel()
	v, _ := vaulttest.NeedDatabase(t)
	b := newBackend(t, baseConfig(t, ""), nil)
	tenant := testutil.Uniq("tf")
	dynamicRole(t, tenant+"-ro")
	issue(t, tenant+"-ro", 5)
	n, err := b.ForceRevokeTenant(t.Context(), tenant)
	require.NoError(t, err)
	require.Equal(t, 5, n)
	sec, err := v.Client.Logical().ListWithContext(t.Context(), "sys/leases/lookup/database/creds/"+tenant+"-ro")
	require.NoError(t, err)
	require.Nil(t, sec, "leases left after revoke-force")
}

// TestRevokeTenantWithoutDatabase: no database mount, nothing to revoke.
func TestRevokeTenantWithoutDatabase(t *testing.T) {
	t.Parallel()
	cfg := baseConfig(t, "")
	cfg.DatabaseMount = "no-such-mount"
	b := newBackend(t, cfg, nil)
	n, err := b.RevokeTenant(t.Context(), "acme")
	require.NoError(t, err)
	require.Zero(t, n)
}
