package schemas_test

import (
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/schemas"
)

func TestSubjects(t *testing.T) {
	tests := []struct {
		got, want, all string
	}{
		{schemas.RotateSubject("acme", "openai-key"), "rekey.rotate.acme.openai-key", schemas.SubjectRotateAll},
		{schemas.RevokeSubject("acme"), "rekey.revoke.acme", schemas.SubjectRevokeAll},
		{schemas.UsedSubject("acme", "openai-key", "planner-1"), "rekey.used.acme.openai-key.planner-1", schemas.SubjectUsedAll},
		{schemas.InvalidateSubject("acme", "openai-key"), "rekey.invalidate.acme.openai-key", schemas.SubjectInvalidateAll},
		{schemas.InvalidateSubject("acme", schemas.TenantToken), "rekey.invalidate.acme._tenant", schemas.SubjectInvalidateAll},
		{schemas.AckSubject("acme", "openai-key", "planner-1"), "rekey.ack.acme.openai-key.planner-1", schemas.SubjectAckAll},
		{schemas.AckSubject("acme", schemas.TenantToken, "planner-1"), "rekey.ack.acme._tenant.planner-1", schemas.SubjectAckAll},
		{schemas.PresenceSubject("acme", "planner-1"), "rekey.presence.acme.planner-1", schemas.SubjectPresenceAll},
		{schemas.EventsSubject("acme", schemas.KindRotationCompleted), "rekey.events.acme.rotation_completed", schemas.SubjectEventsAll},
		{schemas.EventsSubject("acme", schemas.KindRotationFailed), "rekey.events.acme.rotation_failed", schemas.SubjectEventsAll},
		{schemas.EventsSubject("acme", schemas.KindRevocationStarted), "rekey.events.acme.revocation_started", schemas.SubjectEventsAll},
		{schemas.EventsSubject("acme", schemas.KindRevocationCompleted), "rekey.events.acme.revocation_completed", schemas.SubjectEventsAll},
		{schemas.EventsSubject("acme", schemas.KindTenantRestored), "rekey.events.acme.tenant_restored", schemas.SubjectEventsAll},
		{schemas.AuditSubject("acme"), "rekey.audit.acme", schemas.SubjectAuditAll},
		{schemas.FetchSubject("acme", "openai-key"), "rekey.fetch.acme.openai-key", schemas.SubjectFetchAll},
		{schemas.InvalidateTenantSubject("acme"), "rekey.invalidate.acme.>", ""},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			require.Equal(t, tt.want, tt.got)
			if tt.all != "" {
				require.True(t, subjectMatches(tt.all, tt.got), "%s does not match %s", tt.got, tt.all)
			}
		})
	}

	// An agent subscribed to its own tenant gets both its secrets' and the
	// tenant-wide invalidations, and nothing of another tenant.
	own := schemas.InvalidateTenantSubject("acme")
	require.True(t, subjectMatches(own, schemas.InvalidateSubject("acme", "openai-key")))
	require.True(t, subjectMatches(own, schemas.InvalidateSubject("acme", schemas.TenantToken)))
	require.False(t, subjectMatches(own, schemas.InvalidateSubject("acme2", "openai-key")))
	require.False(t, subjectMatches(own, schemas.InvalidateSubject("globex", "openai-key")))
}

func TestReplyAllowed(t *testing.T) {
	tests := []struct {
		reply string
		ok    bool
	}{
		{"_INBOX_acme.abc.1", true},
		{schemas.InstanceInboxPrefix("acme", "planner-1") + ".x.y", true},
		{"_INBOX_acme.", false},
		{"_INBOX_acme", false},
		{"_INBOX_acme2.abc", false},
		{"_INBOX_globex.abc", false},
		{"_INBOX.abc", false},
		{"$KV.rekey_tenants.acme", false},
		{"rekey.invalidate.globex.openai-key", false},
		{"_INBOX_acme.a..b", false},
		{"_INBOX_acme.a.*", false},
		{"_INBOX_acme.>", false},
		{"_INBOX_acme.a b", false},
		{"_INBOX_acme.a.", false},
		{"", false},
	}
	for _, tt := range tests {
		require.Equal(t, tt.ok, schemas.ReplyAllowed("acme", tt.reply), "%q", tt.reply)
	}
}

func TestValidateInstance(t *testing.T) {
	for _, ok := range []string{"a", "planner-1", "Pod_7", strings.Repeat("x", 128)} {
		require.NoError(t, schemas.ValidateInstance(ok), ok)
	}
	for _, bad := range []string{"", "-a", "a.b", "a*", "a>", "a b", strings.Repeat("x", 129), "é"} {
		require.ErrorIs(t, schemas.ValidateInstance(bad), schemas.ErrInvalidID, bad)
	}
}

func TestSubjectTokens(t *testing.T) {
	// TenantToken is a subject token that no secret ID can be.
	require.ErrorIs(t, schemas.ValidateID("secret", schemas.TenantToken), schemas.ErrInvalidID)
	requireToken(t, schemas.TenantToken)
	for _, kind := range []string{
		schemas.KindRotationCompleted, schemas.KindRotationFailed, schemas.KindRevocationStarted,
		schemas.KindRevocationCompleted, schemas.KindTenantRestored,
	} {
		requireToken(t, kind)
	}
	streamName := regexp.MustCompile(`^[A-Z][A-Z0-9_]*$`)
	seen := map[string]bool{}
	for _, s := range []string{
		schemas.StreamRotate, schemas.StreamRevoke, schemas.StreamUsage,
		schemas.StreamInvalidate, schemas.StreamEvents, schemas.StreamAudit,
	} {
		require.Regexp(t, streamName, s)
		require.False(t, seen[s], "stream %s named twice", s)
		seen[s] = true
	}
}

func requireToken(t *testing.T, tok string) {
	t.Helper()
	require.NotEmpty(t, tok)
	require.False(t, strings.ContainsAny(tok, ".*> \t\r\n"), "%q is not a safe subject token", tok)
}

// subjectMatches is NATS subject matching: '*' matches one token, '>' one
// or more trailing tokens.
func subjectMatches(pattern, subject string) bool {
	p := strings.Split(pattern, ".")
	s := strings.Split(subject, ".")
	for i, tok := range p {
		switch {
		case tok == ">":
			return len(s) > i
		case i >= len(s):
			return false
		case tok != "*" && tok != s[i]:
			return false
		}
	}
	return len(p) == len(s)
}
