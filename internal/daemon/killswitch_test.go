package daemon_test

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	smtypes "github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/handlers/awssm/awssmtest"
	"github.com/rekey-dev/rekey/handlers/vault/vaulttest"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// killSwitchSize is the tenant a kill switch cuts off.
type killSwitchSize struct {
	leases, kv, aws, agents int
}

// killSwitchResult is what one revocation took.
type killSwitchResult struct {
	report       schemas.RevocationCompleted
	agentsClosed time.Duration // revoke accepted -> last agent failed closed
	total        time.Duration // revoke accepted -> report
}

// killSwitchEnv is rekeyd with a tenant "acme" holding dynamic database
// credentials (Vault leases on a real PostgreSQL), Vault KV secrets and
// Secrets Manager secrets (the in-test emulator), with agents attached.
type killSwitchEnv struct {
	tb     testing.TB
	size   killSwitchSize
	d      *running
	v      *vaulttest.Vault
	sm     *awssmtest.Server
	closed chan time.Time
}

func startKillSwitch(tb testing.TB, size killSwitchSize) *killSwitchEnv {
	tb.Helper()
	ctx := context.Background()
	setupBegan := time.Now()
	var servers vaulttest.Servers
	tb.Cleanup(servers.Stop)
	v, _ := servers.Database(tb)
	e := &killSwitchEnv{tb: tb, size: size, v: v, sm: awssmtest.Start(tb), closed: make(chan time.Time, size.agents)}
	tb.Setenv("REKEY_TEST_VAULT_TOKEN", v.RootToken)
	tb.Setenv("AWS_ACCESS_KEY_ID", "test")
	tb.Setenv("AWS_SECRET_ACCESS_KEY", "test")
	tb.Setenv("AWS_REGION", "us-east-1")

	// Dynamic credentials of acme's database role: the leases to revoke.
	_, err := v.Client.Logical().WriteWithContext(ctx, "database/roles/acme-ro", map[string]any{
		"db_name":             vaulttest.DBConnection,
		"creation_statements": []string{`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`},
		"default_ttl":         "1h", "max_ttl": "2h",
	})
	require.NoError(tb, err)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for range size.leases {
		g.Go(func() error {
			_, err := v.Client.Logical().ReadWithContext(gctx, "database/creds/acme-ro")
			return err
		})
	}
	require.NoError(tb, g.Wait())
	tb.Logf("setup: %d leases issued after %s", size.leases, time.Since(setupBegan).Round(time.Millisecond))

	smc := e.sm.Client(tb)
	cfg := testConfig(tb, tb.TempDir())
	cfg.Rotation.Concurrency = 32
	cfg.Backends.Vault = mustYAML(tb, map[string]any{
		"address": v.Addr, "auth": map[string]any{"method": "token", "token_env": "REKEY_TEST_VAULT_TOKEN"},
	})
	cfg.Backends.AWSSM = mustYAML(tb, map[string]any{"region": "us-east-1", "endpoint": e.sm.Endpoint()})
	acme := cfg.Tenants["acme"]
	gen := orchestrator.GeneratorConfig{Style: "api-key", Length: 32}
	for i := range size.kv {
		acme.Secrets[fmt.Sprintf("kv-%d", i)] = orchestrator.SecretConfig{Backend: "vault", Generator: gen}
	}
	for i := range size.aws {
		s := fmt.Sprintf("aws-%d", i)
		acme.Secrets[s] = orchestrator.SecretConfig{Backend: "awssm", Generator: gen}
		_, err := smc.CreateSecret(ctx, &secretsmanager.CreateSecretInput{
			Name: aws.String("/tenants/acme/" + s), SecretString: aws.String("initial"),
			Tags: []smtypes.Tag{{Key: aws.String("TenantId"), Value: aws.String("acme")}},
		})
		require.NoError(tb, err)
	}
	cfg.Tenants["acme"] = acme
	require.NoError(tb, cfg.Validate())
	e.d = start(tb, cfg, daemonOpts())
	tb.Logf("setup: rekeyd ready after %s", time.Since(setupBegan).Round(time.Millisecond))

	for i := range size.agents {
		newAgentWith(tb, e.d, "acme", fmt.Sprintf("ks-agent-%d", i), nil, func(inv agent.Invalidated) {
			if inv.Invalidation.Kind == schemas.InvalidationRevoked {
				e.closed <- inv.DroppedAt
			}
		})
	}
	tb.Logf("setup: %d agents started after %s", size.agents, time.Since(setupBegan).Round(time.Millisecond))
	return e
}

// leases returns how many leases Vault holds under acme's role.
func (e *killSwitchEnv) leases() int {
	e.tb.Helper()
	sec, err := e.v.Client.Logical().ListWithContext(context.Background(), "sys/leases/lookup/database/creds/acme-ro")
	require.NoError(e.tb, err)
	if sec == nil {
		return 0
	}
	keys, _ := sec.Data["keys"].([]any)
	return len(keys)
}

// revoke pulls the kill switch and waits for the report and for every
// agent to fail closed.
func (e *killSwitchEnv) revoke(t testing.TB) killSwitchResult {
	t.Helper()
	done, unsub := subscribeEvents(t, e.d, "acme", schemas.KindRevocationCompleted)
	defer unsub()
	begin := time.Now()
	req, err := http.NewRequest(http.MethodPost, "http://"+e.d.HTTPAddr()+"/v1/tenants/acme/revoke", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusAccepted, resp.StatusCode)

	var res killSwitchResult
	var last time.Time
	for range e.size.agents {
		select {
		case at := <-e.closed:
			last = maxTime(last, at)
		case <-time.After(30 * time.Second):
			t.Fatal("not every agent failed closed")
		}
	}
	res.agentsClosed = last.Sub(begin)
	res.report = nextEvent[schemas.RevocationCompleted](t, done, schemas.TypeRevocationCompleted, 5*time.Minute)
	res.total = time.Since(begin)
	return res
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// TestKillSwitch: one revoke cuts a tenant off everywhere: every agent
// fails closed, every Vault lease of its role is revoked (the database
// users dropped), every KV and Secrets Manager secret rotated; the report
// says so, part by part.
func TestKillSwitch(t *testing.T) {
	e := startKillSwitch(t, killSwitchSize{leases: 20, kv: 4, aws: 3, agents: 10})
	require.Equal(t, 20, e.leases())
	res := e.revoke(t)
	require.False(t, res.report.Failed, "report %+v", res.report)
	parts := map[string]schemas.PartReport{}
	for _, p := range res.report.Parts {
		parts[p.Part] = p
	}
	require.Equal(t, 20, parts["vault.leases"].Succeeded, "report %+v", res.report)
	require.Equal(t, 4, parts["vault.secrets"].Succeeded)
	require.Equal(t, 3, parts["awssm.secrets"].Succeeded)
	require.Equal(t, 0, e.leases(), "leases left in Vault")
	ctx := context.Background()
	for i := range 3 {
		st, err := e.d.State().SecretStatus(ctx, "acme", fmt.Sprintf("aws-%d", i))
		require.NoError(t, err)
		require.EqualValues(t, 1, st.Rotations)
		require.NotEmpty(t, e.sm.Stages("/tenants/acme/aws-" + fmt.Sprint(i))[st.Version])
	}
	t.Logf("kill switch: agents closed in %s, report after %s", res.agentsClosed.Round(time.Millisecond), res.total.Round(time.Millisecond))
}

// BenchmarkKillSwitch measures the kill switch on the tenant of issue #7:
// 500 dynamic Vault leases, 50 Vault KV secrets, 20 Secrets Manager
// secrets (emulator) and 200 agents. One revocation per run:
//
//	go test -run '^$' -bench KillSwitch -benchtime 1x -timeout 20m ./internal/daemon/
func BenchmarkKillSwitch(b *testing.B) {
	size := killSwitchSize{leases: 500, kv: 50, aws: 20, agents: 200}
	for range b.N {
		b.StopTimer()
		e := startKillSwitch(b, size)
		b.StartTimer()
		res := e.revoke(b)
		b.StopTimer()
		if res.report.Failed || e.leases() != 0 {
			b.Fatalf("kill switch incomplete: %+v, %d leases left", res.report, e.leases())
		}
		b.ReportMetric(float64(res.agentsClosed.Microseconds())/1000, "agents-closed-ms")
		b.ReportMetric(res.total.Seconds(), "report-s")
		var names []string
		for _, p := range res.report.Parts {
			names = append(names, p.Part)
			b.ReportMetric(p.DurationMS/1000, p.Part+"-s")
		}
		sort.Strings(names)
		b.Logf("tenant %+v: parts %v", size, names)
		b.ReportMetric(0, "ns/op")
	}
}
