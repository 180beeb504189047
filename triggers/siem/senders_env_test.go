package siem_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/siem"
	"github.com/rekey-dev/rekey/triggers/triggertest"
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

	te := triggertest.Start(t, triggertest.Options{Name: "siem-test"})
	e := &env{Env: te, t: t, bus: te.Bus, rekey: &rekey, cfg: cfg, logs: te.Logs, bodies: te.Replies}
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
