// Package awsevents is the AWS trigger: it long-polls an SQS queue that an
// EventBridge rule feeds, and turns what AWS reports into rekey requests.
//
//   - A Secrets Manager event (through CloudTrail) about a secret the
//     SecretResolver knows becomes an external_change event on
//     rekey.events.<t>.external_change (succeeded, failed or info), and,
//     when the secret's live version (AWSCURRENT) changed outside rekey
//     (RotationSucceeded, PutSecretValue moving AWSCURRENT, an
//     UpdateSecretVersionStage of AWSCURRENT, UpdateSecret with a new
//     value, DeleteSecret), a rotation request in sync mode, so that rekey
//     records the backend's version and invalidates the agents.
//   - A GuardDuty finding that a configured rule maps to a tenant (by the
//     access key or principal it names, or by a resource tag) at or above
//     the rule's severity becomes a revocation request for that tenant.
//
// Events are hints: a Secrets Manager event acts only once Secrets
// Manager confirms it (confirm.go), and every identity it names (account,
// region, partition of the event and of the secret) must be the
// backend's; one AWS contradicts is audited as unconfirmed and changes
// nothing.
//
// Every id published is derived from the EventBridge event id, and every
// event id (and GuardDuty finding update) is remembered for dedup_window
// in KV bucket BucketDedup, so a message delivered twice (SQS is
// at-least-once), replayed, or re-sent by another replica causes no
// second rotation, revocation or invalidation. A message is deleted from the queue only after every
// publish and audit record was acknowledged by JetStream; when NATS is
// unavailable it stays and comes back after its visibility timeout. A
// message that cannot be parsed is never deleted: it is audited on every
// receive and the queue's redrive policy moves it to the dead-letter
// queue after maxReceiveCount receives. A well-formed message rekey does
// not act on (an unknown secret, a tenant outside the allow-list, a
// finding no rule maps, an event it does not read) is audited as refused
// and deleted.
//
// The Publisher goes the other way: it reads rekey's own lifecycle events
// from the EVENTS stream and puts them on an EventBridge bus.
//
// Neither calls a backend, and no event, record or log holds a secret
// value: CloudTrail and GuardDuty events carry none.
package awsevents

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rekey-dev/rekey/internal/retry"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/orchestrator/awsconf"
	"github.com/rekey-dev/rekey/schemas"
)

// Names this package puts in what it publishes.
const (
	// EventSource is the CloudEvents source of the events published.
	EventSource = "rekeyd/awsevents"
	// TriggerSource is Trigger.Source of the requests published.
	TriggerSource = "sqs"
	// Backend is ExternalChange.Backend of Secrets Manager changes.
	Backend = "awssm"
	// Component names the trigger in audit records and logs.
	Component = "awsevents"
)

// Outcomes of one SQS message, the "outcome" label of
// rekey_aws_messages_total.
const (
	OutcomePublished   = "published"   // requests or events published
	OutcomeDuplicate   = "duplicate"   // all of them were duplicates
	OutcomeRefused     = "refused"     // unknown secret, tenant not allowed, no rule: deleted
	OutcomeIgnored     = "ignored"     // an event rekey does not act on, a finding below severity: deleted
	OutcomeMalformed   = "malformed"   // not parsable: left for the redrive policy
	OutcomeUnavailable = "unavailable" // NATS did not acknowledge: left, received again later
	OutcomeUnconfirmed = "unconfirmed" // Secrets Manager does not confirm it: audited, deleted, nothing done
	OutcomeDeferred    = "deferred"    // Secrets Manager could not be asked: left until its visibility timeout
)

// SecretResolver maps a Secrets Manager secret, as an event names it (a
// name, a full or partial ARN), to the tenant and secret configured for
// it. The awssm backend's configuration implements it.
type SecretResolver interface {
	Lookup(secretID string) (tenant, secret string, ok bool)
}

// Trigger consumes the queue.
type Trigger struct {
	cfg      Config
	sqs      sqsAPI
	resolver SecretResolver
	bus      *orchestrator.Bus
	audit    *orchestrator.Auditor
	metrics  *orchestrator.Metrics
	log      *slog.Logger
	confirm  *confirmer
	dedup    *dedup // opened by Run
	rules    []rule // guardduty
	hubRules []rule // securityhub
	allowed  map[string]bool
	accounts map[string]bool
	received prometheus.Counter
	outcomes *prometheus.CounterVec // outcome
	rekey    *orchestrator.Config   // nil: no canaries
}

// isCanary reports whether tenant/secret is a canary (policy.canary):
// the trigger then reads CloudTrail GetSecretValue events of it, and a
// read by a principal not in canary_readers is published as a leak report
// of the secret on rekey.leak.<t>.<s> (Where "aws:GetSecretValue"), on
// which the leak trigger trips the tenant's kill switch. Without a
// configuration (deps.Rekey), GetSecretValue events are ignored.
func (t *Trigger) isCanary(tenant, secret string) bool {
	if t.rekey == nil {
		return false
	}
	sc, ok := t.rekey.Secret(tenant, secret)
	return ok && sc.Policy.Canary
}

// New validates cfg and builds the trigger and its SQS client (region and
// endpoint from cfg, credentials from the SDK's default chain). A
// disabled trigger needs none of its dependencies; its Run returns at once.
func New(cfg Config, resolver SecretResolver, deps orchestrator.Deps) (*Trigger, error) {
	cfg = cfg.withDefaults()
	if err := orchestrator.DecodeSection(Section, nil, &cfg); err != nil {
		return nil, err
	}
	if deps.Log == nil {
		deps.Log = slog.Default()
	}
	t := &Trigger{cfg: cfg, rekey: deps.Rekey, log: deps.Log.With("component", Component)}
	if !cfg.Enabled {
		return t, nil
	}
	if resolver == nil {
		return nil, errors.New("awsevents: the secret resolver is required")
	}
	if err := deps.Check("awsevents", "bus", "audit"); err != nil {
		return nil, err
	}
	metrics := deps.Metrics
	awsCfg, err := awsconf.Load(context.Background(), cmp.Or(cfg.Region, awsconf.RegionOf(cfg.QueueURL)), cfg.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", Section, err)
	}
	smRegion := cmp.Or(cfg.SecretsManager.Region, awsCfg.Region)
	smCfg, err := awsconf.Load(context.Background(), smRegion, cfg.SecretsManager.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("%s: secrets manager: %w", Section, err)
	}
	t.confirm = newConfirmer(secretsmanager.NewFromConfig(smCfg), smRegion, cfg.ConfirmTPS)
	t.sqs, t.resolver, t.bus, t.audit, t.metrics = sqs.NewFromConfig(awsCfg), resolver, deps.Bus, deps.Audit, metrics
	t.rules = compileRules(cfg.GuardDuty.Rules)
	t.hubRules = compileRules(cfg.SecurityHub.Rules)
	t.allowed, t.accounts = set(cfg.Tenants), set(cfg.Accounts)
	if t.received, err = orchestrator.Register(metrics, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "rekey_aws_messages_received_total", Help: "SQS messages received by the AWS trigger.",
	})); err != nil {
		return nil, err
	}
	if t.outcomes, err = orchestrator.Register(metrics, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rekey_aws_messages_total", Help: "SQS messages handled by the AWS trigger, by outcome.",
	}, []string{"outcome"})); err != nil {
		return nil, err
	}
	return t, nil
}

// Run polls the queue until ctx ends, then finishes the messages in hand
// and returns nil. SQS and NATS errors are logged and retried with backoff.
func (t *Trigger) Run(ctx context.Context) error {
	if !t.cfg.Enabled {
		t.log.Info("AWS trigger disabled")
		return nil
	}
	if err := t.start(ctx); err != nil {
		return err
	}
	in := &sqs.ReceiveMessageInput{
		QueueUrl:            aws.String(t.cfg.QueueURL),
		MaxNumberOfMessages: int32(t.cfg.MaxMessages),
		WaitTimeSeconds:     int32(t.cfg.WaitTime / time.Second),
		VisibilityTimeout:   int32(t.cfg.VisibilityTimeout / time.Second),
		MessageSystemAttributeNames: []sqstypes.MessageSystemAttributeName{
			sqstypes.MessageSystemAttributeNameApproximateReceiveCount,
		},
	}
	failures := 0 // in a row; 0 while all goes well
	for ctx.Err() == nil {
		// Receive nothing while NATS is away: every receive counts toward
		// the queue's maxReceiveCount, and good messages must not end up in
		// the dead-letter queue because of an outage here.
		if !t.bus.NC.IsConnected() {
			t.retryLater(ctx, &failures, "NATS not connected; not receiving")
			continue
		}
		out, err := t.sqs.ReceiveMessage(ctx, in)
		switch {
		case ctx.Err() != nil:
		case err != nil:
			t.retryLater(ctx, &failures, "receive from SQS failed; retrying", "queue", t.cfg.QueueURL, "error", err)
		default:
			if why := t.handleBatch(ctx, out.Messages); why != "" {
				t.retryLater(ctx, &failures, why)
			} else {
				failures = 0
			}
		}
	}
	t.log.Info("AWS trigger stopped")
	return nil
}

// retryLater counts one more failure in a row of an SQS or NATS call,
// logs msg and waits before the next attempt.
func (t *Trigger) retryLater(ctx context.Context, failures *int, msg string, args ...any) {
	*failures++
	delay := retry.Outage.Delay(*failures)
	t.log.Warn(msg, append(args, "retry_in", delay)...)
	retry.Sleep(ctx, delay)
}

// handleBatch handles the messages received together, deletes those that
// are done and releases the others. It says why it stopped early: when
// NATS was unavailable, the message that could not be published and those
// after it are released (made visible again) for a later receive, here or
// by another replica; when Secrets Manager could not confirm a message,
// that one is left in flight (it comes back after its visibility timeout,
// so that an outage does not spend its receives at once) and those after
// it are released.
func (t *Trigger) handleBatch(ctx context.Context, msgs []sqstypes.Message) string {
	// Messages in hand are finished even when ctx ends now.
	ctx = context.WithoutCancel(ctx)
	var done []sqstypes.Message
	rest, why := msgs, ""
	for len(rest) > 0 {
		if !t.bus.NC.IsConnected() {
			t.outcomes.WithLabelValues(OutcomeUnavailable).Add(float64(len(rest)))
			why = "NATS unavailable; messages left on the queue"
			break
		}
		m := rest[0]
		t.received.Inc()
		mctx, cancel := context.WithTimeout(ctx, messageTimeout)
		outcome := t.handle(mctx, m)
		cancel()
		t.outcomes.WithLabelValues(outcome).Inc()
		if outcome == OutcomeUnavailable {
			why = "NATS unavailable; messages left on the queue"
			break
		}
		rest = rest[1:]
		if outcome == OutcomeDeferred {
			why = "Secrets Manager could not confirm an event; it comes back after its visibility timeout"
			break
		}
		if outcome != OutcomeMalformed {
			done = append(done, m)
		}
	}
	dctx, cancel := context.WithTimeout(ctx, messageTimeout)
	defer cancel()
	t.delete(dctx, done)
	t.release(dctx, rest)
	return why
}

// messageTimeout bounds the handling of one message (its publishes and
// audit records), and the deletion of a batch.
const messageTimeout = 10 * time.Second

// delete deletes handled messages; one that is not deleted comes back and
// is then a duplicate.
func (t *Trigger) delete(ctx context.Context, msgs []sqstypes.Message) {
	if len(msgs) == 0 {
		return
	}
	out, err := t.sqs.DeleteMessageBatch(ctx, &sqs.DeleteMessageBatchInput{
		QueueUrl: aws.String(t.cfg.QueueURL),
		Entries: batch(msgs, func(id, handle *string) sqstypes.DeleteMessageBatchRequestEntry {
			return sqstypes.DeleteMessageBatchRequestEntry{Id: id, ReceiptHandle: handle}
		}),
	})
	if err != nil {
		t.log.Warn("handled messages not deleted; they will be received again as duplicates", "messages", len(msgs), "error", err)
		return
	}
	for _, f := range out.Failed {
		t.log.Warn("handled message not deleted; it will be received again as a duplicate",
			"code", aws.ToString(f.Code), "reason", aws.ToString(f.Message))
	}
}

// release makes messages that were received but not handled visible
// again at once; one not released comes back after its visibility timeout.
func (t *Trigger) release(ctx context.Context, msgs []sqstypes.Message) {
	if len(msgs) == 0 {
		return
	}
	if _, err := t.sqs.ChangeMessageVisibilityBatch(ctx, &sqs.ChangeMessageVisibilityBatchInput{
		QueueUrl: aws.String(t.cfg.QueueURL),
		Entries: batch(msgs, func(id, handle *string) sqstypes.ChangeMessageVisibilityBatchRequestEntry {
			return sqstypes.ChangeMessageVisibilityBatchRequestEntry{Id: id, ReceiptHandle: handle} // VisibilityTimeout 0
		}),
	}); err != nil {
		t.log.Debug("messages not released; they come back after their visibility timeout", "messages", len(msgs), "error", err)
	}
}

// batch makes the entries of a batch call, one per message.
func batch[E any](msgs []sqstypes.Message, entry func(id, receiptHandle *string) E) []E {
	out := make([]E, len(msgs))
	for i, m := range msgs {
		out[i] = entry(aws.String(strconv.Itoa(i)), m.ReceiptHandle)
	}
	return out
}

// delivery is one received message and what the audit trail says of it.
type delivery struct {
	msg Message
	// eventID is idToken(msg.ID): the EventBridge id as derived ids,
	// audit records and logs carry it.
	eventID  string
	sqsID    string
	receives string
	now      time.Time
}

func (d *delivery) actor() string { return "aws:" + TriggerSource + ":" + d.eventID }

func (d *delivery) trigger() schemas.Trigger {
	return schemas.Trigger{Kind: schemas.TriggerAWS, Source: TriggerSource, Actor: d.eventID}
}

// id derives a CloudEvents id (and Nats-Msg-Id) from the EventBridge id.
func (d *delivery) id(parts ...string) string {
	id := "aws-" + d.eventID
	for _, p := range parts {
		if p != "" {
			id += "-" + p
		}
	}
	return id
}

// detail is the audit detail every record about the delivery carries.
func (d *delivery) detail(extra map[string]string) map[string]string {
	out := map[string]string{
		"trigger": schemas.TriggerAWS, "source": TriggerSource, "event_id": d.eventID,
		"detail_type": clip(d.msg.DetailType, 128), "event_source": clip(d.msg.Source, 128),
		"message_id": d.sqsID, "receive_count": d.receives,
	}
	if d.msg.Account != "" {
		out["account"] = clip(d.msg.Account, 32)
	}
	for k, v := range extra {
		out[k] = v
	}
	return out
}

// handle decides one message's fate and returns its outcome.
func (t *Trigger) handle(ctx context.Context, m sqstypes.Message) string {
	sqsID := aws.ToString(m.MessageId)
	receives := m.Attributes[string(sqstypes.MessageSystemAttributeNameApproximateReceiveCount)]
	msg, err := ParseMessage([]byte(aws.ToString(m.Body)))
	if err != nil {
		t.malformed(ctx, sqsID, receives, err)
		return OutcomeMalformed
	}
	d := &delivery{msg: msg, eventID: idToken(msg.ID), sqsID: sqsID, receives: receives, now: time.Now().UTC()}
	keys := []string{eventKey(msg.ID)}
	if msg.Kind == KindGuardDuty || msg.Kind == KindSecurityHub {
		keys = append(keys, findingKey(msg.Finding.ID, msg.Finding.UpdatedAt))
	}
	switch seen, err := t.dedup.seen(ctx, d.now, keys...); {
	case err != nil:
		t.log.Warn("dedup bucket not readable; the message stays on the queue", "event_id", d.eventID, "error", err)
		return OutcomeUnavailable
	case seen:
		t.log.Info("AWS event already handled within dedup_window; deleted", "event_id", d.eventID,
			"detail_type", clip(msg.DetailType, 128), "receive_count", receives)
		return OutcomeDuplicate
	}
	var outcome string
	switch {
	case len(t.accounts) > 0 && !t.accounts[msg.Account]:
		outcome = t.refuse(ctx, d, OutcomeRefused, "", "", "account is not in "+Section+".accounts")
	case msg.Kind == KindSecretsManager:
		outcome = t.handleSecret(ctx, d)
	case msg.Kind == KindGuardDuty:
		outcome = t.handleFinding(ctx, d, t.rules)
	case msg.Kind == KindSecurityHub:
		outcome = t.handleFinding(ctx, d, t.hubRules)
	default:
		outcome = t.refuse(ctx, d, OutcomeIgnored, "", "", "not an event rekey acts on")
	}
	if outcome == OutcomeUnavailable || outcome == OutcomeDeferred {
		return outcome
	}
	// Handled: the same event again within the window is a duplicate.
	if err := t.dedup.record(ctx, d.eventID, keys...); err != nil {
		t.log.Warn("handled event not recorded; the message stays on the queue", "event_id", d.eventID, "error", err)
		return OutcomeUnavailable
	}
	return outcome
}

// malformed audits a message that cannot be parsed (once per receive:
// the record's id is derived from the message id and receive count) and
// leaves it on the queue.
func (t *Trigger) malformed(ctx context.Context, sqsID, receives string, err error) {
	reason := clip(err.Error(), 300)
	t.log.Warn("unparsable message left on the queue for its redrive policy", "message_id", sqsID, "receive_count", receives, "reason", reason)
	if t.cfg.AuditTenant == "" {
		return
	}
	msgID := idToken(sqsID)
	_ = t.audit.RecordWithID(ctx, "aws-msg-"+msgID+"-"+idToken(receives)+"-malformed", schemas.AuditRecord{
		Tenant: t.cfg.AuditTenant, Actor: "aws:" + TriggerSource + ":message/" + msgID, Action: "aws.event",
		Outcome: schemas.OutcomeRefused, Component: Component,
		Detail: map[string]string{
			"trigger": schemas.TriggerAWS, "source": TriggerSource, "message_id": sqsID, "receive_count": receives,
			"reason": reason, "kept": "true",
		},
	})
}

// refuse audits a message rekey does not act on, to tenant (or the audit
// tenant when empty), and returns outcome; the message is then deleted.
// It returns OutcomeUnavailable when the record could not be written.
func (t *Trigger) refuse(ctx context.Context, d *delivery, outcome, tenant, secret, reason string) string {
	t.log.Info("AWS event not acted on", "event_id", d.eventID, "detail_type", clip(d.msg.DetailType, 128),
		"tenant", tenant, "secret", secret, "reason", reason)
	rec := schemas.AuditRecord{Tenant: tenant, Secret: secret, Action: "aws.event", Outcome: schemas.OutcomeRefused,
		Detail: map[string]string{"reason": reason}}
	if err := t.record(ctx, d, d.id("refused", tenant, secret), rec); err != nil {
		return OutcomeUnavailable
	}
	return outcome
}

// record writes an audit record about the delivery with a derived id, to
// rec.Tenant or else the audit tenant; with neither it writes nothing.
func (t *Trigger) record(ctx context.Context, d *delivery, id string, rec schemas.AuditRecord) error {
	if rec.Tenant == "" {
		rec.Tenant, rec.Secret = t.cfg.AuditTenant, ""
	}
	if rec.Tenant == "" {
		return nil
	}
	rec.Actor, rec.Component, rec.Detail = d.actor(), Component, d.detail(rec.Detail)
	return t.audit.RecordWithID(ctx, id, rec)
}

// publish publishes one event with a derived id and reports whether
// JetStream already had it.
func (t *Trigger) publish(ctx context.Context, d *delivery, subject, typ, tenant, ceSubject, id string, data any) (bool, error) {
	ev, err := schemas.NewEvent(EventSource, typ, tenant, ceSubject, data)
	if err != nil {
		return false, err
	}
	ack, err := t.bus.Publish(ctx, subject, ev.WithID(id))
	if err != nil {
		t.log.Warn("not published; the message stays on the queue", "subject", subject, "id", id,
			"event_id", d.eventID, "error", err)
		return false, err
	}
	return ack.Duplicate, nil
}

// handleSecret handles a Secrets Manager event.
func (t *Trigger) handleSecret(ctx context.Context, d *delivery) string {
	s := d.msg.Secret
	tenant, secret, known := t.lookup(s)
	switch {
	case s.EventName == EventGetSecretValue && known && schemas.ValidateRef(tenant, secret) == nil &&
		(len(t.allowed) == 0 || t.allowed[tenant]) && t.isCanary(tenant, secret):
		return t.canaryRead(ctx, d, tenant, secret)
	case !s.Understood():
		// Audited to the secret's tenant when known (lookup gives "" when not).
		return t.refuse(ctx, d, OutcomeIgnored, tenant, secret, "Secrets Manager event "+clip(s.EventName, 64)+" is not one rekey acts on")
	case !known:
		return t.refuse(ctx, d, OutcomeRefused, "", "", fmt.Sprintf("secret %q is not a secret rekey manages", clip(s.SecretID, 256)))
	case schemas.ValidateRef(tenant, secret) != nil:
		return t.refuse(ctx, d, OutcomeRefused, "", "", "the secret resolver returned an invalid tenant or secret id")
	case len(t.allowed) > 0 && !t.allowed[tenant]:
		return t.refuse(ctx, d, OutcomeRefused, tenant, secret, "tenant is not in "+Section+".tenants")
	}
	name, reason := t.confirm.identify(d.msg, s)
	if reason != "" {
		return t.refuse(ctx, d, OutcomeRefused, tenant, secret, reason)
	}
	outcome, live := s.Change()
	var v verdict
	if live || outcome == schemas.ExternalFailed {
		cctx, cancel := context.WithTimeout(ctx, confirmTimeout)
		var err error
		v, err = t.confirm.confirm(cctx, d.msg, s, name)
		cancel()
		if err != nil {
			t.log.Warn("event not confirmed by Secrets Manager; it stays on the queue", "tenant", tenant, "secret", secret,
				"event_id", d.eventID, "event_name", s.EventName, "error", err)
			return OutcomeDeferred
		}
		if !v.confirmed {
			return t.unconfirmed(ctx, d, tenant, secret, v.reason)
		}
	}
	change := schemas.ExternalChange{
		Tenant: tenant, Secret: secret, Backend: Backend, Source: d.msg.Source, Event: s.EventName, Outcome: outcome,
		ResourceID: cmp.Or(s.ARN, s.SecretID), VersionID: s.VersionID, EventID: d.msg.ID,
		EventTime: firstTime(s.EventTime, d.msg.Time, d.now), ObservedAt: d.now,
	}
	if outcome == schemas.ExternalFailed {
		change.Error = clip(cmp.Or(s.ErrorMessage, s.ErrorCode), 512)
	}
	change.Deleted = s.EventName == EventDeleteSecret && s.ErrorCode == ""
	ref := tenant + "/" + secret
	changeID := d.id("change")
	dup, err := t.publish(ctx, d, schemas.EventsSubject(tenant, schemas.KindExternalChange), schemas.TypeExternalChange, tenant, ref, changeID, change)
	if err != nil {
		return OutcomeUnavailable
	}
	detail := map[string]string{"event_name": s.EventName, "outcome": outcome, "resource_id": clip(change.ResourceID, 256),
		"sync": strconv.FormatBool(live)}
	if s.VersionID != "" {
		detail["version_id"] = clip(s.VersionID, 128)
	}
	if v.confirmed {
		detail["confirmed"] = "true"
		if v.current != "" {
			detail["aws_current"] = clip(v.current, 128)
		}
	}
	if change.Error != "" {
		detail["error"] = change.Error
	}
	var syncID string
	if live {
		syncID = d.id("sync")
		req := schemas.RotationRequested{
			Tenant: tenant, Secret: secret, Reason: "aws " + s.EventName, Trigger: d.trigger(),
			Mode: schemas.RotateModeSync, RequestedAt: d.now,
		}
		syncDup, err := t.publish(ctx, d, schemas.RotateSubject(tenant, secret), schemas.TypeRotationRequested, tenant, ref, syncID, req)
		if err != nil {
			return OutcomeUnavailable
		}
		dup = dup && syncDup
		t.metrics.RequestsTotal.WithLabelValues("sync", requested(syncDup)).Inc()
	}
	if err := t.record(ctx, d, changeID+"-audit", schemas.AuditRecord{
		Tenant: tenant, Secret: secret, Action: "external_change", Outcome: auditOutcome(outcome), RequestID: changeID, Detail: detail,
	}); err != nil {
		return OutcomeUnavailable
	}
	if live {
		if err := t.record(ctx, d, syncID+"-audit", schemas.AuditRecord{
			Tenant: tenant, Secret: secret, Action: "rotation.request", Outcome: schemas.OutcomeAccepted, RequestID: syncID,
			Detail: map[string]string{"mode": schemas.RotateModeSync, "event_name": s.EventName},
		}); err != nil {
			return OutcomeUnavailable
		}
	}
	t.log.Info("external change", "tenant", tenant, "secret", secret, "event_name", s.EventName, "outcome", outcome,
		"sync", live, "request_id", syncID, "event_id", d.eventID, "duplicate", dup)
	if dup {
		return OutcomeDuplicate
	}
	return OutcomePublished
}

// unconfirmed audits an event that Secrets Manager does not confirm, to
// the secret's tenant; nothing else is done and the message is deleted.
func (t *Trigger) unconfirmed(ctx context.Context, d *delivery, tenant, secret, reason string) string {
	s := d.msg.Secret
	t.log.Warn("AWS event not confirmed by Secrets Manager; not acted on", "tenant", tenant, "secret", secret,
		"event_id", d.eventID, "event_name", clip(s.EventName, 64), "reason", reason)
	detail := map[string]string{"event_name": clip(s.EventName, 64), "reason": reason, "resource_id": clip(cmp.Or(s.ARN, s.SecretID), 256)}
	if s.VersionID != "" {
		detail["version_id"] = clip(s.VersionID, 128)
	}
	if err := t.record(ctx, d, d.id("unconfirmed"), schemas.AuditRecord{
		Tenant: tenant, Secret: secret, Action: "external_change", Outcome: schemas.OutcomeUnconfirmed, Detail: detail,
	}); err != nil {
		return OutcomeUnavailable
	}
	return OutcomeUnconfirmed
}

// lookup resolves the secret by the id the event names, then by its ARN.
// canaryRead handles a GetSecretValue of a canary secret: by a principal
// in canary_readers it is audited and ignored; by any other (or one
// CloudTrail does not name) it is a sign of a leak, published as a leak
// report (core NATS: the leak stream sends no acknowledgements; flushed
// before the message is deleted) and audited.
func (t *Trigger) canaryRead(ctx context.Context, d *delivery, tenant, secret string) string {
	s := d.msg.Secret
	principal := clip(s.Principal, 512)
	for _, p := range t.cfg.CanaryReaders {
		if ok, _ := path.Match(p, s.Principal); ok && s.Principal != "" && s.ErrorCode == "" {
			return t.refuse(ctx, d, OutcomeIgnored, tenant, secret, "canary read by "+principal+", one of "+Section+".canary_readers")
		}
	}
	// The version read, else this event: each read is its own sign.
	version := cmp.Or(s.VersionID, "aws-event-"+d.eventID)
	r := schemas.LeakReport{Tenant: tenant, Secret: secret, Version: clip(version, schemas.MaxAgentFieldLen),
		Agent: "aws-cloudtrail", Where: clip("aws:GetSecretValue by "+cmp.Or(principal, "an unnamed principal"), schemas.MaxAgentFieldLen),
		Encoding: schemas.EncodingRaw, Count: 1, FoundAt: d.now}
	ev, err := schemas.NewEvent(EventSource, schemas.TypeLeakReport, tenant, tenant+"/"+secret, r)
	if err != nil {
		return t.refuse(ctx, d, OutcomeRefused, tenant, secret, "leak report: "+clip(err.Error(), 200))
	}
	b, err := ev.WithID(d.id("canary", tenant, secret)).Encode()
	if err == nil {
		msg := &nats.Msg{Subject: schemas.LeakSubject(tenant, secret), Header: nats.Header{}, Data: b}
		msg.Header.Set(nats.MsgIdHdr, d.id("canary", tenant, secret))
		if err = t.bus.NC.PublishMsg(msg); err == nil {
			err = t.bus.NC.FlushWithContext(ctx)
		}
	}
	if err != nil {
		t.log.Warn("canary read not reported; the message stays on the queue", "tenant", tenant, "secret", secret,
			"event_id", d.eventID, "error", err)
		return OutcomeUnavailable
	}
	t.log.Warn("canary secret read by an unexpected principal; leak reported", "tenant", tenant, "secret", secret,
		"principal", principal, "event_id", d.eventID)
	rec := schemas.AuditRecord{Tenant: tenant, Secret: secret, Action: "aws.event", Outcome: schemas.OutcomeAccepted,
		Detail: map[string]string{"event_name": EventGetSecretValue, "principal": principal, "canary": "true",
			"leak_version": r.Version}}
	if err := t.record(ctx, d, d.id("canary-audit", tenant, secret), rec); err != nil {
		return OutcomeUnavailable
	}
	return OutcomePublished
}

func (t *Trigger) lookup(s *SecretEvent) (tenant, secret string, ok bool) {
	for _, id := range []string{s.SecretID, s.ARN} {
		if id == "" {
			continue
		}
		if tenant, secret, ok = t.resolver.Lookup(id); ok {
			return tenant, secret, true
		}
	}
	return "", "", false
}

// auditOutcome maps an external change outcome to an audit outcome.
func auditOutcome(external string) string {
	switch external {
	case schemas.ExternalSucceeded:
		return schemas.OutcomeSucceeded
	case schemas.ExternalFailed:
		return schemas.OutcomeFailed
	default:
		return schemas.OutcomeAccepted
	}
}

func requested(duplicate bool) string {
	if duplicate {
		return "duplicate"
	}
	return "requested"
}

// idToken returns id when it is a safe, short token (EventBridge ids are
// UUIDs), else a digest of it, for use in derived ids and audit records.
func idToken(id string) string {
	if id != "" && len(id) <= 128 && isToken(id) {
		return id
	}
	h := sha256.Sum256([]byte(id))
	return "h" + hex.EncodeToString(h[:16])
}

func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == ':') {
			return false
		}
	}
	return true
}

// clip bounds a string taken from a message before it is logged or
// recorded.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "..."
}

func firstTime(ts ...time.Time) time.Time {
	for _, t := range ts {
		if !t.IsZero() {
			return t
		}
	}
	return time.Time{}
}

func set(list []string) map[string]bool {
	if len(list) == 0 {
		return nil
	}
	m := make(map[string]bool, len(list))
	for _, s := range list {
		m[s] = true
	}
	return m
}
