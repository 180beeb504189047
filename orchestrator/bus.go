package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rekey-dev/rekey/internal/retry"
	"github.com/rekey-dev/rekey/schemas"
)

// KV bucket names.
const (
	BucketStatus  = "rekey_status"
	BucketTenants = "rekey_tenants"
	BucketLocks   = "rekey_locks"
	// BucketFailures counts the real failures of each request (not its
	// deliveries: a redelivery after a crash or a clean stop is no failure).
	BucketFailures = "rekey_failures"
)

// Durable consumer names.
const (
	ConsumerRotation   = "rotation-worker"
	ConsumerRevocation = "revocation-worker"
	ConsumerFanout     = "fanout"
)

// Bus is rekey's connection to NATS: core for invalidations and acks,
// JetStream for requests, events and audit.
type Bus struct {
	NC  *nats.Conn
	JS  jetstream.JetStream
	cfg NATSConfig
	log *slog.Logger
	// violations counts the server's permission violations on this
	// connection: with a role's least-privilege user, one means a
	// component tried what its role may not (tests require none).
	violations *atomic.Int64
}

// PermissionViolations is how many operations the server refused this
// connection for lack of permission.
func (b *Bus) PermissionViolations() int64 { return b.violations.Load() }

// Connect dials NATS and returns a Bus. name identifies the connection in
// the server's monitoring.
func Connect(ctx context.Context, natsURL, name string, cfg NATSConfig, log *slog.Logger, opts ...nats.Option) (*Bus, error) {
	if log == nil {
		log = slog.Default()
	}
	violations := new(atomic.Int64)
	base := []nats.Option{
		nats.Name(name),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrPermissionViolation) {
				violations.Add(1)
			}
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			log.Error("nats error", "component", "bus", "connection", name, "subscription", subject, "error", err)
		}),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.RetryOnFailedConnect(false),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "component", "bus", "error", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info("nats reconnected", "component", "bus", "url", c.ConnectedUrlRedacted())
		}),
	}
	nc, err := nats.Connect(natsURL, append(base, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("connect nats %s: %w", RedactURL(natsURL), err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = 1
	}
	if cfg.DuplicateWindow == 0 {
		cfg.DuplicateWindow = 2 * time.Minute
	}
	if cfg.Limits == (LimitsConfig{}) {
		cfg.Limits = DefaultLimits()
	}
	return &Bus{NC: nc, JS: js, cfg: cfg, log: log, violations: violations}, nil
}

// Close drains the connection: pending publishes are flushed and
// subscriptions stop taking messages before it closes.
func (b *Bus) Close() {
	if err := b.NC.Drain(); err != nil {
		b.NC.Close()
	}
	for i := 0; i < 100 && !b.NC.IsClosed(); i++ {
		time.Sleep(20 * time.Millisecond)
	}
}

// StreamConfigs returns the streams of DESIGN.md, bounded by
// nats.limits. The request streams and AUDIT refuse a message when full
// (discard new: the publisher gets an error and the HTTP API a 503) rather
// than drop an accepted request or an audit record; the others drop their
// oldest messages.
func (b *Bus) StreamConfigs() []jetstream.StreamConfig {
	r := b.cfg.Replicas
	dup := b.cfg.DuplicateWindow
	lim := b.cfg.Limits
	return []jetstream.StreamConfig{
		{
			Name: schemas.StreamRotate, Subjects: []string{schemas.SubjectRotateAll},
			Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage,
			Replicas: r, Duplicates: dup, MaxAge: lim.Rotate.MaxAge, MaxBytes: lim.Rotate.MaxBytes, Discard: jetstream.DiscardNew,
			Description: "rotation requests, one subject per tenant/secret",
		},
		{
			Name: schemas.StreamRevoke, Subjects: []string{schemas.SubjectRevokeAll},
			Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage,
			Replicas: r, Duplicates: dup, MaxAge: lim.Revoke.MaxAge, MaxBytes: lim.Revoke.MaxBytes, Discard: jetstream.DiscardNew,
			Description: "revocation and restore requests per tenant",
		},
		{
			Name: schemas.StreamInvalidate, Subjects: []string{schemas.SubjectInvalidateAll},
			Retention: jetstream.LimitsPolicy, Storage: jetstream.FileStorage,
			Replicas: r, Duplicates: dup, MaxMsgsPerSubject: 1, MaxAge: lim.Invalidate.MaxAge, MaxBytes: lim.Invalidate.MaxBytes,
			AllowDirect: true, // the resync server reads with direct gets, no consumers
			Description: "last invalidation per tenant/secret, for agent resync",
		},
		{
			Name: schemas.StreamEvents, Subjects: []string{schemas.SubjectEventsAll},
			Retention: jetstream.LimitsPolicy, Storage: jetstream.FileStorage,
			Replicas: r, Duplicates: dup, MaxAge: lim.Events.MaxAge, MaxBytes: lim.Events.MaxBytes,
			Description: "rotation and revocation lifecycle events",
		},
		{
			Name: schemas.StreamAudit, Subjects: []string{schemas.SubjectAuditAll},
			Retention: jetstream.LimitsPolicy, Storage: jetstream.FileStorage,
			Replicas: r, Duplicates: dup, MaxAge: lim.Audit.MaxAge, MaxBytes: lim.Audit.MaxBytes, Discard: jetstream.DiscardNew,
			Description: "audit trail, never a secret value",
		},
	}
}

// Limits is the storage limits the bus's streams were made with.
func (b *Bus) Limits() LimitsConfig { return b.cfg.Limits }

// EnsureStreams creates or updates every stream; safe to call at each start.
func (b *Bus) EnsureStreams(ctx context.Context) error {
	for _, sc := range b.StreamConfigs() {
		if err := b.ensureStream(ctx, sc); err != nil {
			return err
		}
	}
	return nil
}

// ensureStream creates or updates a stream, waiting for a forming cluster.
func (b *Bus) ensureStream(ctx context.Context, sc jetstream.StreamConfig) error {
	return b.whileForming(ctx, "stream "+sc.Name, func() error {
		_, err := b.JS.CreateOrUpdateStream(ctx, sc)
		return err
	})
}

// whileForming runs create (a stream's or a bucket's) and, while a NATS
// cluster is still forming or busy electing (no peer for placement yet,
// JetStream temporarily unavailable, the API request timed out while ctx
// is live), which happens when rekeyd starts beside it, runs it again with
// backoff for up to streamPlacementWait.
func (b *Bus) whileForming(ctx context.Context, what string, create func() error) error {
	deadline := time.Now().Add(streamPlacementWait)
	for n := 1; ; n++ {
		err := create()
		if err == nil {
			return nil
		}
		var apiErr *jetstream.APIError
		forming := (errors.As(err, &apiErr) && slices.Contains(clusterFormingCodes, apiErr.ErrorCode)) ||
			(ctx.Err() == nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout)))
		if !forming || time.Now().After(deadline) {
			return fmt.Errorf("ensure %s: %w", what, err)
		}
		b.log.Warn("NATS cluster not ready yet; retrying", "component", "bus", "create", what, "error", err)
		if !retry.Sleep(ctx, streamPlacementBackoff.Delay(n)) {
			return fmt.Errorf("ensure %s: %w", what, errors.Join(ctx.Err(), err))
		}
	}
}

// streamPlacementWait bounds how long a stream or bucket waits for a
// forming cluster.
const streamPlacementWait = 30 * time.Second

var streamPlacementBackoff = retry.Backoff{Initial: 100 * time.Millisecond, Max: 2 * time.Second}

// clusterFormingCodes are JetStream error codes of a cluster that is still
// forming: no suitable peers for placement (10005), JetStream temporarily
// unavailable (10008).
var clusterFormingCodes = []jetstream.ErrorCode{10005, 10008}

// UsageStreamMaxBytes bounds the use reports one tenant's stream keeps; a
// flood beyond pushes out the tenant's own oldest reports, never another
// tenant's.
const UsageStreamMaxBytes = 64 << 20

// UsageStreamConfig is the stream of one tenant's use reports.
func (b *Bus) UsageStreamConfig(tenant string) jetstream.StreamConfig {
	lim := b.cfg.Limits.Usage // per tenant
	if lim.MaxBytes == 0 {
		lim.MaxBytes = UsageStreamMaxBytes
	}
	if lim.MaxAge == 0 {
		lim.MaxAge = 24 * time.Hour
	}
	return jetstream.StreamConfig{
		Name: schemas.UsageStream(tenant), Subjects: []string{schemas.UsedTenantSubject(tenant)},
		Retention: jetstream.LimitsPolicy, Storage: jetstream.FileStorage, Discard: jetstream.DiscardOld,
		Replicas: b.cfg.Replicas, Duplicates: b.cfg.DuplicateWindow, MaxAge: lim.MaxAge, MaxBytes: lim.MaxBytes,
		// Agents publish here, naming any reply subject they like: a
		// publish acknowledgement would be written there by the server,
		// as the stream (into another bucket, for instance).
		NoAck:       true,
		Description: "batched use reports from the agents of tenant " + tenant,
	}
}

// EnsureUsageStreams creates (or updates) each tenant's use-report stream.
// The stream all tenants shared before is deleted first (its subjects
// overlap theirs); the reports it held that were not counted yet are lost.
func (b *Bus) EnsureUsageStreams(ctx context.Context, tenants []string) error {
	err := b.JS.DeleteStream(ctx, schemas.StreamUsage)
	if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("delete the shared stream %s: %w", schemas.StreamUsage, err)
	}
	for _, t := range tenants {
		if err := b.ensureStream(ctx, b.UsageStreamConfig(t)); err != nil {
			return err
		}
	}
	return nil
}

// LeakStreamMaxBytes bounds the leak reports one tenant's stream keeps.
const LeakStreamMaxBytes = 16 << 20

// LeakStreamConfig is the stream of one tenant's leak reports
// (rekey.leak.<t>.<s>), read by the leak trigger's durable consumer: a
// report published while no trigger runs (rekeyd restarting, or down
// with an external NATS) waits there. Agents publish without an
// acknowledgement, as for use reports.
func (b *Bus) LeakStreamConfig(tenant string) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name: schemas.LeakStream(tenant), Subjects: []string{schemas.LeakTenantSubject(tenant)},
		Retention: jetstream.LimitsPolicy, Storage: jetstream.FileStorage, Discard: jetstream.DiscardOld,
		Replicas: b.cfg.Replicas, Duplicates: b.cfg.DuplicateWindow, MaxAge: 7 * 24 * time.Hour,
		MaxBytes: LeakStreamMaxBytes, NoAck: true,
		Description: "leak reports from the agents of tenant " + tenant,
	}
}

// EnsureLeakStreams creates (or updates) each tenant's leak-report stream.
func (b *Bus) EnsureLeakStreams(ctx context.Context, tenants []string) error {
	for _, t := range tenants {
		sc := b.LeakStreamConfig(t)
		if _, err := b.JS.CreateOrUpdateStream(ctx, sc); err != nil {
			return fmt.Errorf("ensure stream %s: %w", sc.Name, err)
		}
	}
	return nil
}

// KV creates (or opens) a key-value bucket.
func (b *Bus) KV(ctx context.Context, bucket string, ttl time.Duration) (jetstream.KeyValue, error) {
	var kv jetstream.KeyValue
	err := b.whileForming(ctx, "kv "+bucket, func() error {
		var err error
		kv, err = b.JS.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:   bucket,
			Storage:  jetstream.FileStorage,
			Replicas: b.cfg.Replicas,
			TTL:      ttl,
			History:  1,
		})
		return err
	})
	return kv, err
}

// Publish sends an event to a JetStream subject with the event ID as
// Nats-Msg-Id, and waits for the stream's acknowledgement. A duplicate
// (same ID within the window) is acknowledged and reported in the PubAck.
//
// While a NATS cluster fails over (a stream's leader is gone until another
// is elected, which takes seconds) a publish times out or is refused for a
// while: Publish tries again with the same ID, which JetStream
// de-duplicates, until ctx ends (default 10s).
func (b *Bus) Publish(ctx context.Context, subject string, ev schemas.Event) (*jetstream.PubAck, error) {
	data, err := ev.Encode()
	if err != nil {
		return nil, err
	}
	ctx, cancel := retry.WithDefaultTimeout(ctx, 10*time.Second)
	defer cancel()
	maybeStored := false // an attempt whose outcome is unknown may have stored it
	for attempt := 1; ; attempt++ {
		actx, acancel := context.WithTimeout(ctx, publishAttempt)
		ack, err := b.JS.Publish(actx, subject, data, jetstream.WithMsgID(ev.ID))
		acancel()
		if err == nil {
			if ack.Duplicate && maybeStored {
				ack.Duplicate = false // our own earlier attempt, most likely
			}
			return ack, nil
		}
		again, unknown := publishRetryable(err)
		maybeStored = maybeStored || unknown
		if !again || !retry.Sleep(ctx, publishBackoff.Delay(attempt)) {
			return nil, fmt.Errorf("publish %s to %s: %w", ev.Type, subject, err)
		}
	}
}

// errCodeDuplicateInProcess is JetStream's "duplicate message id is in
// process" (nats.go names no constant for it).
const errCodeDuplicateInProcess jetstream.ErrorCode = 10158

// publishAttempt bounds one attempt of Publish.
const publishAttempt = 2 * time.Second

// publishBackoff spaces Publish's attempts: 50ms, doubling up to 1s.
var publishBackoff = retry.Backoff{Initial: 50 * time.Millisecond, Max: time.Second}

// publishRetryable says whether a failed publish may succeed if tried
// again soon, and whether it may have been stored (no answer came).
func publishRetryable(err error) (retry, unknown bool) {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return true, true
	case errors.As(err, &apiErr):
		// 10158: a publish of the same id (another replica's) is being
		// stored; 503: JetStream or the stream's cluster is unavailable.
		return apiErr.ErrorCode == errCodeDuplicateInProcess || apiErr.Code == 503, false
	}
	return false, false
}

// PublishEvent wraps data in a new CloudEvent and publishes it to JetStream.
func (b *Bus) PublishEvent(ctx context.Context, subject, source, typ, tenant, ceSubject string, data any) (schemas.Event, error) {
	ev, err := schemas.NewEvent(source, typ, tenant, ceSubject, data)
	if err != nil {
		return schemas.Event{}, err
	}
	if _, err := b.Publish(ctx, subject, ev); err != nil {
		return schemas.Event{}, err
	}
	return ev, nil
}

// Consumer creates or updates a durable pull consumer.
func (b *Bus) Consumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	c, err := b.JS.CreateOrUpdateConsumer(ctx, stream, cfg)
	if err != nil {
		return nil, fmt.Errorf("ensure consumer %s on %s: %w", cfg.Durable, stream, err)
	}
	return c, nil
}

// Ready reports whether the connection is up and JetStream answers.
func (b *Bus) Ready(ctx context.Context) error {
	if !b.NC.IsConnected() {
		return errors.New("nats not connected")
	}
	ctx, cancel := retry.WithDefaultTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := b.JS.AccountInfo(ctx); err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	return nil
}

// RedactURL hides the password of a URL such as nats://user:pass@host:4222
// for logs and errors; something that does not parse is hidden whole.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// IsConflict reports whether a KV write failed because the key changed
// (Create of an existing key, Update or Delete at a stale revision). On a
// replicated bucket the server reports a conflict as error 10164 instead of
// 10071; both are conflicts.
func IsConflict(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
