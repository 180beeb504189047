package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/schemas"
)

// Headers naming the tool and the pipeline run a request is made for.
const (
	HeaderTool = "X-Rekey-Tool"
	HeaderRun  = "X-Rekey-Run"
)

// Defaults of the run and scan settings of Config.
const (
	DefaultMaxRuns = 1000
	// DefaultMaxScanBytes bounds the body of POST /v1/scan.
	DefaultMaxScanBytes = 1 << 20
	// ScanWhere is the Where of leaks found by POST /v1/scan.
	ScanWhere = "rekey-agent:/v1/scan"
	// maxToolLen bounds a tool name.
	maxToolLen = 128
)

var (
	errRunEnded    = errors.New("run ended")
	errTooManyRuns = errors.New("too many open runs")
)

// caller is who a request says it is for: its tool (the header, else the
// listener's default) and its pipeline run.
type caller struct{ tool, run string }

type callerKey struct{}

func callerOf(ctx context.Context) caller {
	c, _ := ctx.Value(callerKey{}).(caller)
	return c
}

// validTool accepts 1 to 128 bytes of letters, digits and . _ : / @ -,
// starting with a letter or digit.
func validTool(s string) error {
	if s == "" || len(s) > maxToolLen {
		return fmt.Errorf("%s must be 1 to %d bytes", HeaderTool, maxToolLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			i > 0 && (c == '.' || c == '_' || c == ':' || c == '/' || c == '@' || c == '-')
		if !ok {
			return fmt.Errorf("%s must be letters, digits and . _ : / @ - (starting with a letter or digit)", HeaderTool)
		}
	}
	return nil
}

// validRun accepts the grammar of agent instance ids (schemas.InstancePattern).
func validRun(s string) error {
	if schemas.ValidateInstance(s) != nil {
		return fmt.Errorf("%s must match %s", HeaderRun, schemas.InstancePattern)
	}
	return nil
}

// refuseFunc writes a refusal in one API's error shape.
type refuseFunc func(w http.ResponseWriter, status int, code, msg string)

func (s *Server) refuser(api string) refuseFunc {
	switch api {
	case APIAWSAgent:
		return func(w http.ResponseWriter, status int, _, msg string) { plain(w, status, msg) }
	case APIAWS:
		return func(w http.ResponseWriter, status int, _, msg string) {
			typ := awsValidation
			if status == http.StatusGone {
				status, typ = http.StatusBadRequest, "InvalidRequestException"
			}
			writeAWSErr(w, &awsErr{status, typ, msg})
		}
	case APIVault:
		return func(w http.ResponseWriter, status int, _, msg string) { vaultErr(w, status, msg) }
	default:
		return rekeyError
	}
}

// withCaller reads X-Rekey-Tool and X-Rekey-Run (one value each), refuses
// malformed ones and runs that ended, in the API's error shape, and
// passes the caller on in the request's context. A request without a tool
// header gets the listener's default tool.
func (s *Server) withCaller(api, defaultTool string, h http.Handler) http.Handler {
	refuse := s.refuser(api)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tools, runs := r.Header.Values(HeaderTool), r.Header.Values(HeaderRun)
		if len(tools) == 0 && len(runs) == 0 {
			if defaultTool != "" {
				r = r.WithContext(context.WithValue(r.Context(), callerKey{}, caller{tool: defaultTool}))
			}
			h.ServeHTTP(w, r)
			return
		}
		if len(tools) > 1 || len(runs) > 1 {
			refuse(w, http.StatusBadRequest, "bad_request", "at most one "+HeaderTool+" and one "+HeaderRun)
			return
		}
		c := caller{tool: defaultTool}
		if len(tools) == 1 {
			if err := validTool(tools[0]); err != nil {
				refuse(w, http.StatusBadRequest, "bad_request", err.Error())
				return
			}
			c.tool = tools[0]
		}
		if len(runs) == 1 {
			if err := validRun(runs[0]); err != nil {
				refuse(w, http.StatusBadRequest, "bad_request", err.Error())
				return
			}
			c.run = runs[0]
			if s.runs.isEnded(c.run) {
				refuse(w, http.StatusGone, "run_ended", "the run has ended")
				return
			}
		}
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, c)))
	})
}

// runTable keeps the pipeline runs open in this sidecar, by id. A run
// begins at the first read that names it; it ends at DELETE /v1/runs/{id},
// at its TTL, or when the sidecar stops. An ended run's id is refused
// until its TTL has passed, so that it never begins again with new
// credentials.
type runTable struct {
	src   func() Source
	max   int
	ttl   time.Duration
	mu    sync.Mutex
	open  map[string]*openRun
	ended map[string]time.Time // id -> when it may be forgotten
}

type openRun struct {
	run      *agent.Run
	deadline time.Time
}

func newRunTable(src func() Source, max int, ttl time.Duration) *runTable {
	return &runTable{src: src, max: max, ttl: ttl, open: map[string]*openRun{}, ended: map[string]time.Time{}}
}

func (t *runTable) isEnded(id string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.endedLocked(id, time.Now())
}

func (t *runTable) endedLocked(id string, now time.Time) bool {
	if _, ok := t.ended[id]; ok {
		return true
	}
	if o := t.open[id]; o != nil && (now.After(o.deadline) || o.run.Ended()) {
		delete(t.open, id)
		t.ended[id] = o.deadline.Add(t.ttl)
		return true
	}
	return false
}

// get returns open run id, beginning it if it is new.
func (t *runTable) get(ctx context.Context, id string) (*agent.Run, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	if t.endedLocked(id, now) {
		return nil, errRunEnded
	}
	if o := t.open[id]; o != nil {
		return o.run, nil
	}
	for k := range t.open { // sweep: runs past their TTL end
		t.endedLocked(k, now)
	}
	for k, until := range t.ended {
		if now.After(until) {
			delete(t.ended, k)
		}
	}
	if len(t.open) >= t.max || len(t.ended) >= 4*t.max {
		return nil, errTooManyRuns
	}
	r := t.src().BeginRun(context.WithoutCancel(ctx), id, agent.RunTTL(t.ttl))
	t.open[id] = &openRun{run: r, deadline: now.Add(t.ttl)}
	return r, nil
}

// end ends run id at once. It reports false when no such run is open.
func (t *runTable) end(id string) (bool, error) {
	t.mu.Lock()
	o := t.open[id]
	if o != nil {
		delete(t.open, id)
		t.ended[id] = time.Now().Add(t.ttl)
	}
	t.mu.Unlock()
	if o == nil {
		return false, nil
	}
	return true, o.run.End()
}

// endAll ends every open run (the sidecar is stopping).
func (t *runTable) endAll() error {
	t.mu.Lock()
	open := t.open
	t.open = map[string]*openRun{}
	for id := range open {
		t.ended[id] = time.Now().Add(t.ttl)
	}
	t.mu.Unlock()
	var errs []error
	for _, o := range open {
		errs = append(errs, o.run.End())
	}
	return errors.Join(errs...)
}

func (t *runTable) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.open)
}

// rekeyEndRun is DELETE /v1/runs/{id}: the run's credentials are revoked
// at once and its id is refused from then on.
func (s *Server) rekeyEndRun(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := validRun(id); err != nil {
		rekeyError(w, http.StatusBadRequest, "bad_request", "run id: "+err.Error())
		return
	}
	found, err := s.runs.end(id)
	switch {
	case !found:
		rekeyError(w, http.StatusNotFound, "not_found", "no such open run")
	case err != nil:
		s.log.Warn("run ended; credentials not all revoked", "run", id, "error", err)
		rekeyError(w, http.StatusBadGateway, "revoke_failed", "the run has ended but some of its credentials could not be revoked; they expire at the run's TTL")
	default:
		s.log.Info("run ended", "run", id)
		w.WriteHeader(http.StatusNoContent)
	}
}

// ScanReply is the body of POST /v1/scan: the text with every value of
// the tenant's secrets redacted, and what was found (never a value).
type ScanReply struct {
	Clean string     `json:"clean"`
	Leaks []ScanLeak `json:"leaks"`
}

// ScanLeak is one secret version found by POST /v1/scan.
type ScanLeak struct {
	Secret   string `json:"secret"`
	Version  string `json:"version"`
	Encoding string `json:"encoding"`
	Split    bool   `json:"split,omitempty"`
	Count    int    `json:"count"`
}

// rekeyScan is POST /v1/scan: the body is scanned by the agent's leak
// guard, and each leak reported (rekey.leak.<tenant>.<secret>) with Where
// ScanWhere and the request's tool and run.
func (s *Server) rekeyScan(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxScanBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			rekeyError(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("the text to scan must be at most %d bytes", s.cfg.MaxScanBytes))
			return
		}
		rekeyError(w, http.StatusBadRequest, "bad_request", "the body could not be read")
		return
	}
	c := callerOf(r.Context())
	clean, leaks := s.src.ScanFrom(string(body), agent.ScanOrigin{Where: ScanWhere, Tool: c.tool, Run: c.run})
	out := ScanReply{Clean: clean, Leaks: make([]ScanLeak, 0, len(leaks))}
	for _, l := range leaks {
		out.Leaks = append(out.Leaks, ScanLeak{Secret: l.Secret, Version: l.Version, Encoding: l.Encoding, Split: l.Split, Count: l.Count})
	}
	if len(leaks) > 0 {
		s.metrics.leaks.Add(float64(len(leaks)))
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(out)
}
