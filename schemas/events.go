package schemas

import (
	"fmt"
	"slices"
	"time"
)

// Trigger says what asked for a rotation or revocation. Kind is the trigger
// family; Source the configured instance (a webhook source name, "cron");
// Actor the identity behind it (an admin token id, a tenant token id, an
// alert fingerprint, a schedule tick). None of them is ever a secret value.
type Trigger struct {
	Kind   string `json:"kind"`
	Source string `json:"source,omitempty"`
	Actor  string `json:"actor,omitempty"`
}

// Trigger kinds.
const (
	TriggerAPI      = "api"
	TriggerCLI      = "cli"
	TriggerCron     = "cron"
	TriggerSIEM     = "siem"
	TriggerUsage    = "usage"
	TriggerTenant   = "tenant"
	TriggerAWS      = "aws"
	TriggerVault    = "vault"
	TriggerRevoke   = "revocation"
	TriggerInternal = "internal"
	// TriggerLeak: a leak report (fanout/agent's leak guard) or another
	// sign that a canary secret was used.
	TriggerLeak = "leak"
)

// Validate checks the trigger kind is set.
func (t Trigger) Validate() error {
	if t.Kind == "" {
		return fmt.Errorf("trigger.kind is empty: %w", ErrMalformed)
	}
	return nil
}

// RotationRequested asks for one secret to be rotated. The request ID is the
// CloudEvent ID of the envelope carrying it.
type RotationRequested struct {
	Tenant  string  `json:"tenant"`
	Secret  string  `json:"secret"`
	Reason  string  `json:"reason"`
	Trigger Trigger `json:"trigger"`
	// Mode is RotateModeRotate (empty means the same) or RotateModeSync.
	Mode        string    `json:"mode,omitempty"`
	RequestedAt time.Time `json:"requested_at"`
}

// Rotation request modes.
const (
	// RotateModeRotate: make a new version through the backend.
	RotateModeRotate = "rotate"
	// RotateModeSync: the backend's live version changed outside rekey (AWS
	// rotated it itself, someone called PutSecretValue); record the backend's
	// current version and invalidate agents if it differs. Nothing is written
	// to the backend.
	RotateModeSync = "sync"
)

// Validate checks the IDs, the mode and the trigger.
func (r RotationRequested) Validate() error {
	if err := ValidateRef(r.Tenant, r.Secret); err != nil {
		return err
	}
	if r.Mode != "" {
		if err := oneOf("mode", r.Mode, RotateModeRotate, RotateModeSync); err != nil {
			return err
		}
	}
	return r.Trigger.Validate()
}

// RotationCompleted reports a promoted new version.
type RotationCompleted struct {
	Tenant          string   `json:"tenant"`
	Secret          string   `json:"secret"`
	Backend         string   `json:"backend"`
	Version         string   `json:"version"`
	PreviousVersion string   `json:"previous_version,omitempty"`
	RequestID       string   `json:"request_id"`
	Coalesced       []string `json:"coalesced,omitempty"`
	Reason          string   `json:"reason"`
	Trigger         Trigger  `json:"trigger"`
	// Mode is RotateModeSync when the version was made outside rekey and
	// only recorded; empty for rekey's own rotations.
	Mode        string    `json:"mode,omitempty"`
	Attempts    int       `json:"attempts"`
	StartedAt   time.Time `json:"started_at"`
	CompletedAt time.Time `json:"completed_at"`
}

// Validate checks the IDs and the version.
func (r RotationCompleted) Validate() error {
	if err := ValidateRef(r.Tenant, r.Secret); err != nil {
		return err
	}
	if r.Version == "" {
		return fmt.Errorf("version is empty: %w", ErrMalformed)
	}
	return nil
}

// RotationFailed reports a rotation given up after its last attempt. Nothing
// was promoted and any staged version was rolled back.
type RotationFailed struct {
	Tenant    string    `json:"tenant"`
	Secret    string    `json:"secret"`
	Backend   string    `json:"backend"`
	RequestID string    `json:"request_id"`
	Step      string    `json:"step"`
	Error     string    `json:"error"`
	Permanent bool      `json:"permanent"`
	Attempts  int       `json:"attempts"`
	Trigger   Trigger   `json:"trigger"`
	FailedAt  time.Time `json:"failed_at"`
}

// Validate checks the IDs.
func (r RotationFailed) Validate() error { return ValidateRef(r.Tenant, r.Secret) }

// Revocation actions.
const (
	ActionRevoke  = "revoke"
	ActionRestore = "restore"
)

// RevocationRequested asks for every credential of a tenant to be revoked
// (Action "revoke"), or for a revocation to be lifted (Action "restore").
type RevocationRequested struct {
	Tenant      string    `json:"tenant"`
	Action      string    `json:"action"`
	Reason      string    `json:"reason"`
	Trigger     Trigger   `json:"trigger"`
	RequestedAt time.Time `json:"requested_at"`
}

// Validate checks the tenant, the action and the trigger.
func (r RevocationRequested) Validate() error {
	if err := ValidateID("tenant", r.Tenant); err != nil {
		return err
	}
	if err := oneOf("action", r.Action, ActionRevoke, ActionRestore); err != nil {
		return err
	}
	return r.Trigger.Validate()
}

// RevocationStarted is published as soon as a tenant is marked revoked,
// before any backend work, so that fanout can fail every agent closed.
type RevocationStarted struct {
	Tenant    string    `json:"tenant"`
	RequestID string    `json:"request_id"`
	Reason    string    `json:"reason"`
	Trigger   Trigger   `json:"trigger"`
	StartedAt time.Time `json:"started_at"`
}

// Validate checks the tenant.
func (r RevocationStarted) Validate() error { return ValidateID("tenant", r.Tenant) }

// PartReport is one part of a revocation (a backend's leases, the tenant's
// static secrets...).
type PartReport struct {
	Part      string `json:"part"`
	Succeeded int    `json:"succeeded"`
	Failed    int    `json:"failed"`
	// Retried counts items of the part that needed more than one round.
	Retried    int      `json:"retried,omitempty"`
	Errors     []string `json:"errors,omitempty"`
	DurationMS float64  `json:"duration_ms"`
}

// RevocationProgress reports one item of a revocation (a secret rotated, a
// backend's leases revoked) as it ends or is about to be retried, so that
// `rekeyctl revoke --wait` can show progress.
type RevocationProgress struct {
	Tenant    string `json:"tenant"`
	RequestID string `json:"request_id"`
	// Part is the report part the item counts in, e.g. "vault.leases".
	Part string `json:"part"`
	// Item is the secret ID, or the backend name for a tenant-wide part.
	Item string `json:"item"`
	// Outcome is OutcomeSucceeded, OutcomeFailed (given up) or OutcomeRetrying.
	Outcome string `json:"outcome"`
	Attempt int    `json:"attempt"`
	// Count is how many credentials the item covered (leases revoked).
	Count int    `json:"count,omitempty"`
	Error string `json:"error,omitempty"`
	// Done and Total count items ended so far and in all; Failed those given up.
	Done      int     `json:"done"`
	Total     int     `json:"total"`
	Failed    int     `json:"failed"`
	ElapsedMS float64 `json:"elapsed_ms"`
}

// Validate checks the tenant and the counts.
func (r RevocationProgress) Validate() error {
	if err := ValidateID("tenant", r.Tenant); err != nil {
		return err
	}
	if err := oneOf("outcome", r.Outcome, OutcomeSucceeded, OutcomeFailed, OutcomeRetrying); err != nil {
		return err
	}
	if r.Done < 0 || r.Total < 0 || r.Failed < 0 || r.Done > r.Total {
		return fmt.Errorf("counts out of range: %w", ErrMalformed)
	}
	return nil
}

// RevocationCompleted reports the end of a revocation, with what was done.
type RevocationCompleted struct {
	Tenant      string       `json:"tenant"`
	RequestID   string       `json:"request_id"`
	Parts       []PartReport `json:"parts"`
	Failed      bool         `json:"failed"`
	StartedAt   time.Time    `json:"started_at"`
	CompletedAt time.Time    `json:"completed_at"`
}

// Validate checks the tenant.
func (r RevocationCompleted) Validate() error { return ValidateID("tenant", r.Tenant) }

// TenantRestored reports a lifted revocation.
type TenantRestored struct {
	Tenant     string    `json:"tenant"`
	RequestID  string    `json:"request_id"`
	Trigger    Trigger   `json:"trigger"`
	RestoredAt time.Time `json:"restored_at"`
}

// Validate checks the tenant.
func (r TenantRestored) Validate() error { return ValidateID("tenant", r.Tenant) }

// Invalidation kinds.
const (
	InvalidationRotated  = "rotated"
	InvalidationRevoked  = "revoked"
	InvalidationRestored = "restored"
)

// Invalidation tells agents to drop a cached secret (Kind "rotated", Secret
// set) or that the whole tenant is revoked or restored (Secret empty, sent
// on the TenantToken subject). It never carries a value.
type Invalidation struct {
	Tenant      string    `json:"tenant"`
	Secret      string    `json:"secret,omitempty"`
	Kind        string    `json:"kind"`
	Version     string    `json:"version,omitempty"`
	Reason      string    `json:"reason,omitempty"`
	RequestID   string    `json:"request_id"`
	PublishedAt time.Time `json:"published_at"`
}

// Validate checks the IDs and the kind.
func (r Invalidation) Validate() error {
	if err := ValidateID("tenant", r.Tenant); err != nil {
		return err
	}
	switch r.Kind {
	case InvalidationRotated:
		return ValidateID("secret", r.Secret)
	case InvalidationRevoked, InvalidationRestored:
		if r.Secret != "" {
			return ValidateID("secret", r.Secret)
		}
		return nil
	default:
		return fmt.Errorf("kind %q is not rotated, revoked or restored: %w", r.Kind, ErrMalformed)
	}
}

// InvalidationAck is an agent's confirmation that it dropped a stale value.
type InvalidationAck struct {
	Tenant     string    `json:"tenant"`
	Secret     string    `json:"secret,omitempty"`
	Agent      string    `json:"agent"`
	Version    string    `json:"version,omitempty"`
	RequestID  string    `json:"request_id"`
	ReceivedAt time.Time `json:"received_at"`
	DroppedAt  time.Time `json:"dropped_at"`
}

// Validate checks the IDs and the agent.
func (r InvalidationAck) Validate() error {
	if err := ValidateID("tenant", r.Tenant); err != nil {
		return err
	}
	if r.Secret != "" {
		if err := ValidateID("secret", r.Secret); err != nil {
			return err
		}
	}
	if err := ValidateInstance(r.Agent); err != nil {
		return fmt.Errorf("agent: %w: %w", err, ErrMalformed)
	}
	if len(r.RequestID) > MaxAgentFieldLen || len(r.Version) > MaxAgentFieldLen {
		return fmt.Errorf("request_id and version must be at most %d bytes: %w", MaxAgentFieldLen, ErrMalformed)
	}
	return nil
}

// MaxAgentFieldLen bounds the free-text fields an agent sends (request
// ids, versions and tool names in acks, heartbeats and use reports).
const MaxAgentFieldLen = 256

// UsageReport counts an agent's uses of one secret version over a window.
type UsageReport struct {
	Tenant  string `json:"tenant"`
	Secret  string `json:"secret"`
	Version string `json:"version"`
	Agent   string `json:"agent"`
	Tool    string `json:"tool,omitempty"`
	// Run is the pipeline run the uses belong to, if the reader said.
	Run         string    `json:"run,omitempty"`
	Count       int64     `json:"count"`
	WindowStart time.Time `json:"window_start"`
	WindowEnd   time.Time `json:"window_end"`
}

// Validate checks the IDs and the count.
func (r UsageReport) Validate() error {
	if err := ValidateRef(r.Tenant, r.Secret); err != nil {
		return err
	}
	if err := ValidateInstance(r.Agent); err != nil {
		return fmt.Errorf("agent: %w: %w", err, ErrMalformed)
	}
	if r.Count < 1 {
		return fmt.Errorf("count %d must be positive: %w", r.Count, ErrMalformed)
	}
	if len(r.Tool) > MaxAgentFieldLen || len(r.Run) > MaxAgentFieldLen {
		return fmt.Errorf("tool and run must be at most %d bytes: %w", MaxAgentFieldLen, ErrMalformed)
	}
	return nil
}

// Audit outcomes.
const (
	OutcomeAccepted    = "accepted"
	OutcomeCoalesced   = "coalesced"
	OutcomeRefused     = "refused"
	OutcomeRateLimited = "rate_limited"
	OutcomeSucceeded   = "succeeded"
	OutcomeFailed      = "failed"
	OutcomeRetrying    = "retrying"
	// OutcomeUnconfirmed: an outside event (AWS) that the provider's own
	// API does not confirm; nothing was done.
	OutcomeUnconfirmed = "unconfirmed"
)

// AuditRecord is one entry of the audit trail. Detail holds non-secret
// context (a version number, a step name, an error message).
type AuditRecord struct {
	Tenant    string            `json:"tenant"`
	Secret    string            `json:"secret,omitempty"`
	Actor     string            `json:"actor"`
	Action    string            `json:"action"`
	Outcome   string            `json:"outcome"`
	RequestID string            `json:"request_id,omitempty"`
	Component string            `json:"component"`
	Detail    map[string]string `json:"detail,omitempty"`
	// Acks lists the agents' acks an "invalidation.acks" record stands
	// for: fanout writes one record per burst of acks of one invalidation,
	// not one per agent.
	Acks []AuditAck `json:"acks,omitempty"`
	Time time.Time  `json:"time"`
}

// AuditAck is one agent's ack of an invalidation, inside an audit record.
type AuditAck struct {
	// Agent is the agent's instance id.
	Agent string `json:"agent"`
	// Tool is the tool name the agent reported, if any.
	Tool string `json:"tool,omitempty"`
	// DroppedAt is when the agent dropped the old value (its clock).
	DroppedAt time.Time `json:"dropped_at"`
	// AckMS is the time from the invalidation's publication to the
	// ack's arrival, as fanout measured it; 0 when unknown.
	AckMS float64 `json:"ack_ms,omitempty"`
}

// Validate checks the tenant and the required fields.
func (r AuditRecord) Validate() error {
	if err := ValidateID("tenant", r.Tenant); err != nil {
		return err
	}
	if r.Action == "" || r.Outcome == "" || r.Actor == "" {
		return fmt.Errorf("actor, action and outcome are required: %w", ErrMalformed)
	}
	return nil
}

// FetchRequest asks, on FetchSubject, for a secret's current value. Only
// backends that keep values inside rekey (local) answer it; agents of
// Vault or AWS secrets read those services directly.
type FetchRequest struct {
	Agent string `json:"agent,omitempty"`
}

// Fetch error codes.
const (
	FetchNotFound = "not_found"
	FetchRevoked  = "revoked"
	FetchInternal = "internal"
	FetchInvalid  = "invalid"
)

// FetchResponse is the reply to a FetchRequest: a version and its value, or
// an error code. It is the one message that carries a value; it is never an
// event, never stored in a stream and never logged.
//
// A reply names the tenant and secret it answers, so that an agent can
// check that a reply that reached its inbox is the one it asked for.
type FetchResponse struct {
	Tenant  string `json:"tenant,omitempty"`
	Secret  string `json:"secret,omitempty"`
	Version string `json:"version,omitempty"`
	Value   []byte `json:"value,omitempty"`
	Code    string `json:"code,omitempty"`
	Error   string `json:"error,omitempty"`
}

// AgentPresence is an agent's heartbeat on PresenceSubject: rekey waits for
// acks only from agents it heard from recently. Leaving is set by an agent
// that is shutting down.
type AgentPresence struct {
	Tenant    string        `json:"tenant"`
	Agent     string        `json:"agent"`
	Tool      string        `json:"tool,omitempty"`
	StartedAt time.Time     `json:"started_at"`
	Interval  time.Duration `json:"interval_ns"`
	Leaving   bool          `json:"leaving,omitempty"`
}

// Validate checks the tenant, the agent and the interval.
func (r AgentPresence) Validate() error {
	if err := ValidateID("tenant", r.Tenant); err != nil {
		return err
	}
	if err := ValidateInstance(r.Agent); err != nil {
		return fmt.Errorf("agent: %w: %w", err, ErrMalformed)
	}
	if r.Interval <= 0 {
		return fmt.Errorf("interval_ns %d must be positive: %w", r.Interval, ErrMalformed)
	}
	if len(r.Tool) > MaxAgentFieldLen {
		return fmt.Errorf("tool must be at most %d bytes: %w", MaxAgentFieldLen, ErrMalformed)
	}
	return nil
}

// InvalidationConfirmed reports which live agents acked an invalidation:
// all of them (Complete) or those still missing when rekey stopped waiting.
type InvalidationConfirmed struct {
	Tenant      string    `json:"tenant"`
	Secret      string    `json:"secret,omitempty"`
	Kind        string    `json:"kind"`
	Version     string    `json:"version,omitempty"`
	RequestID   string    `json:"request_id"`
	PublishedAt time.Time `json:"published_at"`
	LiveAgents  int       `json:"live_agents"`
	Acked       int       `json:"acked"`
	Missing     []string  `json:"missing,omitempty"`
	// MissingCount and MissingTruncated are set when Missing lists only
	// the first of more agents (a confirmation stays far under the 1 MiB
	// message limit however many agents a tenant has).
	MissingCount     int  `json:"missing_count,omitempty"`
	MissingTruncated bool `json:"missing_truncated,omitempty"`
	Complete         bool `json:"complete"`
	// LastAckMS is the time from publication to the last live agent's ack.
	LastAckMS float64 `json:"last_ack_ms"`
}

// Validate checks the IDs and the counts.
func (r InvalidationConfirmed) Validate() error {
	if err := ValidateID("tenant", r.Tenant); err != nil {
		return err
	}
	if r.Secret != "" {
		if err := ValidateID("secret", r.Secret); err != nil {
			return err
		}
	}
	if r.Acked < 0 || r.LiveAgents < 0 {
		return fmt.Errorf("counts must not be negative: %w", ErrMalformed)
	}
	return nil
}

// ExternalChange reports a change to a secret that a backend's own event
// source observed (for AWS: an EventBridge event read from SQS), whether or
// not rekey made it. A delegated AWS rotation waits for the one that ends it.
// It never carries a value.
type ExternalChange struct {
	Tenant  string `json:"tenant"`
	Secret  string `json:"secret"`
	Backend string `json:"backend"`
	// Source is the event source, e.g. "aws.secretsmanager".
	Source string `json:"source"`
	// Event is the provider's event name: RotationSucceeded, RotationFailed,
	// PutSecretValue, UpdateSecretVersionStage, DeleteSecret...
	Event string `json:"event"`
	// Outcome is ExternalSucceeded, ExternalFailed or ExternalInfo.
	Outcome string `json:"outcome"`
	// ResourceID is the secret's ARN or name as the provider reported it.
	ResourceID string `json:"resource_id"`
	// VersionID is the provider's version id when the event names one.
	VersionID string `json:"version_id,omitempty"`
	// EventID is the provider's event id (EventBridge "id").
	EventID string `json:"event_id"`
	// Error is the provider's error message of a failed rotation.
	Error string `json:"error,omitempty"`
	// Deleted: the secret no longer exists in the backend (or is scheduled
	// for deletion and can no longer be read). Fanout then invalidates it
	// at every agent, which fails closed on its next read.
	Deleted    bool      `json:"deleted,omitempty"`
	EventTime  time.Time `json:"event_time"`
	ObservedAt time.Time `json:"observed_at"`
}

// External change outcomes.
const (
	ExternalSucceeded = "succeeded"
	ExternalFailed    = "failed"
	ExternalInfo      = "info"
)

// Validate checks the IDs and the required fields.
func (r ExternalChange) Validate() error {
	if err := ValidateRef(r.Tenant, r.Secret); err != nil {
		return err
	}
	if r.Backend == "" || r.Source == "" || r.Event == "" || r.ResourceID == "" || r.EventID == "" {
		return fmt.Errorf("backend, source, event, resource_id and event_id are required: %w", ErrMalformed)
	}
	return oneOf("outcome", r.Outcome, ExternalSucceeded, ExternalFailed, ExternalInfo)
}

// oneOf checks that the field's value is one of allowed.
func oneOf(field, value string, allowed ...string) error {
	if slices.Contains(allowed, value) {
		return nil
	}
	return fmt.Errorf("%s %q is not one of %q: %w", field, value, allowed, ErrMalformed)
}

// Encodings in which a leak guard finds a value (LeakReport.Encoding).
const (
	EncodingRaw       = "raw"
	EncodingBase64    = "base64"
	EncodingBase64URL = "base64url"
	EncodingHex       = "hex"
	EncodingURL       = "url"
)

// LeakReport says that an agent found a value of one of its tenant's
// secrets in its own output (type rekey.leak.report.v1, subject
// rekey.leak.<tenant>.<secret>). It names the version, never the value.
type LeakReport struct {
	Tenant  string `json:"tenant"`
	Secret  string `json:"secret"`
	Version string `json:"version"`
	// Agent is the reporting agent's instance id.
	Agent string `json:"agent"`
	Tool  string `json:"tool,omitempty"`
	// Run is the pipeline run the output belongs to, if the caller said.
	Run string `json:"run,omitempty"`
	// Where the value was found: "scan", "writer", "http:url",
	// "http:header", "http:body", or a caller's label.
	Where string `json:"where"`
	// Encoding is the form the value was found in (Encoding* constants).
	Encoding string `json:"encoding"`
	// Split is true when the value was found only once whitespace and
	// quotes were taken out of the text.
	Split bool `json:"split,omitempty"`
	// Count is how many times the version was found in that output.
	Count   int       `json:"count"`
	FoundAt time.Time `json:"found_at"`
}

// Validate checks the IDs, the agent and the bounded fields.
func (r LeakReport) Validate() error {
	if err := ValidateRef(r.Tenant, r.Secret); err != nil {
		return err
	}
	if err := ValidateInstance(r.Agent); err != nil {
		return fmt.Errorf("agent: %w: %w", err, ErrMalformed)
	}
	if r.Version == "" {
		return fmt.Errorf("version is required: %w", ErrMalformed)
	}
	if len(r.Version) > MaxAgentFieldLen || len(r.Tool) > MaxAgentFieldLen || len(r.Run) > MaxAgentFieldLen || len(r.Where) > MaxAgentFieldLen {
		return fmt.Errorf("version, tool, run and where must be at most %d bytes: %w", MaxAgentFieldLen, ErrMalformed)
	}
	if r.Count < 1 {
		return fmt.Errorf("count %d must be positive: %w", r.Count, ErrMalformed)
	}
	return oneOf("encoding", r.Encoding, EncodingRaw, EncodingBase64, EncodingBase64URL, EncodingHex, EncodingURL)
}
