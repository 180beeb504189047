package schemas

// Stream names. Each stream's subjects and retention are described in
// DESIGN.md and created by orchestrator.Bus.
const (
	StreamRotate     = "REKEY_ROTATE"
	StreamRevoke     = "REKEY_REVOKE"
	StreamUsage      = "REKEY_USAGE"
	StreamInvalidate = "REKEY_INVALIDATE"
	StreamEvents     = "REKEY_EVENTS"
	StreamAudit      = "REKEY_AUDIT"
)

// Subject prefixes and wildcards.
const (
	SubjectRotateAll     = "rekey.rotate.*.*"
	SubjectRevokeAll     = "rekey.revoke.*"
	SubjectUsedAll       = "rekey.used.*.*.*"
	SubjectInvalidateAll = "rekey.invalidate.*.*"
	SubjectAckAll        = "rekey.ack.*.*.*"
	SubjectEventsAll     = "rekey.events.*.*"
	SubjectAuditAll      = "rekey.audit.*"
	SubjectFetchAll      = "rekey.fetch.*.*"
	SubjectPresenceAll   = "rekey.presence.*.*"
	SubjectResyncAll     = "rekey.resync.*.*"
	SubjectLeakAll       = "rekey.leak.*.*"
)

// TenantToken is the secret token used on invalidation subjects for news
// about the whole tenant (revoked, restored). It starts with '_', which no
// valid secret ID can, so it never collides with a secret.
const TenantToken = "_tenant"

// Event kinds used as the last token of rekey.events.<t>.<kind>.
const (
	KindRotationCompleted     = "rotation_completed"
	KindRotationFailed        = "rotation_failed"
	KindRevocationStarted     = "revocation_started"
	KindRevocationCompleted   = "revocation_completed"
	KindTenantRestored        = "tenant_restored"
	KindInvalidationConfirmed = "invalidation_confirmed"
	KindExternalChange        = "external_change"
	KindRevocationProgress    = "revocation_progress"
)

// RotateSubject is where rotation requests for one secret are published.
func RotateSubject(tenant, secret string) string { return "rekey.rotate." + tenant + "." + secret }

// RevokeSubject is where revocation (and restore) requests for a tenant go.
func RevokeSubject(tenant string) string { return "rekey.revoke." + tenant }

// UsedSubject carries one agent instance's batched use reports for one
// secret. The instance is a subject token so that NATS permissions can let
// an agent publish under its own name only; rekey reads the instance from
// the subject, never from the body.
func UsedSubject(tenant, secret, instance string) string {
	return "rekey.used." + tenant + "." + secret + "." + instance
}

// UsageStream is the stream of one tenant's use reports. Each tenant has
// its own (StreamUsage was shared by all before): one tenant's flood fills
// only its own ingest queue and its own storage limit.
func UsageStream(tenant string) string { return StreamUsage + "_" + tenant }

// UsedTenantSubject matches every use report of one tenant.
func UsedTenantSubject(tenant string) string { return "rekey.used." + tenant + ".*.*" }

// InvalidateSubject carries invalidations for one secret. Use TenantToken as
// the secret for tenant-wide news.
func InvalidateSubject(tenant, secret string) string {
	return "rekey.invalidate." + tenant + "." + secret
}

// InvalidateTenantSubject matches every invalidation of one tenant.
func InvalidateTenantSubject(tenant string) string { return "rekey.invalidate." + tenant + ".>" }

// AckSubject is where an agent instance confirms it dropped a secret's old
// value (TenantToken as the secret for tenant-wide news).
func AckSubject(tenant, secret, instance string) string {
	return "rekey.ack." + tenant + "." + secret + "." + instance
}

// EventsSubject carries lifecycle events of one kind for a tenant.
func EventsSubject(tenant, kind string) string { return "rekey.events." + tenant + "." + kind }

// AuditSubject carries the audit trail of one tenant.
func AuditSubject(tenant string) string { return "rekey.audit." + tenant }

// FetchSubject is the request/reply subject on which a backend that keeps
// values inside rekey (the local backend) serves them to the tenant's agents.
func FetchSubject(tenant, secret string) string { return "rekey.fetch." + tenant + "." + secret }

// ResyncSubject is the request/reply subject on which a tenant's agents ask
// rekeyd for the last invalidation of one of the tenant's invalidation
// subjects (token: a secret ID or TenantToken). Agents never use the
// JetStream API themselves: JetStream answers any reply subject a caller
// names, with the server's own rights.
func ResyncSubject(tenant, token string) string { return "rekey.resync." + tenant + "." + token }

// LeakSubject is where an agent reports that a value of one of its
// tenant's secrets appeared in its output (a LeakReport; never the value).
// Agents may publish on their own tenant's leak subjects only.
func LeakSubject(tenant, secret string) string { return "rekey.leak." + tenant + "." + secret }

// LeakStream is the stream of one tenant's leak reports: one per tenant,
// so that one tenant's agents flooding reports fill only their own.
func LeakStream(tenant string) string { return "REKEY_LEAK_" + tenant }

// LeakTenantSubject matches every leak report of one tenant.
func LeakTenantSubject(tenant string) string { return "rekey.leak." + tenant + ".*" }

// PresenceSubject carries the heartbeats of one agent instance.
func PresenceSubject(tenant, instance string) string {
	return "rekey.presence." + tenant + "." + instance
}

// AgentInboxPrefix is the reply-subject prefix of a tenant's agents. Agents
// connect with it (nats.CustomInboxPrefix) so that the per-tenant NATS
// permissions can let them subscribe to their own replies only.
func AgentInboxPrefix(tenant string) string { return "_INBOX_" + tenant }

// InstanceInboxPrefix is the reply-subject prefix of one agent instance:
// with a per-instance identity an agent may subscribe to its own replies
// only. It lies under AgentInboxPrefix, so responders that check the
// tenant's prefix accept it.
func InstanceInboxPrefix(tenant, instance string) string {
	return AgentInboxPrefix(tenant) + "." + instance
}

// ReplyAllowed reports whether reply is an inbox of tenant's agents: the
// only subjects a responder serving tenant's agents may publish to. NATS
// does not check a requester's reply subject against its permissions, so a
// responder that replied anywhere would publish, with its own rights, on a
// subject its caller chose.
func ReplyAllowed(tenant, reply string) bool {
	prefix := AgentInboxPrefix(tenant) + "."
	if len(reply) <= len(prefix) || reply[:len(prefix)] != prefix {
		return false
	}
	for i := len(prefix); i < len(reply); i++ {
		switch c := reply[i]; {
		case c == '*' || c == '>' || c <= ' ' || c == 0x7f:
			return false
		case c == '.' && (i == len(prefix) || reply[i-1] == '.' || i == len(reply)-1):
			return false // empty token
		}
	}
	return true
}

// HeaderAckDelay, on an invalidation, is how long fanout asks each agent
// to hold its ack back, in whole milliseconds: about as long as
// delivering the invalidation to all of the tenant's live agents takes,
// so that their acks do not compete with that delivery for the NATS
// server's and the hosts' CPU. An agent waits the longer of it and its
// own ack delay, plus up to half again at random, and never more than
// MaxAckDelayMS. Absent: the agent's own ack delay.
const HeaderAckDelay = "Rekey-Ack-Delay"

// MaxAckDelayMS bounds the HeaderAckDelay an agent honours.
const MaxAckDelayMS = 10000
