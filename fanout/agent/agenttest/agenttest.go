// Package agenttest is the one conformance suite that every agent.Fetcher
// must pass, run where each implementation's tests live against the real
// source it reads (rekey's fetch server over NATS, a Vault dev server,
// the Secrets Manager emulator):
//
//	func TestFetcherConformance(t *testing.T) {
//		agenttest.Run(t, agenttest.Source{
//			Fetcher: f, Tenant: "acme", Other: "globex",
//			New:     func(t testing.TB) string { return put(t, uniq("secret")) },
//			Rotate:  func(t testing.TB, secret string) { put(t, secret) },
//		})
//	}
//
// It imports the agent, schemas and the standard library only, so the
// agent's module stays light.
package agenttest

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rekey-dev/rekey/fanout/agent"
)

// Source is a Fetcher and the source it reads, as a test drives it.
type Source struct {
	// Fetcher under test.
	Fetcher agent.Fetcher
	// Tenant whose secrets New makes.
	Tenant string
	// Other is another tenant the Fetcher is asked about: it must never
	// get Tenant's values.
	Other string
	// New makes a secret of Tenant that has a live version and returns
	// its name; each call makes a secret no other subtest uses. Values
	// must be long enough not to appear in an error by chance.
	New func(t testing.TB) string
	// Missing is a secret of Tenant without a live version (never
	// written, or deleted); fetching it is agent.ErrNotFound.
	Missing string

	// Optional features: a subtest runs only when its feature is set.

	// Rotate makes a new live version, with a new value, of a secret New
	// made.
	Rotate func(t testing.TB, secret string)
	// Dynamic: every fetch makes new credentials (a dynamic database
	// role), so two fetches return different versions; otherwise they
	// return the same version and value until the secret changes.
	Dynamic bool
	// Revoke makes the source refuse Tenant from then on; fetches then
	// fail with agent.ErrRevoked. It runs last.
	Revoke func(t testing.TB)
	// Timeout bounds each fetch; 0 is 30s.
	Timeout time.Duration
}

// Run runs the suite against s.
func Run(t *testing.T, s Source) {
	t.Helper()
	switch {
	case s.Fetcher == nil:
		t.Fatal("agenttest: Source.Fetcher is nil")
	case s.Tenant == "" || s.Other == "" || s.Tenant == s.Other:
		t.Fatalf("agenttest: Source.Tenant %q and Other %q must be two tenants", s.Tenant, s.Other)
	case s.New == nil || s.Missing == "":
		t.Fatal("agenttest: Source.New and Missing are required")
	}
	if s.Timeout == 0 {
		s.Timeout = 30 * time.Second
	}
	r := &run{Source: s}
	tests := []struct {
		name string
		fn   func(t *testing.T)
		on   bool
	}{
		{"ReadsLiveVersion", r.testReads, true},
		{"SameOrNewVersionEachFetch", r.testRepeat, true},
		{"MissingIsNotFound", r.testMissing, true},
		{"InvalidNamesRefused", r.testInvalid, true},
		{"OtherTenantGetsNoValue", r.testOtherTenant, true},
		{"CanceledContext", r.testCanceled, true},
		{"Concurrent", r.testConcurrent, true},
		{"RotationSeen", r.testRotation, s.Rotate != nil},
		{"RevokedIsErrRevoked", r.testRevoked, s.Revoke != nil}, // last: it revokes the tenant
	}
	for _, tc := range tests {
		if tc.on {
			t.Run(tc.name, tc.fn)
		}
	}
	t.Run("ErrorsHoldNoValue", r.testErrorsHoldNoValue)
}

// run is one run of the suite: the values fetched and the errors seen,
// for the check that no error holds a value.
type run struct {
	Source
	mu     sync.Mutex
	values [][]byte
	errs   []error
}

func (r *run) fetch(tenant, secret string) (agent.Secret, error) {
	ctx, cancel := context.WithTimeout(context.Background(), r.Timeout)
	defer cancel()
	return r.fetchCtx(ctx, tenant, secret)
}

func (r *run) fetchCtx(ctx context.Context, tenant, secret string) (agent.Secret, error) {
	s, err := r.Fetcher.Fetch(ctx, tenant, secret)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.errs = append(r.errs, err)
	} else if len(s.Value) > 0 {
		r.values = append(r.values, bytes.Clone(s.Value))
	}
	return s, err
}

// live fetches a secret that must be readable.
func (r *run) live(t *testing.T, secret string) agent.Secret {
	t.Helper()
	s, err := r.fetch(r.Tenant, secret)
	if err != nil {
		t.Fatalf("Fetch %s/%s: %v", r.Tenant, secret, err)
	}
	if s.Version == "" {
		t.Fatalf("Fetch %s/%s returned an empty version", r.Tenant, secret)
	}
	if len(s.Value) == 0 {
		t.Fatalf("Fetch %s/%s returned an empty value", r.Tenant, secret)
	}
	return s
}

func (r *run) testReads(t *testing.T) {
	r.live(t, r.New(t))
}

func (r *run) testRepeat(t *testing.T) {
	secret := r.New(t)
	a, b := r.live(t, secret), r.live(t, secret)
	switch {
	case r.Dynamic && a.Version == b.Version:
		t.Errorf("two fetches of dynamic credentials returned the same version %s", a.Version)
	case !r.Dynamic && a.Version != b.Version:
		t.Errorf("two fetches of an unchanged secret returned versions %s and %s", a.Version, b.Version)
	case !r.Dynamic && !bytes.Equal(a.Value, b.Value):
		t.Errorf("two fetches of an unchanged secret (version %s) returned different values", a.Version)
	}
}

func (r *run) testMissing(t *testing.T) {
	s, err := r.fetch(r.Tenant, r.Missing)
	if !errors.Is(err, agent.ErrNotFound) {
		t.Fatalf("Fetch %s/%s: want agent.ErrNotFound, got %v", r.Tenant, r.Missing, err)
	}
	if len(s.Value) > 0 {
		t.Error("an error came with a value")
	}
}

// testInvalid: names that are no rekey ids are refused, never turned into
// a path or a subject.
func (r *run) testInvalid(t *testing.T) {
	secret := r.New(t)
	for _, c := range []struct{ tenant, secret string }{
		{r.Tenant, ""}, {"", secret}, {r.Tenant, "../" + secret}, {r.Tenant, secret + "/x"},
		{r.Tenant, secret + ".>"}, {r.Tenant, "*"}, {strings.ToUpper(r.Tenant), secret}, {r.Tenant + "/..", secret},
	} {
		s, err := r.fetch(c.tenant, c.secret)
		if err == nil {
			t.Errorf("Fetch(%q, %q) succeeded (version %s)", c.tenant, c.secret, s.Version)
		}
		if len(s.Value) > 0 {
			t.Errorf("Fetch(%q, %q) returned a value", c.tenant, c.secret)
		}
	}
}

func (r *run) testOtherTenant(t *testing.T) {
	secret := r.New(t)
	mine := r.live(t, secret)
	s, err := r.fetch(r.Other, secret)
	if err == nil && bytes.Equal(s.Value, mine.Value) {
		t.Fatalf("Fetch %s/%s returned %s's value", r.Other, secret, r.Tenant)
	}
}

func (r *run) testCanceled(t *testing.T) {
	secret := r.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := make(chan error, 1)
	go func() {
		_, err := r.fetchCtx(ctx, r.Tenant, secret)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Error("Fetch with a canceled context succeeded")
		}
	case <-time.After(r.Timeout):
		t.Fatalf("Fetch with a canceled context did not return within %s", r.Timeout)
	}
}

func (r *run) testConcurrent(t *testing.T) {
	secret := r.New(t)
	const n = 8
	got := make([]agent.Secret, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { got[i], errs[i] = r.fetch(r.Tenant, secret) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("concurrent Fetch %d: %v", i, errs[i])
		}
		if len(got[i].Value) == 0 {
			t.Fatalf("concurrent Fetch %d returned an empty value", i)
		}
		if !r.Dynamic && (got[i].Version != got[0].Version || !bytes.Equal(got[i].Value, got[0].Value)) {
			t.Errorf("concurrent Fetches of an unchanged secret disagree: versions %s and %s", got[0].Version, got[i].Version)
		}
	}
}

func (r *run) testRotation(t *testing.T) {
	secret := r.New(t)
	before := r.live(t, secret)
	r.Rotate(t, secret)
	after := r.live(t, secret)
	if after.Version == before.Version {
		t.Errorf("after a rotation Fetch still returns version %s", before.Version)
	}
	if bytes.Equal(after.Value, before.Value) {
		t.Errorf("after a rotation Fetch (version %s) returns the old value", after.Version)
	}
}

func (r *run) testRevoked(t *testing.T) {
	secret := r.New(t)
	r.live(t, secret)
	r.Revoke(t)
	s, err := r.fetch(r.Tenant, secret)
	if !errors.Is(err, agent.ErrRevoked) {
		t.Fatalf("Fetch of a revoked tenant's secret: want agent.ErrRevoked, got %v", err)
	}
	if len(s.Value) > 0 {
		t.Error("a revoked tenant got a value")
	}
}

// testErrorsHoldNoValue: no error of the run quotes a value it fetched.
func (r *run) testErrorsHoldNoValue(t *testing.T) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.errs) == 0 || len(r.values) == 0 {
		t.Fatalf("the run saw %d errors and %d values: nothing to check", len(r.errs), len(r.values))
	}
	for _, err := range r.errs {
		for _, v := range r.values {
			if strings.Contains(err.Error(), string(v)) {
				t.Fatalf("an error holds a value: %T", err)
			}
		}
	}
}
