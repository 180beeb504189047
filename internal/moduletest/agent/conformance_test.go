package agent_test

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/fanout/agent/agenttest"
	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/handlers/local"
	"github.com/rekey-dev/rekey/internal/testutil"
)

// TestNATSFetcherConformance runs the Fetcher suite on the NATS fetcher
// against rekeyd's fetch server on the local backend.
func TestNATSFetcherConformance(t *testing.T) {
	s := startServer(t)
	nc := connect(t, s)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	key := make([]byte, local.KeySize)
	_, err = rand.Read(key)
	require.NoError(t, err)
	b, err := local.New(t.Context(), js, local.Config{Key: key}, slog.New(slog.DiscardHandler))
	require.NoError(t, err)

	var known sync.Map // tenant/secret -> true
	ref := func(tenant, secret string) handlers.SecretRef {
		return handlers.SecretRef{Tenant: tenant, Secret: secret, Backend: local.Name}
	}
	resolve := func(tenant, secret string) (handlers.SecretRef, bool) {
		_, ok := known.Load(tenant + "/" + secret)
		return ref(tenant, secret), ok
	}
	var revoked atomic.Bool
	isRevoked := func(_ context.Context, tn string) (bool, error) { return tn == tenant && revoked.Load(), nil }
	testutil.Run(t, local.NewServer(connect(t, s), nil, b, resolve, isRevoked, nil, slog.New(slog.DiscardHandler)))
	f := agent.NewNATSFetcher(nc, "planner-1")
	require.Eventually(t, func() bool { // Run subscribes in its goroutine
		_, err := f.Fetch(t.Context(), tenant, "never-written")
		return errors.Is(err, agent.ErrNotFound)
	}, 10*time.Second, 10*time.Millisecond, "the fetch server does not answer")

	// A fetch for another tenant is not answered (the reply subject is
	// not that tenant's inbox): it ends with Timeout.
	agenttest.Run(t, agenttest.Source{
		Fetcher: f,
		Tenant:  tenant,
		Other:   "globex",
		New: func(t testing.TB) string {
			secret := testutil.Uniq("key")
			known.Store(tenant+"/"+secret, true)
			known.Store("globex/"+secret, true) // a secret of the same name
			_, _, err := b.Ensure(context.Background(), ref(tenant, secret))
			require.NoError(t, err)
			_, _, err = b.Ensure(context.Background(), ref("globex", secret))
			require.NoError(t, err)
			return secret
		},
		Missing: "never-written",
		Rotate: func(t testing.TB, secret string) {
			ctx, r := context.Background(), ref(tenant, secret)
			v, err := b.Create(ctx, r, testutil.Uniq("tok"))
			require.NoError(t, err)
			require.NoError(t, b.Set(ctx, r, v))
			require.NoError(t, b.Test(ctx, r, v))
			require.NoError(t, b.Finish(ctx, r, v))
		},
		Revoke:  func(testing.TB) { revoked.Store(true) },
		Timeout: 2 * time.Second,
	})
}
