// Package triggertest is the test environment the triggers share: an
// embedded nats-server with rekey's streams and a bus on it, logs kept in
// memory, readers of what a trigger stored (requests, audit records) and
// a leak check over all of it. A trigger's own tests keep only what is
// theirs (its configuration, its HTTP server or queue, its signers).
//
//	e := triggertest.Start(t, triggertest.Options{Name: "siem-test"})
//	h, _ := siem.New(cfg, rekey, e.Bus, e.Auditor(), orchestrator.NewMetrics(), e.Log)
//	...
//	require.Len(t, e.Rotations(), 1)
//	e.RequireNoLeak(secretValues)
package triggertest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// Options configure Start; the zero value is a fresh server with
// JetStream's defaults and text logs.
type Options struct {
	// Name is the NATS client name of the bus ("triggertest" when empty).
	Name string
	// NATS is the bus's configuration (e.g. DuplicateWindow).
	NATS orchestrator.NATSConfig
	// Dir is JetStream's store directory; "" is a new temporary one.
	// Start a second Env with the same Dir and Port to restart a server
	// on its data.
	Dir string
	// Port is the server's port; 0 picks a free one.
	Port int
	// JSONLogs writes the logs as JSON lines instead of text.
	JSONLogs bool
}

// Env is one test's NATS server, with rekey's streams, and a bus on it.
type Env struct {
	t    testing.TB
	opts Options

	// Server is the embedded nats-server, Dir its store directory.
	Server *server.Server
	Dir    string
	// Bus is connected to Server; the streams exist.
	Bus *orchestrator.Bus
	// Logs receive what Log writes, at debug level.
	Logs *testutil.SyncBuffer
	Log  *slog.Logger
	// Replies are the HTTP reply bodies Call read; RequireNoLeak greps
	// them too. A test may write other replies to it.
	Replies *testutil.SyncBuffer
}

// Start starts nats-server, connects a bus and makes rekey's streams; all
// of it ends with the test.
func Start(t testing.TB, o Options) *Env {
	t.Helper()
	if o.Name == "" {
		o.Name = "triggertest"
	}
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	port := o.Port
	if port == 0 {
		port = -1
	}
	e := &Env{t: t, opts: o, Dir: o.Dir, Logs: &testutil.SyncBuffer{}, Replies: &testutil.SyncBuffer{}}
	hopts := &slog.HandlerOptions{Level: slog.LevelDebug}
	if o.JSONLogs {
		e.Log = slog.New(slog.NewJSONHandler(e.Logs, hopts))
	} else {
		e.Log = slog.New(slog.NewTextHandler(e.Logs, hopts))
	}
	e.Server = testutil.StartNATS(t, port, o.Dir)
	e.Bus = e.Connect()
	require.NoError(t, e.Bus.EnsureStreams(context.Background()), "rekey's streams")
	return e
}

// URL is the server's client URL.
func (e *Env) URL() string { return e.Server.ClientURL() }

// Connect returns another bus on the server, its own connection as a
// replica's would be; it is closed when the test ends.
func (e *Env) Connect() *orchestrator.Bus {
	e.t.Helper()
	bus, err := orchestrator.Connect(context.Background(), e.URL(), e.opts.Name, e.opts.NATS, e.Log)
	require.NoError(e.t, err, "connect to %s", e.URL())
	e.t.Cleanup(bus.Close)
	return bus
}

// Auditor is an auditor on the Env's bus.
func (e *Env) Auditor() *orchestrator.Auditor { return orchestrator.NewAuditor(e.Bus, "test", e.Log) }

// Messages reads the messages of a stream whose subject matches filter
// ("" is every one), in order, without consuming them; nil when the
// stream does not exist.
func (e *Env) Messages(stream, filter string) []*jetstream.RawStreamMsg {
	e.t.Helper()
	ctx := context.Background()
	s, err := e.Bus.JS.Stream(ctx, stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	require.NoError(e.t, err, "stream %s", stream)
	if filter == "" {
		filter = ">"
	}
	var out []*jetstream.RawStreamMsg
	for next := uint64(1); ; {
		m, err := s.GetMsg(ctx, next, jetstream.WithGetMsgSubject(filter))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out
		}
		require.NoError(e.t, err, "stream %s from sequence %d", stream, next)
		out = append(out, m)
		next = m.Sequence + 1
	}
}

// Events decodes the messages of a stream (matching filter) as events,
// checking that each event's id is its JetStream message id (which is
// what makes a publish that is retried stored once).
func (e *Env) Events(stream, filter string) []schemas.Event {
	e.t.Helper()
	var out []schemas.Event
	for _, m := range e.Messages(stream, filter) {
		ev, err := schemas.Decode(m.Data)
		require.NoError(e.t, err, "%s message %d", stream, m.Sequence)
		require.Equal(e.t, ev.ID, m.Header.Get("Nats-Msg-Id"), "the event id is the JetStream message id")
		out = append(out, ev)
	}
	return out
}

// Data decodes the data of events of type typ.
func Data[T any](t testing.TB, evs []schemas.Event, typ string) []T {
	t.Helper()
	out := make([]T, 0, len(evs))
	for _, ev := range evs {
		var v T
		require.NoError(t, ev.DecodeData(typ, &v), "event %s", ev.ID)
		out = append(out, v)
	}
	return out
}

// Rotations are the rotation requests stored in REKEY_ROTATE.
func (e *Env) Rotations() []schemas.RotationRequested {
	e.t.Helper()
	return Data[schemas.RotationRequested](e.t, e.Events(schemas.StreamRotate, ""), schemas.TypeRotationRequested)
}

// Revocations are the revocation requests stored in REKEY_REVOKE.
func (e *Env) Revocations() []schemas.RevocationRequested {
	e.t.Helper()
	return Data[schemas.RevocationRequested](e.t, e.Events(schemas.StreamRevoke, ""), schemas.TypeRevocationRequested)
}

// Audits are the audit records of tenant ("" is every tenant).
func (e *Env) Audits(tenant string) []schemas.AuditRecord {
	e.t.Helper()
	filter := ""
	if tenant != "" {
		filter = schemas.AuditSubject(tenant)
	}
	return Data[schemas.AuditRecord](e.t, e.Events(schemas.StreamAudit, filter), schemas.TypeAuditRecord)
}

// LastSeq is the last sequence of a stream: how many messages it took.
func (e *Env) LastSeq(stream string) uint64 {
	e.t.Helper()
	s, err := e.Bus.JS.Stream(context.Background(), stream)
	require.NoError(e.t, err, "stream %s", stream)
	info, err := s.Info(context.Background())
	require.NoError(e.t, err, "stream %s", stream)
	return info.State.LastSeq
}

// RequireNoLeak fails the test when one of values is in a log line, a
// reply of Replies, or a message (subject, header or data) of the
// request and audit streams or of the other streams named.
func (e *Env) RequireNoLeak(values []string, streams ...string) {
	e.t.Helper()
	var hay strings.Builder
	hay.WriteString(e.Logs.String())
	hay.WriteString(e.Replies.String())
	for _, stream := range append([]string{schemas.StreamRotate, schemas.StreamRevoke, schemas.StreamAudit}, streams...) {
		for _, m := range e.Messages(stream, "") {
			hay.WriteString(m.Subject)
			hay.Write(m.Data)
			for k, v := range m.Header {
				hay.WriteString(k + strings.Join(v, ","))
			}
		}
	}
	for _, v := range values {
		require.NotContains(e.t, hay.String(), v, "a credential leaked")
	}
}

// Reply is an HTTP reply read by Call.
type Reply struct {
	Code   int
	Header http.Header
	Raw    []byte
	// Body is Raw decoded when it is a JSON object.
	Body map[string]any
}

// Call sends a request to base+path, with token as a bearer token when it
// is not empty and the headers hdr, and reads the reply; the body goes to
// Replies. From goroutines other than the test's, use Do.
func (e *Env) Call(base, method, path, token, body string, hdr map[string]string) Reply {
	e.t.Helper()
	r, err := e.Do(base, method, path, token, body, hdr)
	require.NoError(e.t, err)
	return r
}

// Do is Call returning its error instead of failing the test, for
// goroutines other than the test's.
func (e *Env) Do(base, method, path, token, body string, hdr map[string]string) (Reply, error) {
	req, err := http.NewRequest(method, base+path, strings.NewReader(body))
	if err != nil {
		return Reply{}, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return Reply{}, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return Reply{}, fmt.Errorf("%s %s: reply: %w", method, path, err)
	}
	_, _ = e.Replies.Write(b)
	out := Reply{Code: resp.StatusCode, Header: resp.Header, Raw: b}
	if len(bytes.TrimSpace(b)) > 0 && b[0] == '{' {
		if err := json.Unmarshal(b, &out.Body); err != nil {
			return out, fmt.Errorf("%s %s: body %s: %w", method, path, b, err)
		}
	}
	return out, nil
}
