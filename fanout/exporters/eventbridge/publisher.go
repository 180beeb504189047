package eventbridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	ebapi "github.com/aws/aws-sdk-go-v2/service/eventbridge"
	ebtypes "github.com/aws/aws-sdk-go-v2/service/eventbridge/types"
	"github.com/aws/smithy-go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rekey-dev/rekey/internal/retry"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/orchestrator/awsconf"
	"github.com/rekey-dev/rekey/schemas"
)

// Component is the publisher's name in logs ("component") and errors.
const Component = "awsevents-eventbridge"

// eventBridgeAPI is the part of the EventBridge client the publisher uses.
type eventBridgeAPI interface {
	PutEvents(ctx context.Context, in *ebapi.PutEventsInput, opts ...func(*ebapi.Options)) (*ebapi.PutEventsOutput, error)
}

var _ eventBridgeAPI = (*ebapi.Client)(nil)

// PublisherDurable is the durable consumer of the EVENTS stream that the
// outcome publisher reads through, shared by every rekeyd replica.
const PublisherDurable = "awsevents-eventbridge"

// Outcomes of one event, the "outcome" label of
// rekey_aws_eventbridge_events_total.
const (
	PutPublished = "published" // PutEvents reported no failed entry: acked
	PutFailed    = "failed"    // PutEvents failed: nak'd, sent again later
	PutDropped   = "dropped"   // unreadable, or refused by EventBridge for good: terminated
)

// DetailType is the EventBridge detail-type of a rekey event kind:
// "rekey rotation completed" for rotation_completed.
func DetailType(kind string) string { return "rekey " + strings.ReplaceAll(kind, "_", " ") }

// Publisher puts rekey's lifecycle events (by default rotation_completed,
// rotation_failed and revocation_completed) on an EventBridge bus, with
// source "rekey" (eventbridge.source), detail-type DetailType(kind) and as
// detail the event's data, which never holds a value. An event is acked
// on the stream only once PutEvents reported no failed entry; otherwise it
// is nak'd with a delay and sent again. The durable consumer starts at
// the first event published after it was created: history is not replayed.
type Publisher struct {
	cfg     Config
	eb      eventBridgeAPI
	bus     *orchestrator.Bus
	log     *slog.Logger
	events  *prometheus.CounterVec // kind, outcome
	started chan struct{}
}

// NewPublisher builds the outcome publisher of cfg and its EventBridge
// client (region and endpoint from cfg, as ParseConfig filled them in;
// credentials from the SDK's default chain). deps needs the bus.
func NewPublisher(cfg Config, deps orchestrator.Deps) (*Publisher, error) {
	if !cfg.Enabled {
		return nil, fmt.Errorf("%s.enabled is false", Section)
	}
	cfg = cfg.withDefaults()
	if err := orchestrator.DecodeSection(Section, nil, &cfg); err != nil {
		return nil, err
	}
	if err := deps.Check(Component, "bus"); err != nil {
		return nil, err
	}
	awsCfg, err := awsconf.Load(context.Background(), cfg.Region, cfg.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", Section, err)
	}
	p := &Publisher{cfg: cfg, eb: ebapi.NewFromConfig(awsCfg), bus: deps.Bus, log: deps.Log.With("component", Component),
		started: make(chan struct{})}
	if p.events, err = orchestrator.Register(deps.Metrics, newEventsCounter()); err != nil {
		return nil, err
	}
	return p, nil
}

func newEventsCounter() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rekey_aws_eventbridge_events_total", Help: "rekey events put on EventBridge by the outcome publisher, by kind and outcome.",
	}, []string{"kind", "outcome"})
}

// Started is closed once the durable consumer exists and pulls.
func (p *Publisher) Started() <-chan struct{} { return p.started }

// Run sends events until ctx ends, then stops pulling, finishes the event
// in hand and returns nil.
func (p *Publisher) Run(ctx context.Context) error {
	filters := make([]string, 0, len(p.cfg.Kinds))
	for _, k := range p.cfg.Kinds {
		filters = append(filters, schemas.EventsSubject("*", k))
	}
	cons, err := p.bus.Consumer(ctx, schemas.StreamEvents, jetstream.ConsumerConfig{
		Durable:        PublisherDurable,
		Description:    "rekey events put on EventBridge; shared by every rekeyd",
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        30 * time.Second,
		DeliverPolicy:  jetstream.DeliverNewPolicy,
		FilterSubjects: filters,
		MaxDeliver:     -1,
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("awsevents publisher: %w", err)
	}
	// The callback runs on one goroutine, in stream order.
	cc, err := cons.Consume(func(msg jetstream.Msg) { p.handle(ctx, msg) }, jetstream.PullMaxMessages(16),
		jetstream.PullExpiry(10*time.Second), jetstream.PullHeartbeat(2*time.Second))
	if err != nil {
		return fmt.Errorf("awsevents publisher: consume %s: %w", schemas.StreamEvents, err)
	}
	close(p.started)
	p.log.Info("EventBridge outcome publisher started", "bus", p.cfg.BusName, "source", p.cfg.Source, "kinds", p.cfg.Kinds)
	<-ctx.Done()
	cc.Drain()
	select {
	case <-cc.Closed():
	case <-time.After(10 * time.Second):
	}
	p.log.Info("EventBridge outcome publisher stopped")
	return nil
}

// handle puts one event on the bus and acks it, or naks it for later.
func (p *Publisher) handle(ctx context.Context, msg jetstream.Msg) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	kind := msg.Subject()[strings.LastIndexByte(msg.Subject(), '.')+1:]
	ev, err := schemas.Decode(msg.Data())
	if err != nil {
		p.log.Warn("unreadable event not sent to EventBridge", "subject", msg.Subject(), "error", err)
		p.events.WithLabelValues(kind, PutDropped).Inc()
		_ = msg.Term()
		return
	}
	out, err := p.eb.PutEvents(ctx, &ebapi.PutEventsInput{Entries: []ebtypes.PutEventsRequestEntry{{
		EventBusName: aws.String(p.cfg.BusName),
		Source:       aws.String(p.cfg.Source),
		DetailType:   aws.String(DetailType(kind)),
		Detail:       aws.String(string(ev.Data)),
		Time:         aws.Time(ev.Time),
	}}})
	code, reason := "", ""
	var apiErr smithy.APIError
	switch {
	case errors.As(err, &apiErr):
		code, reason = apiErr.ErrorCode(), apiErr.ErrorMessage()
	case err != nil:
		code, reason = "request", err.Error()
	case len(out.Entries) != 1:
		code, reason = "entry", fmt.Sprintf("%d failed entries", out.FailedEntryCount)
	default: // the one entry's error, if any
		code, reason = aws.ToString(out.Entries[0].ErrorCode), aws.ToString(out.Entries[0].ErrorMessage)
	}
	if code == "" {
		p.events.WithLabelValues(kind, PutPublished).Inc()
		p.log.Debug("event sent to EventBridge", "id", ev.ID, "kind", kind, "tenant", ev.Tenant,
			"eventbridge_id", aws.ToString(out.Entries[0].EventId))
		if err := msg.Ack(); err != nil {
			p.log.Warn("event ack failed; it may be sent twice", "id", ev.ID, "error", err)
		}
		return
	}
	if permanent(code) {
		p.events.WithLabelValues(kind, PutDropped).Inc()
		p.log.Error("EventBridge refused the event for good; dropped", "id", ev.ID, "kind", kind, "code", code, "reason", reason)
		_ = msg.Term()
		return
	}
	delivery := 1
	if md, err := msg.Metadata(); err == nil {
		delivery = int(md.NumDelivered)
	}
	delay := putBackoff.Delay(delivery)
	p.events.WithLabelValues(kind, PutFailed).Inc()
	p.log.Warn("event not sent to EventBridge; retrying", "id", ev.ID, "kind", kind, "code", code, "reason", reason, "retry_in", delay)
	_ = msg.NakWithDelay(delay)
}

// putBackoff spaces the deliveries of an event EventBridge did not take:
// 2s after the first, doubling up to a minute.
var putBackoff = retry.Backoff{Initial: 2 * time.Second, Max: time.Minute}

// permanent reports whether a PutEvents entry error will not go away by
// sending the same entry again.
func permanent(code string) bool {
	switch code {
	case "MalformedDetail", "InvalidArgument", "ValidationException":
		return true
	}
	return false
}
