package awsevents_test

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/schemas"
)

// TestCanaryGetSecretValue: a CloudTrail GetSecretValue of a canary
// (acme/db-password here), arriving through EventBridge and SQS from an
// unexpected principal, is published as a leak report of the canary (the
// leak trigger then trips acme's kill switch: triggers/leak); the same
// read by a principal in canary_readers, and a read of a secret that is
// not a canary, report nothing and request nothing.
func TestCanaryGetSecretValue(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	require.NoError(t, e.bus.EnsureLeakStreams(ctx, []string{"acme", "globex"}))
	e.cfg.CanaryReaders = []string{"arn:aws:sts::*:assumed-role/canary-audit/*"}
	acme := e.rekey.Tenants["acme"]
	sc := acme.Secrets["db-password"]
	sc.Policy.Canary = true
	acme.Secrets["db-password"] = sc
	e.start()

	read := string(e.fixture("get_secret_value"))
	allowed := strings.ReplaceAll(read, "assumed-role/acme-agents/i-0abc", "assumed-role/canary-audit/check")
	notCanary := strings.ReplaceAll(read, `"secretId": "acme/db-password"`, `"secretId": "acme/openai-key"`)
	e.putEvent([]byte(allowed))
	e.putEvent([]byte(notCanary))
	e.waitHandled(2)
	require.Empty(t, testutil.StreamMessages(t, e.bus.JS, schemas.LeakStream("acme")))

	e.putEvent([]byte(read))
	e.waitHandled(3)
	msgs := testutil.StreamMessages(t, e.bus.JS, schemas.LeakStream("acme"))
	require.Len(t, msgs, 1)
	require.Equal(t, schemas.LeakSubject("acme", "db-password"), msgs[0].Subject)
	ev, err := schemas.Decode(msgs[0].Data)
	require.NoError(t, err)
	var r schemas.LeakReport
	require.NoError(t, ev.DecodeData(schemas.TypeLeakReport, &r))
	require.NoError(t, r.Validate())
	require.Equal(t, "acme", r.Tenant)
	require.Equal(t, "aws-cloudtrail", r.Agent)
	require.Contains(t, r.Where, "assumed-role/acme-agents/i-0abc")
	require.Empty(t, testutil.StreamMessages(t, e.bus.JS, schemas.LeakStream("globex")))
	rots, _ := e.rotations()
	revs, _ := e.revocations()
	require.Empty(t, rots, "the trigger itself requests nothing: the leak trigger decides")
	require.Empty(t, revs)
	var canary int
	for _, a := range e.auditsOf("acme", "aws.event") {
		if a.Detail["canary"] == "true" {
			canary++
			require.Equal(t, "arn:aws:sts::"+strings.Split(a.Detail["principal"], ":")[4]+":assumed-role/acme-agents/i-0abc", a.Detail["principal"])
		}
	}
	require.Equal(t, 1, canary)
}
