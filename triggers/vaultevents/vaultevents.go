// Package vaultevents is the Vault event trigger: it subscribes to
// Vault's event stream (sys/events/subscribe/kv-v2/*, a WebSocket of JSON
// CloudEvents; Vault 1.14 serves it with -experiment events.alpha1), maps
// each KV v2 path back to the tenant/secret the Vault backend keeps there
// (Config.Secrets, from vault.Config.KVLocations), and for a write,
// delete or destroy made outside rekey (a person with the vault CLI, a
// pipeline) publishes an external_change event and a sync request, as
// the AWS trigger does for Secrets Manager: the sync records what Vault
// holds and invalidates the agents, which otherwise serve the old value
// until their TTL; a deleted or destroyed current version is an
// external_change with deleted set, which makes every agent drop it.
//
// Events are hints: the trigger reads the secret's metadata and current
// version from Vault before acting, and acts on what Vault says. rekey's
// own writes are ignored: its staging paths are no secret's path, and a
// promoted version is rekey's when the secret's custom_metadata
// rekey_kv_version names it (the trigger waits up to own_write_grace for
// that bookkeeping, which follows the write, when the version's data
// carries rekey_version). Events missed while disconnected are not
// replayed by Vault: after a reconnect every secret's current version is
// read again and compared with the last one seen (resync). Ids derive
// from tenant, secret and KV version, so replicas, and an event and a
// resync of the same version, publish once (JetStream's duplicate
// window) and this process acts once per version.
package vaultevents

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/vault/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rekey-dev/rekey/internal/retry"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// Names the trigger uses in events, audit records and logs.
const (
	EventSource = "rekeyd/vaultevents"
	Component   = "vaultevents"
	Backend     = "vault"
	// ChangeSource is ExternalChange.Source.
	ChangeSource = "vault.events"
	// EventResync is ExternalChange.Event of a change found by a resync.
	EventResync = "resync"
)

// Outcomes counted in rekey_vault_events_total.
const (
	OutcomePublished = "published"
	OutcomeOwn       = "own"
	OutcomeUnchanged = "unchanged"
	OutcomeUnmapped  = "unmapped"
	OutcomeRefused   = "refused"
	OutcomeMalformed = "malformed"
	OutcomeFailed    = "failed"
)

// Keys rekey's Vault backend writes (handlers/vault KeyVersion,
// KeyKVVersion; a trigger does not import the backend).
const (
	keyVersion   = "rekey_version"
	keyKVVersion = "rekey_kv_version"
)

// maxMessageBytes bounds one event read from the WebSocket.
const maxMessageBytes = 64 << 10

// Trigger consumes Vault's event stream.
type Trigger struct {
	cfg     Config
	bus     *orchestrator.Bus
	audit   *orchestrator.Auditor
	metrics *orchestrator.Metrics
	log     *slog.Logger
	vault   *api.Client
	token   string
	wsURL   string
	byPath  map[string]Location // mount + "/" + path
	allowed map[string]bool
	events  *prometheus.CounterVec
	backoff retry.Backoff

	// last is the state of each secret last seen (tenant/secret); a
	// change is acted on when Vault's state differs from it.
	last     map[string]state
	sessions int
}

// state is what the trigger knows of a secret's current version.
type state struct {
	version int
	deleted bool
}

// New builds the trigger. The token is read from cfg.TokenEnv now.
func New(cfg Config, deps orchestrator.Deps) (*Trigger, error) {
	if err := deps.Check("vaultevents", "bus", "audit"); err != nil {
		return nil, err
	}
	bus, audit, metrics, log := deps.Bus, deps.Audit, deps.Metrics, deps.Log
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", Section, err)
	}
	if cfg.Address == "" {
		return nil, orchestrator.FieldErrorf(Section+".address", "must be set (the daemon fills it from backends.vault)")
	}
	token := os.Getenv(cfg.TokenEnv)
	if token == "" {
		return nil, orchestrator.FieldErrorf(Section+".token_env", "environment variable %s is empty or unset", cfg.TokenEnv)
	}
	conf := api.DefaultConfig()
	conf.Address = cfg.Address
	conf.MaxRetries = 0
	conf.Timeout = cfg.Timeout
	client, err := api.NewClient(conf)
	if err != nil {
		return nil, fmt.Errorf("%s: vault client: %w", Section, err)
	}
	client.ClearNamespace()
	client.SetToken(token)
	u, err := url.Parse(strings.TrimRight(cfg.Address, "/") + "/v1/sys/events/subscribe/" + cfg.EventType)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", Section, err)
	}
	u.Scheme = map[string]string{"http": "ws", "https": "wss"}[u.Scheme]
	u.RawQuery = "json=true"
	t := &Trigger{
		cfg: cfg, bus: bus, audit: audit, metrics: metrics, log: log.With("component", Component), vault: client,
		token: token, wsURL: u.String(), byPath: map[string]Location{}, allowed: map[string]bool{}, last: map[string]state{},
		backoff: retry.Backoff{Initial: cfg.ReconnectMin, Max: cfg.ReconnectMax, Jitter: 0.2},
	}
	for _, tn := range cfg.Tenants {
		t.allowed[tn] = true
	}
	for _, l := range cfg.Secrets {
		if err := schemas.ValidateRef(l.Tenant, l.Secret); err != nil {
			return nil, fmt.Errorf("%s: secret %s/%s: %w", Section, l.Tenant, l.Secret, err)
		}
		t.byPath[strings.Trim(l.Mount, "/")+"/"+strings.Trim(l.Path, "/")] = l
	}
	t.events = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rekey_vault_events_total", Help: "Vault events (and resync checks) handled by the Vault event trigger, by outcome.",
	}, []string{"outcome"})
	if t.events, err = orchestrator.Register(metrics, t.events); err != nil {
		return nil, fmt.Errorf("%s: %w", Section, err)
	}
	return t, nil
}

// Run subscribes until ctx ends (then it returns nil), reconnecting with
// backoff; each connection but the first starts with a resync.
func (t *Trigger) Run(ctx context.Context) error {
	t.log.Info("Vault event trigger started", "address", t.cfg.Address, "event_type", t.cfg.EventType, "secrets", len(t.byPath))
	defer t.log.Info("Vault event trigger stopped")
	failures := 0
	for ctx.Err() == nil {
		connected, err := t.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if connected {
			failures = 0
		}
		failures++
		d := t.backoff.Delay(failures)
		t.log.Warn("Vault event stream lost; reconnecting", "error", err, "retry_in", d.String())
		if !retry.Sleep(ctx, d) {
			return nil
		}
	}
	return nil
}

// session connects, resyncs and handles events until the connection ends;
// connected reports whether it got as far as subscribing.
func (t *Trigger) session(ctx context.Context) (connected bool, err error) {
	dctx, cancel := context.WithTimeout(ctx, t.cfg.Timeout)
	c, resp, err := websocket.Dial(dctx, t.wsURL, &websocket.DialOptions{HTTPHeader: http.Header{"X-Vault-Token": {t.token}}})
	cancel()
	if err != nil {
		if resp != nil {
			return false, fmt.Errorf("subscribe %s: HTTP %d", t.cfg.EventType, resp.StatusCode)
		}
		return false, fmt.Errorf("subscribe %s: %w", t.cfg.EventType, err)
	}
	defer c.CloseNow()
	c.SetReadLimit(maxMessageBytes)
	t.sessions++
	// Subscribed first, then read: nothing written meanwhile is missed.
	if err := t.resync(ctx, t.sessions == 1); err != nil {
		return true, err
	}
	msgs := make(chan []byte)
	readErr := make(chan error, 1)
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		for {
			_, msg, err := c.Read(rctx)
			if err != nil {
				readErr <- err
				return
			}
			select {
			case msgs <- msg:
			case <-rctx.Done():
				return
			}
		}
	}()
	var tick <-chan time.Time
	if t.cfg.ResyncEvery > 0 {
		tk := time.NewTicker(t.cfg.ResyncEvery)
		defer tk.Stop()
		tick = tk.C
	}
	for {
		select {
		case msg := <-msgs:
			if err := t.handle(ctx, msg); err != nil {
				return true, err
			}
		case <-tick:
			if err := t.resync(ctx, false); err != nil {
				return true, err
			}
		case err := <-readErr:
			return true, fmt.Errorf("read: %w", err)
		}
	}
}

// event is what the trigger reads of one Vault event.
type event struct {
	ID   string    `json:"id"`
	Time time.Time `json:"time"`
	Data struct {
		Event struct {
			ID       string         `json:"id"`
			Metadata map[string]any `json:"metadata"`
		} `json:"event"`
		EventType  string `json:"event_type"`
		PluginInfo struct {
			MountPath string `json:"mount_path"`
		} `json:"plugin_info"`
	} `json:"data"`
}

// handle acts on one event. Its error (NATS or Vault unavailable) ends
// the session; the resync after the reconnect finds the change again.
func (t *Trigger) handle(ctx context.Context, msg []byte) error {
	var ev event
	if err := json.Unmarshal(msg, &ev); err != nil || ev.Data.EventType == "" {
		t.events.WithLabelValues(OutcomeMalformed).Inc()
		t.log.Warn("Vault event not understood", "bytes", len(msg))
		return nil
	}
	mount := strings.Trim(ev.Data.PluginInfo.MountPath, "/")
	// The path is "<data|metadata|destroy|...>/<path>".
	_, path, _ := strings.Cut(str(ev.Data.Event.Metadata["path"]), "/")
	loc, ok := t.byPath[mount+"/"+path]
	if !ok {
		t.events.WithLabelValues(OutcomeUnmapped).Inc()
		t.log.Debug("Vault event about no secret rekey manages (or rekey's staging)", "event_type", ev.Data.EventType, "event_id", ev.ID)
		return nil
	}
	return t.check(ctx, loc, ev.Data.EventType, ev.ID, ev.Time)
}

// settle is how long the trigger reads a secret again when an event
// reports a change Vault does not show yet (its event can come before
// the write is visible to a read).
const settle = 2 * time.Second

// resync reads every secret's current version; on the first connection
// it only records them, later (after a reconnect, every resync_every) it
// acts on those that changed.
func (t *Trigger) resync(ctx context.Context, first bool) error {
	locs := make([]Location, 0, len(t.byPath))
	for _, l := range t.byPath {
		locs = append(locs, l)
	}
	slices.SortFunc(locs, func(a, b Location) int { return strings.Compare(a.Tenant+"/"+a.Secret, b.Tenant+"/"+b.Secret) })
	for _, l := range locs {
		if first {
			st, _, err := t.read(ctx, l, false)
			if err != nil {
				return err
			}
			t.last[l.Tenant+"/"+l.Secret] = st
			continue
		}
		if err := t.check(ctx, l, EventResync, "", time.Time{}); err != nil {
			return err
		}
	}
	if !first {
		t.log.Info("resynced", "secrets", len(locs))
	}
	return nil
}

// check reads the secret's state from Vault and acts if it changed and
// the change is not rekey's own.
func (t *Trigger) check(ctx context.Context, l Location, eventType, eventID string, eventTime time.Time) error {
	if len(t.allowed) > 0 && !t.allowed[l.Tenant] {
		t.events.WithLabelValues(OutcomeRefused).Inc()
		t.log.Info("Vault event about a tenant outside "+Section+".tenants", "tenant", l.Tenant, "secret", l.Secret, "event_id", eventID)
		return nil
	}
	key := l.Tenant + "/" + l.Secret
	st, own, err := t.read(ctx, l, true)
	// A data event names a change: while a read does not show one yet,
	// read again for a while (metadata events, rekey's bookkeeping among
	// them, change no version and are not waited for).
	dataEvent := strings.Contains(eventType, "/data-")
	for deadline := time.Now().Add(settle); err == nil && dataEvent && st == t.last[key] && time.Now().Before(deadline); {
		if !retry.Sleep(ctx, 50*time.Millisecond) {
			return nil
		}
		st, own, err = t.read(ctx, l, true)
	}
	if err != nil {
		t.events.WithLabelValues(OutcomeFailed).Inc()
		return err
	}
	if prev, ok := t.last[key]; ok && prev == st {
		t.events.WithLabelValues(OutcomeUnchanged).Inc()
		t.log.Debug("Vault secret unchanged since last seen", "tenant", l.Tenant, "secret", l.Secret, "event_type", eventType, "kv_version", st.version)
		return nil
	}
	if own {
		t.last[key] = st
		t.events.WithLabelValues(OutcomeOwn).Inc()
		t.log.Debug("rekey's own write", "tenant", l.Tenant, "secret", l.Secret, "kv_version", st.version)
		return nil
	}
	if err := t.publish(ctx, l, st, eventType, eventID, eventTime); err != nil {
		t.events.WithLabelValues(OutcomeFailed).Inc()
		return err
	}
	t.last[key] = st
	t.events.WithLabelValues(OutcomePublished).Inc()
	return nil
}

// read returns the secret's state and whether its current version is
// rekey's own write (waiting up to own_write_grace for rekey's
// bookkeeping when wait is set).
func (t *Trigger) read(ctx context.Context, l Location, wait bool) (st state, own bool, err error) {
	meta, err := t.metadata(ctx, l)
	if err != nil || meta == nil {
		return state{deleted: true}, false, err
	}
	st.version = intOf(meta["current_version"])
	if v, ok := meta["versions"].(map[string]any)[strconv.Itoa(st.version)].(map[string]any); ok {
		st.deleted = str(v["deletion_time"]) != "" || v["destroyed"] == true
	}
	if st.deleted || st.version == 0 {
		return st, false, nil
	}
	if kvVersionOf(meta) == st.version {
		return st, true, nil
	}
	rctx, cancel := context.WithTimeout(ctx, t.cfg.Timeout)
	sec, err := t.vault.Logical().ReadWithDataWithContext(rctx, l.Mount+"/data/"+l.Path, map[string][]string{"version": {strconv.Itoa(st.version)}})
	cancel()
	if err != nil {
		return st, false, fmt.Errorf("read %s/data/%s: %w", l.Mount, l.Path, err)
	}
	var data map[string]any
	if sec != nil {
		data, _ = sec.Data["data"].(map[string]any)
	}
	if str(data[keyVersion]) == "" || !wait {
		return st, false, nil
	}
	// rekey writes the version, then records it in custom_metadata.
	deadline := time.Now().Add(t.cfg.OwnWriteGrace)
	for time.Now().Before(deadline) {
		if !retry.Sleep(ctx, 100*time.Millisecond) {
			return st, false, ctx.Err()
		}
		meta, err := t.metadata(ctx, l)
		if err != nil {
			return st, false, err
		}
		if meta != nil && kvVersionOf(meta) == st.version {
			return st, true, nil
		}
	}
	return st, false, nil
}

func (t *Trigger) metadata(ctx context.Context, l Location) (map[string]any, error) {
	rctx, cancel := context.WithTimeout(ctx, t.cfg.Timeout)
	defer cancel()
	sec, err := t.vault.Logical().ReadWithContext(rctx, l.Mount+"/metadata/"+l.Path)
	if err != nil {
		return nil, fmt.Errorf("read %s/metadata/%s: %w", l.Mount, l.Path, err)
	}
	if sec == nil {
		return nil, nil
	}
	return sec.Data, nil
}

func kvVersionOf(meta map[string]any) int {
	cm, _ := meta["custom_metadata"].(map[string]any)
	n, err := strconv.Atoi(str(cm[keyKVVersion]))
	if err != nil {
		return -1
	}
	return n
}

func intOf(v any) int {
	switch n := v.(type) {
	case json.Number:
		i, _ := n.Int64()
		return int(i)
	case float64:
		return int(n)
	case string:
		i, _ := strconv.Atoi(n)
		return i
	}
	return 0
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

// publish sends the external change, the sync request and their audit
// records, with ids derived from the secret and its KV version.
func (t *Trigger) publish(ctx context.Context, l Location, st state, eventType, eventID string, eventTime time.Time) error {
	now := time.Now().UTC()
	if eventTime.IsZero() {
		eventTime = now
	}
	ref := l.Tenant + "/" + l.Secret
	base := fmt.Sprintf("vault-%s-%s-v%d", l.Tenant, l.Secret, st.version)
	if eventID == "" { // a resync: no Vault event to name
		eventID = EventResync + "/kv-" + strconv.Itoa(st.version)
	}
	outcome := schemas.ExternalSucceeded
	if st.deleted {
		base += "-deleted"
		outcome = schemas.ExternalInfo
	}
	change := schemas.ExternalChange{
		Tenant: l.Tenant, Secret: l.Secret, Backend: Backend, Source: ChangeSource, Event: clip(eventType, 64), Outcome: outcome,
		ResourceID: l.Mount + "/data/" + l.Path, VersionID: fmt.Sprintf("kv-%d", st.version), EventID: clip(eventID, 128),
		Deleted: st.deleted, EventTime: eventTime.UTC(), ObservedAt: now,
	}
	trig := schemas.Trigger{Kind: schemas.TriggerVault, Source: "events", Actor: clip(eventID, 128)}
	if err := t.send(ctx, schemas.EventsSubject(l.Tenant, schemas.KindExternalChange), schemas.TypeExternalChange, l.Tenant, ref, base+"-change", change); err != nil {
		return err
	}
	req := schemas.RotationRequested{Tenant: l.Tenant, Secret: l.Secret, Reason: "vault " + clip(eventType, 64), Trigger: trig,
		Mode: schemas.RotateModeSync, RequestedAt: now}
	if err := t.send(ctx, schemas.RotateSubject(l.Tenant, l.Secret), schemas.TypeRotationRequested, l.Tenant, ref, base+"-sync", req); err != nil {
		return err
	}
	t.metrics.RequestsTotal.WithLabelValues("sync", "requested").Inc()
	detail := map[string]string{"trigger": schemas.TriggerVault, "event_type": clip(eventType, 64), "event_id": clip(eventID, 128),
		"resource_id": change.ResourceID, "kv_version": strconv.Itoa(st.version), "deleted": strconv.FormatBool(st.deleted), "sync": "true"}
	for _, r := range []schemas.AuditRecord{
		{Tenant: l.Tenant, Secret: l.Secret, Action: "external_change", Outcome: auditOutcome(outcome), RequestID: base + "-change", Detail: detail},
		{Tenant: l.Tenant, Secret: l.Secret, Action: "rotation.request", Outcome: schemas.OutcomeAccepted, RequestID: base + "-sync",
			Detail: map[string]string{"mode": schemas.RotateModeSync, "event_type": clip(eventType, 64)}},
	} {
		r.Actor, r.Component = "vault:events:"+trig.Actor, Component
		if err := t.audit.RecordWithID(ctx, r.RequestID+"-audit", r); err != nil {
			return fmt.Errorf("audit: %w", err)
		}
	}
	t.log.Info("external change in Vault", "tenant", l.Tenant, "secret", l.Secret, "event_type", eventType, "kv_version", st.version,
		"deleted", st.deleted, "request_id", base+"-sync")
	return nil
}

func (t *Trigger) send(ctx context.Context, subject, typ, tenant, ceSubject, id string, data any) error {
	ev, err := schemas.NewEvent(EventSource, typ, tenant, ceSubject, data)
	if err != nil {
		return err
	}
	if _, err := t.bus.Publish(ctx, subject, ev.WithID(id)); err != nil {
		return fmt.Errorf("publish %s: %w", subject, err)
	}
	return nil
}

func auditOutcome(external string) string {
	if external == schemas.ExternalSucceeded {
		return schemas.OutcomeSucceeded
	}
	return schemas.OutcomeAccepted
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
