package siem_test

import (
	"context"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/siem"
)

// newEnvWith is newEnv with another triggers.siem section (the senders
// of issue 16), over the same tenants. The credentials in extraSecrets
// are checked, with the package's own, never to reach a log, a reply, an
// event or an audit record.
func newEnvWith(t *testing.T, siemSection string, extraSecrets ...string) *env {
	t.Helper()
	rekey, err := orchestrator.Parse([]byte(rekeyYAML))
	require.NoError(t, err)
	cfg, err := siem.ParseConfig([]byte(siemSection), &rekey)
	require.NoError(t, err)

	srv := testutil.StartNATS(t, -1, "")
	logs := &testutil.SyncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	bus, err := orchestrator.Connect(context.Background(), srv.ClientURL(), "siem-test", orchestrator.NATSConfig{}, log)
	require.NoError(t, err)
	t.Cleanup(bus.Close)
	require.NoError(t, bus.EnsureStreams(context.Background()))

	e := &env{t: t, bus: bus, rekey: &rekey, cfg: cfg, logs: logs, bodies: &testutil.SyncBuffer{}}
	e.url = e.serve()
	t.Cleanup(e.checkNoSecrets)
	t.Cleanup(func() {
		all := e.logs.String() + e.bodies.String()
		for _, ev := range e.events(schemas.StreamAudit) {
			all += string(ev.Data)
		}
		for _, s := range extraSecrets {
			require.NotContains(t, all, s, "a credential leaked")
		}
	})
	return e
}

// nothingQueued asserts no request and no audit record of any tenant.
func (e *env) nothingQueued() {
	e.t.Helper()
	require.Empty(e.t, e.rotations(), "no rotation queued")
	require.Empty(e.t, e.revocations(), "no revocation queued")
	require.Empty(e.t, e.audits(), "no audit record")
}
