// Package backendtest is the one test suite that every handlers.Backend must
// pass. A backend's own test calls Run with a function that makes a fresh
// fixture (a distinct secret) for each subtest, and declares the optional
// features the backend has; the subtests of an undeclared feature do not
// run, and a declared feature the fixture cannot serve fails them:
//
//	func TestBackend(t *testing.T) {
//		b := newBackend(t)
//		backendtest.Run(t, backendtest.Features{Read: true}, func(t *testing.T) backendtest.Fixture {
//			return backendtest.Fixture{Backend: b, Ref: uniqueRef(t), Read: b.Read}
//		})
//	}
package backendtest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/schemas"
)

// Fixture is one secret of a backend under test.
type Fixture struct {
	// Backend under test.
	Backend handlers.Backend
	// Ref names a secret that no other subtest uses. It may have a current
	// version already; if not, the suite makes one with Ensure (when the
	// backend is a handlers.Provisioner) or with a first rotation.
	Ref handlers.SecretRef
	// Read returns the live version and value; required when Features.Read
	// is declared, and left nil otherwise.
	Read func(ctx context.Context, ref handlers.SecretRef) (version string, value []byte, err error)
}

// Features are what a backend can do beyond handlers.Backend. The suite
// runs the subtests (and the checks inside shared subtests) of the
// declared ones only, and fails when a declared one is missing.
type Features struct {
	// Read: the fixture's Read returns the live value, so the suite checks
	// values as well as version ids.
	Read bool
	// Ensure: the backend is a handlers.Provisioner.
	Ensure bool
}

// check fails t when f does not serve a declared feature, or has a Read
// that no feature declares (its value checks would silently not run).
func (fs Features) check(t *testing.T, f Fixture) {
	t.Helper()
	if fs.Read != (f.Read != nil) {
		t.Fatalf("backendtest: Features.Read is %v but the fixture's Read is set: %v", fs.Read, f.Read != nil)
	}
	if _, ok := f.Backend.(handlers.Provisioner); ok != fs.Ensure {
		t.Fatalf("backendtest: Features.Ensure is %v but %s is a handlers.Provisioner: %v", fs.Ensure, f.Backend.Name(), ok)
	}
}

// Timeout bounds each subtest.
var Timeout = 60 * time.Second

// Run runs the suite for a backend with features. Subtests run in
// parallel, each with its own fixture, so newFixture must be safe to call
// concurrently.
func Run(t *testing.T, features Features, newFixture func(t *testing.T) Fixture) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, ctx context.Context, f Fixture)
		// need is the feature the subtest is about; nil: every backend.
		need func(Features) bool
	}{
		{"FullSagaPromotes", testFullSagaPromotes, nil},
		{"NewValueDiffers", testNewValueDiffers, func(fs Features) bool { return fs.Read }},
		{"CreateIsIdempotent", testCreateIsIdempotent, nil},
		{"ConcurrentCreateSameToken", testConcurrentCreateSameToken, nil},
		{"RetryAfterFinish", testRetryAfterFinish, nil},
		{"RollbackRemovesStaged", testRollbackRemovesStaged, nil},
		{"RollbackGoneIsNotAnError", testRollbackGone, nil},
		{"FinishTwiceIsIdempotent", testFinishTwice, nil},
		{"FinishUnknownFails", testFinishUnknown, nil},
		{"StagedListsExactlyStaged", testStagedListsExactly, nil},
		{"ConcurrentCreatesThenFinishOne", testConcurrentCreates, nil},
		{"CrashedRotationRecovered", testCrashedRotation, nil},
		{"SuccessiveRotations", testSuccessiveRotations, nil},
		{"EnsureIsIdempotent", testEnsure, func(fs Features) bool { return fs.Ensure }},
		{"ConcurrentEnsure", testConcurrentEnsure, func(fs Features) bool { return fs.Ensure }},
	}
	for _, tc := range tests {
		if tc.need != nil && !tc.need(features) {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), Timeout)
			defer cancel()
			f := newFixture(t)
			features.check(t, f)
			tc.fn(t, ctx, f)
		})
	}
}

// token returns a fresh idempotency token shaped like the ones workers pass
// (a request id: the ULID of the request event). name only documents the
// call site.
func token(t *testing.T, name string) string {
	t.Helper()
	_ = name
	return schemas.NewULID()
}

// baseline makes sure the fixture's secret has a current version and no
// staged one, and returns the current version.
func baseline(t *testing.T, ctx context.Context, f Fixture) handlers.Version {
	t.Helper()
	b, ref := f.Backend, f.Ref
	cur, err := b.Current(ctx, ref)
	if errors.Is(err, handlers.ErrNotFound) {
		if p, ok := b.(handlers.Provisioner); ok {
			_, _, err = p.Ensure(ctx, ref)
			require.NoError(t, err, "Ensure")
		} else {
			rotate(t, ctx, f, token(t, "first"))
		}
		cur, err = b.Current(ctx, ref)
	}
	require.NoError(t, err, "Current of the fixture's secret")
	require.NotEmpty(t, cur.ID, "Current returned an empty version id")
	requireStaged(t, ctx, f) // a fresh fixture has nothing staged
	return cur
}

// rotate runs the whole saga with tok and returns the new version.
func rotate(t *testing.T, ctx context.Context, f Fixture, tok string) handlers.Version {
	t.Helper()
	b, ref := f.Backend, f.Ref
	v, err := b.Create(ctx, ref, tok)
	require.NoError(t, err, "Create")
	require.NotEmpty(t, v.ID, "Create returned an empty version id")
	require.NoError(t, b.Set(ctx, ref, v), "Set v%s", v.ID)
	require.NoError(t, b.Test(ctx, ref, v), "Test v%s", v.ID)
	require.NoError(t, b.Finish(ctx, ref, v), "Finish v%s", v.ID)
	return v
}

func requireCurrent(t *testing.T, ctx context.Context, f Fixture, want string) {
	t.Helper()
	cur, err := f.Backend.Current(ctx, f.Ref)
	require.NoError(t, err, "Current")
	require.Equal(t, want, cur.ID, "current version")
}

// requireStaged checks that exactly the versions with ids want are staged.
func requireStaged(t *testing.T, ctx context.Context, f Fixture, want ...string) []handlers.Version {
	t.Helper()
	staged, err := f.Backend.Staged(ctx, f.Ref)
	require.NoError(t, err, "Staged")
	got := make([]string, 0, len(staged))
	for _, v := range staged {
		got = append(got, v.ID)
	}
	require.ElementsMatch(t, want, got, "staged versions")
	return staged
}

func read(t *testing.T, ctx context.Context, f Fixture) (string, []byte) {
	t.Helper()
	version, value, err := f.Read(ctx, f.Ref)
	require.NoError(t, err, "Read")
	require.NotEmpty(t, value, "Read returned an empty value")
	return version, value
}

func testFullSagaPromotes(t *testing.T, ctx context.Context, f Fixture) {
	before := baseline(t, ctx, f)
	b, ref := f.Backend, f.Ref

	v, err := b.Create(ctx, ref, token(t, "saga"))
	require.NoError(t, err)
	require.NotEqual(t, before.ID, v.ID, "Create must make a new version")
	requireCurrent(t, ctx, f, before.ID) // staged, not live
	requireStaged(t, ctx, f, v.ID)

	require.NoError(t, b.Set(ctx, ref, v))
	require.NoError(t, b.Test(ctx, ref, v))
	requireCurrent(t, ctx, f, before.ID) // still not live before Finish

	require.NoError(t, b.Finish(ctx, ref, v))
	requireCurrent(t, ctx, f, v.ID)
	requireStaged(t, ctx, f) // nothing left staged
}

func testNewValueDiffers(t *testing.T, ctx context.Context, f Fixture) {
	before := baseline(t, ctx, f)
	oldVersion, oldValue := read(t, ctx, f)
	require.Equal(t, before.ID, oldVersion, "Read and Current disagree")

	v, err := f.Backend.Create(ctx, f.Ref, token(t, "differs"))
	require.NoError(t, err)
	_, value := read(t, ctx, f)
	require.Equal(t, oldValue, value, "a staged value must not be live before Finish")

	require.NoError(t, f.Backend.Set(ctx, f.Ref, v))
	require.NoError(t, f.Backend.Test(ctx, f.Ref, v))
	require.NoError(t, f.Backend.Finish(ctx, f.Ref, v))
	version, value := read(t, ctx, f)
	require.Equal(t, v.ID, version, "Read after Finish")
	require.NotEqual(t, oldValue, value, "rotation kept the old value")
}

func testCreateIsIdempotent(t *testing.T, ctx context.Context, f Fixture) {
	before := baseline(t, ctx, f)
	tok := token(t, "idem")
	v1, err := f.Backend.Create(ctx, f.Ref, tok)
	require.NoError(t, err)
	v2, err := f.Backend.Create(ctx, f.Ref, tok)
	require.NoError(t, err)
	require.Equal(t, v1.ID, v2.ID, "Create with the same token made a second version")
	staged := requireStaged(t, ctx, f, v1.ID)
	require.Equal(t, tok, staged[0].Token, "Staged lost the token")
	requireCurrent(t, ctx, f, before.ID)

	// A different token is a different version.
	v3, err := f.Backend.Create(ctx, f.Ref, token(t, "other"))
	require.NoError(t, err)
	require.NotEqual(t, v1.ID, v3.ID, "Create with another token returned the same version")
	requireStaged(t, ctx, f, v1.ID, v3.ID)
}

func testConcurrentCreateSameToken(t *testing.T, ctx context.Context, f Fixture) {
	before := baseline(t, ctx, f)
	const n = 6
	tok := token(t, "same")
	ids := make([]string, n)
	var g errgroup.Group
	for i := range n {
		g.Go(func() error {
			v, err := f.Backend.Create(ctx, f.Ref, tok)
			ids[i] = v.ID
			return err
		})
	}
	require.NoError(t, g.Wait())
	for _, id := range ids {
		require.Equal(t, ids[0], id, "concurrent Create with one token made several versions: %v", ids)
	}
	requireStaged(t, ctx, f, ids[0])
	requireCurrent(t, ctx, f, before.ID)
}

// testRetryAfterFinish is a worker that crashed after Finish but before it
// acked the request, and retries the whole saga with the same token.
func testRetryAfterFinish(t *testing.T, ctx context.Context, f Fixture) {
	baseline(t, ctx, f)
	tok := token(t, "retry")
	v := rotate(t, ctx, f, tok)

	again := rotate(t, ctx, f, tok)
	require.Equal(t, v.ID, again.ID, "a retried rotation made a new version")
	requireCurrent(t, ctx, f, v.ID)
	requireStaged(t, ctx, f)
}

func testRollbackRemovesStaged(t *testing.T, ctx context.Context, f Fixture) {
	before := baseline(t, ctx, f)
	var oldValue []byte
	if f.Read != nil {
		_, oldValue = read(t, ctx, f)
	}
	v, err := f.Backend.Create(ctx, f.Ref, token(t, "rollback"))
	require.NoError(t, err)
	require.NoError(t, f.Backend.Set(ctx, f.Ref, v))
	requireStaged(t, ctx, f, v.ID)

	require.NoError(t, f.Backend.Rollback(ctx, f.Ref, v))
	requireStaged(t, ctx, f)
	requireCurrent(t, ctx, f, before.ID)
	if f.Read != nil {
		version, value := read(t, ctx, f)
		require.Equal(t, before.ID, version)
		require.Equal(t, oldValue, value, "Rollback changed the live value")
	}
	// The next rotation still works.
	next := rotate(t, ctx, f, token(t, "after-rollback"))
	require.NotEqual(t, before.ID, next.ID)
	requireCurrent(t, ctx, f, next.ID)
}

func testRollbackGone(t *testing.T, ctx context.Context, f Fixture) {
	before := baseline(t, ctx, f)
	v, err := f.Backend.Create(ctx, f.Ref, token(t, "gone"))
	require.NoError(t, err)
	require.NoError(t, f.Backend.Rollback(ctx, f.Ref, v))
	require.NoError(t, f.Backend.Rollback(ctx, f.Ref, v), "second Rollback of the same version")
	require.NoError(t, f.Backend.Rollback(ctx, f.Ref, handlers.Version{ID: "987654321", Token: "never-created"}),
		"Rollback of a version that never existed")
	requireCurrent(t, ctx, f, before.ID)
	requireStaged(t, ctx, f)
}

func testFinishTwice(t *testing.T, ctx context.Context, f Fixture) {
	baseline(t, ctx, f)
	v := rotate(t, ctx, f, token(t, "twice"))
	var value []byte
	if f.Read != nil {
		_, value = read(t, ctx, f)
	}
	require.NoError(t, f.Backend.Finish(ctx, f.Ref, v), "second Finish")
	requireCurrent(t, ctx, f, v.ID)
	requireStaged(t, ctx, f)
	if f.Read != nil {
		version, again := read(t, ctx, f)
		require.Equal(t, v.ID, version)
		require.Equal(t, value, again, "second Finish changed the value")
	}
}

func testFinishUnknown(t *testing.T, ctx context.Context, f Fixture) {
	before := baseline(t, ctx, f)
	err := f.Backend.Finish(ctx, f.Ref, handlers.Version{ID: "987654321", Token: "never-created"})
	require.Error(t, err, "Finish of a version that does not exist")
	requireCurrent(t, ctx, f, before.ID)

	v, err := f.Backend.Create(ctx, f.Ref, token(t, "rolled-back"))
	require.NoError(t, err)
	require.NoError(t, f.Backend.Rollback(ctx, f.Ref, v))
	require.Error(t, f.Backend.Finish(ctx, f.Ref, v), "Finish of a rolled back version")
	requireCurrent(t, ctx, f, before.ID)
}

func testStagedListsExactly(t *testing.T, ctx context.Context, f Fixture) {
	before := baseline(t, ctx, f)
	ta, tb := token(t, "a"), token(t, "b")
	va, err := f.Backend.Create(ctx, f.Ref, ta)
	require.NoError(t, err)
	vb, err := f.Backend.Create(ctx, f.Ref, tb)
	require.NoError(t, err)

	staged := requireStaged(t, ctx, f, va.ID, vb.ID)
	tokens := map[string]string{}
	for _, v := range staged {
		tokens[v.ID] = v.Token
		require.NotEqual(t, before.ID, v.ID, "the current version is listed as staged")
	}
	require.Equal(t, map[string]string{va.ID: ta, vb.ID: tb}, tokens, "Staged tokens")

	require.NoError(t, f.Backend.Set(ctx, f.Ref, va))
	require.NoError(t, f.Backend.Test(ctx, f.Ref, va))
	require.NoError(t, f.Backend.Finish(ctx, f.Ref, va))
	requireStaged(t, ctx, f, vb.ID)

	require.NoError(t, f.Backend.Rollback(ctx, f.Ref, vb))
	requireStaged(t, ctx, f)
	requireCurrent(t, ctx, f, va.ID)
}

func testConcurrentCreates(t *testing.T, ctx context.Context, f Fixture) {
	before := baseline(t, ctx, f)
	const n = 5
	versions := make([]handlers.Version, n)
	var g errgroup.Group
	for i := range n {
		g.Go(func() error {
			v, err := f.Backend.Create(ctx, f.Ref, token(t, fmt.Sprintf("conc%d", i)))
			versions[i] = v
			return err
		})
	}
	require.NoError(t, g.Wait())
	ids := make([]string, n)
	for i, v := range versions {
		ids[i] = v.ID
	}
	require.Len(t, slices.Compact(slices.Sorted(slices.Values(ids))), n, "concurrent Creates returned duplicate versions: %v", ids)
	requireStaged(t, ctx, f, ids...)
	requireCurrent(t, ctx, f, before.ID)

	// One wins; the others are left staged, then rolled back concurrently.
	win := versions[n/2]
	require.NoError(t, f.Backend.Set(ctx, f.Ref, win))
	require.NoError(t, f.Backend.Test(ctx, f.Ref, win))
	require.NoError(t, f.Backend.Finish(ctx, f.Ref, win))
	requireCurrent(t, ctx, f, win.ID)
	rest := slices.DeleteFunc(slices.Clone(ids), func(id string) bool { return id == win.ID })
	requireStaged(t, ctx, f, rest...)

	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, v := range versions {
		if v.ID == win.ID {
			continue
		}
		wg.Go(func() { errs[i] = f.Backend.Rollback(ctx, f.Ref, v) })
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...), "concurrent Rollback")
	requireStaged(t, ctx, f)
	requireCurrent(t, ctx, f, win.ID)
	if f.Read != nil {
		version, _ := read(t, ctx, f)
		require.Equal(t, win.ID, version)
	}
}

// testCrashedRotation is a worker that died after Create: the version it
// made is known only to the backend. A new worker finds it with Staged, by
// its token, and rolls it back.
func testCrashedRotation(t *testing.T, ctx context.Context, f Fixture) {
	before := baseline(t, ctx, f)
	tok := token(t, "crashed")
	func() {
		v, err := f.Backend.Create(ctx, f.Ref, tok)
		require.NoError(t, err)
		require.NoError(t, f.Backend.Set(ctx, f.Ref, v))
		// crash: v is lost with this goroutine's memory
	}()

	staged, err := f.Backend.Staged(ctx, f.Ref)
	require.NoError(t, err)
	require.Len(t, staged, 1, "the crashed rotation's version is not listed as staged")
	require.Equal(t, tok, staged[0].Token, "Staged lost the crashed rotation's token")
	requireCurrent(t, ctx, f, before.ID)

	require.NoError(t, f.Backend.Rollback(ctx, f.Ref, staged[0]))
	requireStaged(t, ctx, f)
	requireCurrent(t, ctx, f, before.ID)
}

func testSuccessiveRotations(t *testing.T, ctx context.Context, f Fixture) {
	before := baseline(t, ctx, f)
	seen := map[string]bool{before.ID: true}
	values := map[string]bool{}
	if f.Read != nil {
		_, v := read(t, ctx, f)
		values[string(v)] = true
	}
	for i := range 4 {
		v := rotate(t, ctx, f, token(t, fmt.Sprintf("succ%d", i)))
		require.False(t, seen[v.ID], "version id %s was reused", v.ID)
		seen[v.ID] = true
		requireCurrent(t, ctx, f, v.ID)
		if f.Read != nil {
			version, value := read(t, ctx, f)
			require.Equal(t, v.ID, version)
			require.False(t, values[string(value)], "rotation %d repeated an earlier value", i)
			values[string(value)] = true
		}
	}
	requireStaged(t, ctx, f)
}

func testEnsure(t *testing.T, ctx context.Context, f Fixture) {
	p := f.Backend.(handlers.Provisioner) // Features.check made sure
	first, created, err := p.Ensure(ctx, f.Ref)
	require.NoError(t, err, "Ensure")
	require.NotEmpty(t, first.ID)
	if created {
		requireCurrent(t, ctx, f, first.ID)
	}
	for range 2 {
		again, created, err := p.Ensure(ctx, f.Ref)
		require.NoError(t, err, "Ensure again")
		require.False(t, created, "Ensure of an existing secret reported created")
		require.Equal(t, first.ID, again.ID, "Ensure again returned another version")
	}
	requireCurrent(t, ctx, f, first.ID)
	requireStaged(t, ctx, f)

	// After a rotation, Ensure leaves the new version alone.
	v := rotate(t, ctx, f, token(t, "ensure"))
	again, created, err := p.Ensure(ctx, f.Ref)
	require.NoError(t, err)
	require.False(t, created)
	require.Equal(t, v.ID, again.ID)
	requireCurrent(t, ctx, f, v.ID)
}

// testConcurrentEnsure: replicas starting together all Ensure the same
// secret; at most one creates it and all agree on the version.
func testConcurrentEnsure(t *testing.T, ctx context.Context, f Fixture) {
	p := f.Backend.(handlers.Provisioner) // Features.check made sure
	const n = 6
	versions := make([]handlers.Version, n)
	created := make([]bool, n)
	var g errgroup.Group
	for i := range n {
		g.Go(func() error {
			var err error
			versions[i], created[i], err = p.Ensure(ctx, f.Ref)
			return err
		})
	}
	require.NoError(t, g.Wait())
	ncreated := 0
	for i := range n {
		require.Equal(t, versions[0].ID, versions[i].ID, "concurrent Ensure returned different versions")
		if created[i] {
			ncreated++
		}
	}
	require.LessOrEqual(t, ncreated, 1, "more than one concurrent Ensure created the secret")
	requireCurrent(t, ctx, f, versions[0].ID)
	requireStaged(t, ctx, f)
}
