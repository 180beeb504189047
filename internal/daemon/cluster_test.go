package daemon_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout"
	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/handlers/local"
	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// Issue #8 section 2: three rekeyd processes on a three-node NATS cluster
// (streams and buckets with three replicas) take a storm of rotation
// requests with agents of two tenants attached; mid-storm one rekeyd is
// killed with SIGKILL and the NATS node leading the ROTATE stream is
// stopped. Afterwards every accepted request was rotated or coalesced,
// nothing is left staged, every agent holds the latest version of every
// secret, and the scheduled secret fired once per tick.

const (
	clusterNodes      = 3
	clusterRekeyds    = 3
	clusterRequests   = 600
	clusterSecretsPer = 10 // per tenant
	clusterAgentsPer  = 3  // per tenant
	clusterInterrupt  = clusterRequests / 3
	clusterCronSecret = "cron-key"
)

// clusterSecrets are the secrets the storm rotates (the scheduled one is
// apart: it keeps rotating while the checks run).
func clusterSecrets() []burstSecret {
	var out []burstSecret
	for _, tenant := range burstTenants {
		for i := range clusterSecretsPer {
			out = append(out, burstSecret{tenant, fmt.Sprintf("s-%02d", i)})
		}
	}
	return out
}

// clusterConfig writes replica i's configuration: the cluster's URLs,
// three replicas, short leases and locks, and the local backend key every
// replica shares.
func clusterConfig(t *testing.T, dir string, i int, urls, key string) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "data_dir: %q\n", filepath.Join(dir, fmt.Sprintf("rekeyd-%d", i)))
	fmt.Fprintf(&b, "nats:\n  url: %q\n  replicas: %d\n  lease_ttl: 2s\n", urls, clusterNodes)
	b.WriteString("http:\n  addr: 127.0.0.1:0\n")
	b.WriteString("rotation:\n  max_attempts: 3\n  backoff_initial: 50ms\n  backoff_max: 200ms\n  lock_ttl: 10s\n  min_interval: 0s\n")
	b.WriteString("fanout:\n  confirm_timeout: 3s\n")
	fmt.Fprintf(&b, "backends:\n  local:\n    key: %q\n", key)
	b.WriteString("tenants:\n")
	for _, tenant := range burstTenants {
		fmt.Fprintf(&b, "  %s:\n    secrets:\n", tenant)
		for j := range clusterSecretsPer {
			fmt.Fprintf(&b, "      s-%02d: {backend: local, generator: {style: password, length: 32}}\n", j)
		}
		if tenant == "acme" {
			fmt.Fprintf(&b, "      %s: {backend: local, policy: {schedule: \"@every 2s\"}}\n", clusterCronSecret)
		}
	}
	path := filepath.Join(dir, fmt.Sprintf("rekey-%d.yaml", i))
	require.NoError(t, os.WriteFile(path, []byte(b.String()), 0o600))
	return path
}

// clusterView opens what the checks read on the cluster itself.
type clusterView struct {
	bus    *orchestrator.Bus
	state  *orchestrator.State
	local  *local.Backend
	leases *orchestrator.Leases
}

func (v *clusterView) Bus() *orchestrator.Bus     { return v.bus }
func (v *clusterView) State() *orchestrator.State { return v.state }
func (v *clusterView) Local() *local.Backend      { return v.local }

func openClusterView(t *testing.T, cl *testutil.NATSCluster, key []byte) *clusterView {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	cfg := orchestrator.NATSConfig{Replicas: clusterNodes}
	bus, err := orchestrator.Connect(ctx, cl.URLs(), "cluster-test", cfg, log)
	require.NoError(t, err)
	t.Cleanup(bus.Close)
	v := &clusterView{bus: bus}
	v.state, err = orchestrator.NewState(ctx, bus, 10*time.Second)
	require.NoError(t, err)
	v.local, err = local.New(ctx, bus.JS, local.Config{Key: key, Replicas: clusterNodes}, log)
	require.NoError(t, err)
	v.leases, err = orchestrator.NewLeases(ctx, bus, "cluster-test", 2*time.Second, nil, log)
	require.NoError(t, err)
	return v
}

// clusterAgent starts an agent of tenant connected to NATS node first
// (the others are its fallbacks), as agents spread over a cluster are.
func clusterAgent(t *testing.T, cl *testutil.NATSCluster, tenant, instance string, first int) *agent.Agent {
	t.Helper()
	var urls []string
	for i := range cl.Size() {
		urls = append(urls, cl.ClientURL((first+i)%cl.Size()))
	}
	nc, err := nats.Connect(strings.Join(urls, ","), nats.DontRandomize(), nats.Name(instance),
		nats.CustomInboxPrefix(schemas.AgentInboxPrefix(tenant)), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	return startAgent(t, nc, nil, agent.Config{Tenant: tenant, Instance: instance, HeartbeatInterval: time.Second, UsageInterval: time.Second})
}

type tenantAgent struct {
	tenant string
	a      *agent.Agent
}

// useSecrets makes every agent read its tenant's secrets until stop is
// called, so that caches are full when invalidations arrive.
func useSecrets(agents []tenantAgent, secrets []burstSecret) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, ta := range agents {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				s := secrets[i%len(secrets)]
				if s.tenant == ta.tenant {
					gctx, gcancel := context.WithTimeout(ctx, 2*time.Second)
					_, _ = ta.a.Get(gctx, s.secret) // errors while NATS fails over are expected
					gcancel()
				}
				time.Sleep(2 * time.Millisecond)
			}
		})
	}
	return func() { cancel(); wg.Wait() }
}

func TestClusterStormWithFailures(t *testing.T) {
	began := time.Now()
	cl := testutil.StartNATSClusterT(t, clusterNodes)
	rawKey := make([]byte, local.KeySize)
	_, err := rand.Read(rawKey)
	require.NoError(t, err)
	key := base64.StdEncoding.EncodeToString(rawKey)
	dir := t.TempDir()
	var children []*exec.Cmd
	var addrs []string
	for i := range clusterRekeyds {
		cmd, addr := startChild(t, clusterConfig(t, dir, i, cl.URLs(), key))
		children, addrs = append(children, cmd), append(addrs, addr)
	}
	view := openClusterView(t, cl, rawKey)
	ctx := context.Background()
	t.Logf("3 NATS nodes and 3 rekeyd up after %s", time.Since(began).Round(time.Millisecond))

	// Every stream and bucket (KV_*) has three replicas, and so do the
	// durable consumers.
	for name := range view.bus.JS.StreamNames(ctx).Name() {
		s, err := view.bus.JS.Stream(ctx, name)
		require.NoError(t, err)
		require.Equal(t, clusterNodes, s.CachedInfo().Config.Replicas, "stream %s", name)
		for ci := range s.ListConsumers(ctx).Info() {
			if ci.Config.Durable != "" {
				require.Len(t, ci.Cluster.Replicas, clusterNodes-1, "consumer %s on %s: leader plus two replicas", ci.Name, name)
			}
		}
	}

	secrets := clusterSecrets()
	var agents []tenantAgent
	for _, tenant := range burstTenants {
		for i := range clusterAgentsPer {
			a := clusterAgent(t, cl, tenant, fmt.Sprintf("%s-agent-%d", tenant, i), i)
			agents = append(agents, tenantAgent{tenant, a})
		}
	}
	stopUsing := useSecrets(agents, secrets)
	defer stopUsing()

	// The storm; a third of the way in, rekeyd 0 is killed and the NATS
	// node leading the ROTATE stream is stopped.
	var once sync.Once
	interrupted := make(chan struct{})
	var killedPid int
	var stoppedNode string
	res := sendBurst(t, "", burstOpts{
		retry: true, pace: 5 * time.Millisecond, requests: clusterRequests, secrets: secrets, addrs: addrs,
		afterAccept: func(n int) {
			if n < clusterInterrupt {
				return
			}
			once.Do(func() {
				go func() {
					defer close(interrupted)
					killedPid = children[0].Process.Pid
					_ = syscall.Kill(killedPid, syscall.SIGKILL)
					node := 0
					if s, err := view.bus.JS.Stream(ctx, schemas.StreamRotate); err == nil && s.CachedInfo().Cluster != nil {
						stoppedNode = s.CachedInfo().Cluster.Leader
						_, _ = fmt.Sscanf(stoppedNode, "n%d", &node)
						node--
					}
					cl.Stop(max(node, 0))
				}()
			})
		},
	})
	<-interrupted
	t.Logf("storm: %d accepted after %s; rekeyd pid %d killed and NATS node %q (ROTATE leader) stopped at %d accepted",
		res.nAccepted(), time.Since(began).Round(time.Millisecond), killedPid, stoppedNode, clusterInterrupt)
	require.Equal(t, clusterRequests, res.nAccepted(), "every request is eventually accepted by a replica (non-202: %v)", res.status)
	_, _ = children[0].Process.Wait()

	drained := time.Now()
	waitRotateDrained(t, view, 2*time.Minute)
	stopUsing()
	t.Logf("ROTATE drained %s after the storm", time.Since(drained).Round(time.Millisecond))
	checkRequests(t, view, res, secrets)

	// Every agent converges on the latest version of every secret of its
	// tenant (the scheduled one included, though it keeps rotating).
	converged := time.Now()
	for _, ta := range agents {
		names := []string{clusterCronSecret}
		for _, s := range secrets {
			if s.tenant == ta.tenant {
				names = append(names, s.secret)
			}
		}
		for _, name := range names {
			if ta.tenant != "acme" && name == clusterCronSecret {
				continue
			}
			var got, want string
			require.Eventually(t, func() bool {
				st, err := view.state.SecretStatus(ctx, ta.tenant, name)
				if err != nil {
					return false
				}
				gctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				defer cancel()
				sec, err := ta.a.Get(gctx, name)
				got, want = sec.Version, st.Version
				return err == nil && got == want
			}, 30*time.Second, 50*time.Millisecond, "agent of %s holds %s version %q, latest is %q", ta.tenant, name, got, want)
		}
	}
	t.Logf("all %d agents hold the latest versions (checked in %s)", len(agents), time.Since(converged).Round(time.Millisecond))

	// The schedule fired once per tick: one accepted request per tick, and
	// no replica published a tick another had published.
	perTick, duplicates := map[string]int{}, 0
	for _, r := range auditRecords(t, view, "acme") {
		if r.Component != "cron" || r.Action != "rotation.request" {
			continue
		}
		switch r.Outcome {
		case schemas.OutcomeAccepted:
			perTick[r.RequestID]++
		case schemas.OutcomeCoalesced:
			duplicates++
		}
	}
	t.Logf("cron: %d ticks fired, %d duplicate publications", len(perTick), duplicates)
	require.GreaterOrEqual(t, len(perTick), 3, "the schedule fired during the test")
	for id, n := range perTick {
		require.Equal(t, 1, n, "tick %s accepted %d times", id, n)
	}
	require.LessOrEqual(t, duplicates, 1, "one scheduler for all replicas (a tick may be published again only by the replica taking over)")

	// The one-replica parts run on a live replica.
	dead := fmt.Sprintf("-%d-", killedPid)
	for _, lease := range []string{"cron", fanout.LeaseConfirm} {
		var holder string
		require.Eventually(t, func() bool {
			h, err := view.leases.Holder(ctx, lease)
			holder = h
			return err == nil && h != "" && !strings.Contains(h, dead)
		}, 15*time.Second, 50*time.Millisecond, "lease %s held by %q", lease, holder)
	}
	t.Logf("total %s", time.Since(began).Round(time.Millisecond))
}

// TestTenantRequestsApplyInOrder: a replica takes a tenant's revoke and
// dies without acking it; the restore made after it reaches a live replica
// first. The restore waits for the revoke's redelivery, so the tenant ends
// restored, as its operator asked last, not revoked.
func TestTenantRequestsApplyInOrder(t *testing.T) {
	srv := testutil.StartNATS(t, -1, "")
	ctx := context.Background()
	bus, err := orchestrator.Connect(ctx, srv.ClientURL(), "dead-replica", orchestrator.NATSConfig{}, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	t.Cleanup(bus.Close)
	require.NoError(t, bus.EnsureStreams(ctx))
	// The durable the revocation workers share, as they create it.
	cons, err := bus.Consumer(ctx, schemas.StreamRevoke, jetstream.ConsumerConfig{
		Durable: orchestrator.ConsumerRevocation, AckPolicy: jetstream.AckExplicitPolicy, AckWait: testWorker.AckWait,
		MaxAckPending: 1000, MaxDeliver: -1, FilterSubject: schemas.SubjectRevokeAll,
	})
	require.NoError(t, err)
	request := func(action string) string {
		ev, err := bus.PublishEvent(ctx, schemas.RevokeSubject("globex"), "test", schemas.TypeRevocationRequested, "globex", "globex",
			schemas.RevocationRequested{Tenant: "globex", Action: action, Reason: "order test", Trigger: schemas.Trigger{Kind: "api"}, RequestedAt: time.Now().UTC()})
		require.NoError(t, err)
		return ev.ID
	}
	revokeID := request(schemas.ActionRevoke)
	held, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	require.NoError(t, err)
	for m := range held.Messages() {
		require.Equal(t, schemas.RevokeSubject("globex"), m.Subject()) // taken, never acked
	}

	cfg := testConfig(t, t.TempDir())
	cfg.NATS.URL = srv.ClientURL()
	d := start(t, cfg, daemonOpts())
	restoreID := request(schemas.ActionRestore)

	var order []string
	require.Eventually(t, func() bool {
		order = order[:0]
		for _, r := range auditRecords(t, d, "globex") {
			if (r.RequestID == revokeID && r.Action == "revocation.complete") || (r.RequestID == restoreID && r.Action == "revocation.restore") {
				order = append(order, r.Action)
			}
		}
		return len(order) == 2
	}, 30*time.Second, 50*time.Millisecond, "revoke redelivered and restore applied")
	require.Equal(t, []string{"revocation.complete", "revocation.restore"}, order, "applied in the order they were made")
	ts, err := d.State().TenantState(ctx, "globex")
	require.NoError(t, err)
	require.False(t, ts.Revoked, "restored, as asked last")
	require.Equal(t, restoreID, ts.RequestID)
}
