package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rekey-dev/rekey/schemas"
)

// DefaultRunTTL bounds a pipeline run that sets no RunTTL.
const DefaultRunTTL = 15 * time.Minute

// ErrRunEnded is returned by Run.Get after End or the run's TTL.
var ErrRunEnded = errors.New("agent: run ended")

// RunIssuer makes credentials that exist for one pipeline run only
// (vaultfetch.Database, with Vault database dynamic roles). Set it as
// Config.RunIssuer.
type RunIssuer interface {
	// PerRun reports whether secret is made per run.
	PerRun(secret string) bool
	// IssueRun makes new credentials of secret for run, living at most
	// ttl; their Version identifies them (a lease id) for RevokeRun.
	IssueRun(ctx context.Context, tenant, secret, run string, ttl time.Duration) (Secret, error)
	// RevokeRun revokes credentials made by IssueRun, by Version.
	RevokeRun(ctx context.Context, versions []string) error
}

// RunOption is an option of BeginRun.
type RunOption func(*Run)

// RunTTL bounds the run: credentials made for it live at most d, and a
// run never ended is ended (its credentials revoked) d after it began.
func RunTTL(d time.Duration) RunOption { return func(r *Run) { r.ttl = d } }

// Run is one tool-call pipeline run (BeginRun). Its Get returns, for the
// secrets the RunIssuer makes per run, credentials made for this run alone,
// revoked by End; other secrets come from the Agent's cache.
type Run struct {
	a        *Agent
	id       string
	ttl      time.Duration
	deadline time.Time
	timer    *time.Timer

	mu     sync.Mutex
	ended  bool
	creds  map[string]Secret
	issued []string                 // versions to revoke
	wait   map[string]chan struct{} // issuing in progress, by secret
}

// BeginRun starts run id. Its credentials are revoked by End, or when
// the run's TTL (RunTTL, default DefaultRunTTL) passes.
func (a *Agent) BeginRun(ctx context.Context, id string, opts ...RunOption) *Run {
	r := &Run{a: a, id: id, ttl: DefaultRunTTL, creds: map[string]Secret{}, wait: map[string]chan struct{}{}}
	for _, o := range opts {
		o(r)
	}
	if r.ttl <= 0 {
		r.ttl = DefaultRunTTL
	}
	r.deadline = time.Now().Add(r.ttl)
	r.timer = time.AfterFunc(r.ttl, func() {
		if err := r.End(); err != nil {
			a.log.Warn("run expired; credentials not all revoked", "run", id, "error", err)
		}
	})
	return r
}

// ID is the run's id.
func (r *Run) ID() string { return r.id }

// Ended reports whether End ran (or the run's TTL passed).
func (r *Run) Ended() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ended
}

// Get returns secret for this run: credentials made for it alone (made at
// the first Get, with a TTL at most what is left of the run) when the
// RunIssuer makes secret per run, else the Agent's cached version.
func (r *Run) Get(ctx context.Context, secret string) (Secret, error) {
	return r.GetFor(ctx, secret, "")
}

// GetFor is Get on behalf of tool: every read through the run is
// reported with the tool and the run's id (Agent.GetFor); a read of
// credentials made for the run with their lease id as the version, so
// that the audit trail links lease, run, tool and agent instance.
func (r *Run) GetFor(ctx context.Context, secret, tool string) (Secret, error) {
	iss := r.a.cfg.RunIssuer
	if iss == nil || !iss.PerRun(secret) {
		return r.a.GetFor(ctx, secret, Use{Tool: tool, Run: r.id})
	}
	if g := r.a.gate.Load(); g != 0 {
		return Secret{}, gateErr(g)
	}
	if err := schemas.ValidateID("secret", secret); err != nil {
		return Secret{}, fmt.Errorf("agent: run %s: %w", r.id, err)
	}
	for {
		r.mu.Lock()
		if r.ended {
			r.mu.Unlock()
			return Secret{}, fmt.Errorf("agent: run %s: %w", r.id, ErrRunEnded)
		}
		if s, ok := r.creds[secret]; ok {
			r.mu.Unlock()
			r.a.countTagged(secret, s.Version, Use{Tool: tool, Run: r.id})
			return s, nil
		}
		if ch, ok := r.wait[secret]; ok { // another Get is issuing it
			r.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return Secret{}, fmt.Errorf("agent: run %s: get %s: %w", r.id, secret, ctx.Err())
			}
		}
		ch := make(chan struct{})
		r.wait[secret] = ch
		r.mu.Unlock()
		s, err := r.issue(ctx, secret)
		r.mu.Lock()
		delete(r.wait, secret)
		close(ch)
		if err == nil {
			r.issued = append(r.issued, s.Version)
			if r.ended { // ended while issuing: revoke at once
				r.mu.Unlock()
				_ = iss.RevokeRun(context.WithoutCancel(ctx), []string{s.Version})
				return Secret{}, fmt.Errorf("agent: run %s: %w", r.id, ErrRunEnded)
			}
			r.creds[secret] = s
		}
		r.mu.Unlock()
		if err == nil {
			r.a.countTagged(secret, s.Version, Use{Tool: tool, Run: r.id})
		}
		return s, err
	}
}

func (r *Run) issue(ctx context.Context, secret string) (Secret, error) {
	left := time.Until(r.deadline)
	if left < time.Second {
		return Secret{}, fmt.Errorf("agent: run %s: %w", r.id, ErrRunEnded)
	}
	s, err := r.a.cfg.RunIssuer.IssueRun(ctx, r.a.cfg.Tenant, secret, r.id, left)
	if err != nil {
		return Secret{}, fmt.Errorf("agent: run %s: get %s/%s: %w", r.id, r.a.cfg.Tenant, secret, err)
	}
	s.Name, s.FetchedAt = secret, time.Now()
	r.a.guard.hold(secret, s.Version, s.Value) // the leak guard looks for them too
	r.a.log.Debug("run credentials issued", "run", r.id, "secret", secret, "version", s.Version)
	return s, nil
}

// End revokes every credential made for the run, at once. Get fails with
// ErrRunEnded from then on. Calling it again is a no-op.
func (r *Run) End() error {
	r.mu.Lock()
	if r.ended {
		r.mu.Unlock()
		return nil
	}
	r.ended = true
	issued := r.issued
	r.issued, r.creds = nil, nil
	r.mu.Unlock()
	r.timer.Stop()
	if len(issued) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.a.cfg.FetchTimeout)
	defer cancel()
	if err := r.a.cfg.RunIssuer.RevokeRun(ctx, issued); err != nil {
		return fmt.Errorf("agent: end run %s: %w", r.id, err)
	}
	r.a.log.Debug("run ended; credentials revoked", "run", r.id, "revoked", len(issued))
	return nil
}
