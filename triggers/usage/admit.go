package usage

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// What an agent may claim in its use reports is bounded before anything
// is counted (admission):
//
//   - only the version that is current, or the one it replaced, per the
//     secret's status (the workers write it): never a future or unknown
//     version, so no count can wait for a version to come;
//   - a count from a version's entry that began before the version became
//     current was planted (or belongs to a reused version number): it is
//     dropped, not added to;
//   - each instance may report at most MaxUsesPerInstancePerMinute uses a
//     minute (a token bucket holding one minute's worth): a report over
//     what is left is counted up to it, the rest refused;
//   - a tenant has at most MaxInstancesPerTenant instances reporting at
//     once; a new one beyond is refused.
//
// Refusals are counted per tenant and written to its audit trail at most
// once a minute ("usage.refused"), with counts by reason.

// Reasons of refused reports (keys of the usage.refused audit record).
const (
	refusedSubject   = "subject_mismatch"
	refusedVersion   = "version_not_current"
	refusedRate      = "over_instance_rate"
	refusedInstances = "over_instance_cap"
)

// currentGrace is how long before the status records a version as current
// its first use may be: an agent may fetch the new version in the moment
// between the backend promoting it and the status write.
const currentGrace = time.Minute

// statusTTL is how long a secret's status is reused for admission; a
// report for another version reads it again (at most once per
// statusRefresh), so a rotation is seen at once.
const (
	statusTTL     = time.Second
	statusRefresh = 200 * time.Millisecond
)

// instanceIdle is how long an instance that stopped reporting keeps its
// bucket (and its place under the tenant's cap): by then its bucket is
// full again, so forgetting it changes nothing.
const instanceIdle = 2 * time.Minute

type cachedStatus struct {
	current, previous string
	since             time.Time // when current became current (zero: unknown)
	read              time.Time
}

type instanceBucket struct {
	lim  *rate.Limiter
	last time.Time
}

// admission holds what admit decides with, for one Run.
type admission struct {
	perMinute    int64
	maxInstances int
	state        *orchestrator.State

	mu        sync.Mutex
	status    map[string]*cachedStatus              // tenant/secret
	instances map[string]map[string]*instanceBucket // tenant -> instance
}

func newAdmission(cfg Config, state *orchestrator.State) *admission {
	return &admission{perMinute: cfg.MaxUsesPerInstancePerMinute, maxInstances: cfg.MaxInstancesPerTenant, state: state,
		status: map[string]*cachedStatus{}, instances: map[string]map[string]*instanceBucket{}}
}

// errStatusFresh is versionOf's answer for a version that is neither
// current nor previous in a status read less than statusRefresh ago: the
// report is looked at again a moment later (a new version reported just
// after a rotation is not refused), while a flood of unknown versions
// costs at most one status read per statusRefresh.
var errStatusFresh = errors.New("version unknown to a status just read; retry")

// versionOf reports whether rep's version may be counted: it is current
// or previous. since is when the current version became current (zero
// for the previous one or when unknown). An error means the status could
// not be read, or errStatusFresh (count later).
func (a *admission) versionOf(ctx context.Context, rep schemas.UsageReport, now time.Time, retried bool) (ok bool, since time.Time, err error) {
	k := rep.Tenant + "/" + rep.Secret
	a.mu.Lock()
	st := a.status[k]
	a.mu.Unlock()
	fresh := st != nil && now.Sub(st.read) < statusTTL
	known := st != nil && (rep.Version == st.current || rep.Version == st.previous)
	recent := st != nil && now.Sub(st.read) < statusRefresh
	if !known && recent && !retried {
		return false, time.Time{}, errStatusFresh
	}
	// A retried report with a status read since its first delivery is
	// decided on it: a flood of unknown versions reads the status at
	// most once per statusRefresh.
	if st == nil || !fresh || (!known && !recent) {
		s, err := a.state.SecretStatus(ctx, rep.Tenant, rep.Secret)
		if err != nil {
			return false, time.Time{}, fmt.Errorf("read status of %s: %w", k, err)
		}
		st = &cachedStatus{current: s.Version, previous: s.PreviousVersion, read: now}
		if !s.LastCompletedAt.IsZero() {
			st.since = s.LastCompletedAt.Add(-currentGrace)
		}
		a.mu.Lock()
		a.status[k] = st
		a.mu.Unlock()
	}
	switch {
	case st.current == "":
		return false, time.Time{}, nil // no version known: nothing exists to count
	case rep.Version == st.current:
		return true, st.since, nil
	case rep.Version == st.previous:
		return true, time.Time{}, nil
	}
	return false, time.Time{}, nil
}

// take returns how many of n uses the instance may still report now (0
// to n), and why the rest are refused.
func (a *admission) take(tenant, instance string, n int64, now time.Time) (int64, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	m := a.instances[tenant]
	if m == nil {
		m = map[string]*instanceBucket{}
		a.instances[tenant] = m
	}
	b := m[instance]
	if b == nil {
		if len(m) >= a.maxInstances {
			for name, o := range m { // forget the idle ones first
				if now.Sub(o.last) > instanceIdle {
					delete(m, name)
				}
			}
		}
		if len(m) >= a.maxInstances {
			return 0, refusedInstances
		}
		burst := int(min(a.perMinute, int64(1<<30)))
		b = &instanceBucket{lim: rate.NewLimiter(rate.Limit(float64(a.perMinute)/60), burst)}
		m[instance] = b
	}
	b.last = now
	left := int64(b.lim.TokensAt(now))
	got := min(n, max(left, 0))
	if got > 0 && !b.lim.AllowN(now, int(got)) {
		got = 0
	}
	if got < n {
		return got, refusedRate
	}
	return got, ""
}
