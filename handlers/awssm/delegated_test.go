package awssm_test

import (
	"context"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/handlers/awssm"
	"github.com/rekey-dev/rekey/handlers/awssm/awssmtest"
	"github.com/rekey-dev/rekey/schemas"
)

// delegatedSecret seeds a secret with a rotation function and returns its
// ref in mode delegated, its name and first version.
func delegatedSecret(t *testing.T, s *awssmtest.Server, secret string) (handlers.SecretRef, string, string) {
	t.Helper()
	ref, v1 := seed(t, s, "acme", secret)
	ref.Options = map[string]string{awssm.OptMode: awssm.ModeDelegated}
	name := "/tenants/acme/" + secret
	enableRotation(t, s, name)
	return ref, name, v1
}

// blockingLambda runs then once release is closed.
func blockingLambda(release <-chan struct{}, then awssmtest.Lambda) awssmtest.Lambda {
	return func(ctx context.Context, r awssmtest.RotationRequest) error {
		select {
		case <-release:
			return then(ctx, r)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// delegated is a delegated secret whose rotation Lambda runs then once
// the test lets it.
type delegated struct {
	s       *awssmtest.Server
	b       *awssm.Backend
	ref     handlers.SecretRef
	name    string
	v1      string
	release chan struct{}
}

// newDelegated makes the secret; with notify, the emulator's rotation
// events reach the backend through Notify and polling is too slow to
// matter.
func newDelegated(t *testing.T, secret string, then awssmtest.Lambda, notify bool) *delegated {
	t.Helper()
	d := &delegated{release: make(chan struct{})}
	d.s, d.b = start(t, nil, func(c *awssm.Config) {
		if notify {
			c.PollInterval = time.Hour
		}
	})
	d.ref, d.name, d.v1 = delegatedSecret(t, d.s, secret)
	d.s.SetLambda(blockingLambda(d.release, then))
	if notify {
		d.s.OnRotation(func(ev awssmtest.RotationEvent) { d.b.Notify(change(d.ref, ev)) })
	}
	return d
}

// finish runs Finish, lets the Lambda run once Finish has described the
// secret polls times, and returns Finish's result.
func (d *delegated) finish(t *testing.T, v handlers.Version, polls int) error {
	t.Helper()
	described := d.s.Calls("DescribeSecret")
	done := make(chan error, 1)
	go func() { done <- d.b.Finish(t.Context(), d.ref, v) }()
	require.Eventually(t, func() bool { return d.s.Calls("DescribeSecret") >= described+polls }, 10*time.Second, 5*time.Millisecond, "Finish did not describe the secret")
	close(d.release)
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Finish did not return after the rotation ended")
		return nil
	}
}

// TestDelegatedPolling: Create starts the rotation with RotateSecret, Set
// and Test do nothing, and Finish sees the new version AWSCURRENT by
// describing the secret every poll_interval.
func TestDelegatedPolling(t *testing.T) {
	t.Parallel()
	d := newDelegated(t, "lambda-polled", awssmtest.DefaultLambda, false)
	ctx := t.Context()
	d.s.ResetCalls()

	tok := schemas.NewULID() + "-1-1"
	v, err := d.b.Create(ctx, d.ref, tok)
	require.NoError(t, err)
	require.Equal(t, awssm.VersionID(tok), v.ID)
	require.Equal(t, 1, d.s.Calls("RotateSecret"))
	again, err := d.b.Create(ctx, d.ref, tok)
	require.NoError(t, err, "a retried Create while the rotation runs")
	require.Equal(t, v.ID, again.ID)
	require.NoError(t, d.b.Set(ctx, d.ref, v))
	require.NoError(t, d.b.Test(ctx, d.ref, v))
	require.Zero(t, d.s.Calls("PutSecretValue")+d.s.Calls("GetSecretValue"), "rekey neither writes nor reads the value")

	require.NoError(t, d.finish(t, v, 3))
	require.Equal(t, map[string][]string{d.v1: {"AWSPREVIOUS"}, v.ID: {"AWSCURRENT"}}, d.s.Stages(d.name))
	cur, err := d.b.Current(ctx, d.ref)
	require.NoError(t, err)
	require.Equal(t, v.ID, cur.ID)
	require.NoError(t, d.b.Finish(ctx, d.ref, v), "Finish again")
}

// TestDelegatedNotify: with polling too slow to matter, Finish returns
// when Notify passes the RotationSucceeded event; changes to other secrets
// and backends do not wake it.
func TestDelegatedNotify(t *testing.T) {
	t.Parallel()
	d := newDelegated(t, "lambda-notified", awssmtest.DefaultLambda, true)
	v, err := d.b.Create(t.Context(), d.ref, schemas.NewULID())
	require.NoError(t, err)
	notOurs := awssmtest.RotationEvent{Event: awssmtest.EventRotationFailed, Error: "not ours"}
	d.b.Notify(change(handlers.SecretRef{Tenant: "acme", Secret: "other"}, notOurs))
	vaultChange := change(d.ref, notOurs)
	vaultChange.Backend = "vault"
	d.b.Notify(vaultChange)
	require.NoError(t, d.finish(t, v, 1))
	require.Equal(t, map[string][]string{d.v1: {"AWSPREVIOUS"}, v.ID: {"AWSCURRENT"}}, d.s.Stages(d.name))
}

// TestDelegatedNotifyFailed: a RotationFailed event fails Finish with the
// provider's message (retryable); Rollback then takes AWSPENDING off the
// version, and the next rotation can start.
func TestDelegatedNotifyFailed(t *testing.T) {
	t.Parallel()
	d := newDelegated(t, "lambda-failed", awssmtest.FailingLambda("setSecret: the database refused the new password"), true)
	s, b, ref, ctx := d.s, d.b, d.ref, t.Context()
	v, err := b.Create(ctx, ref, schemas.NewULID())
	require.NoError(t, err)
	err = d.finish(t, v, 1)
	require.ErrorContains(t, err, "setSecret: the database refused the new password")
	require.ErrorContains(t, err, "RotationFailed")
	require.ErrorIs(t, err, awssm.ErrRotationFailed)
	require.NotErrorIs(t, err, handlers.ErrPermanent)
	require.Equal(t, map[string][]string{d.v1: {"AWSCURRENT"}, v.ID: {"AWSPENDING"}}, s.Stages(d.name))

	staged, err := b.Staged(ctx, ref)
	require.NoError(t, err)
	require.Len(t, staged, 1)
	require.Equal(t, v.ID, staged[0].ID)
	require.Equal(t, v.Token, staged[0].Token)
	require.NoError(t, b.Rollback(ctx, ref, v))
	require.Equal(t, map[string][]string{d.v1: {"AWSCURRENT"}}, s.Stages(d.name))

	// A Finish that starts after the event arrived fails as well.
	s.SetLambda(awssmtest.FailingLambda("still refused"))
	v2, err := b.Create(ctx, ref, schemas.NewULID())
	require.NoError(t, err)
	s.WaitRotations()
	require.ErrorContains(t, b.Finish(ctx, ref, v2), "still refused")
	require.NoError(t, b.Rollback(ctx, ref, v2))

	s.SetLambda(awssmtest.DefaultLambda)
	v3, err := b.Create(ctx, ref, schemas.NewULID())
	require.NoError(t, err)
	require.NoError(t, b.Finish(ctx, ref, v3))
	require.Equal(t, map[string][]string{d.v1: {"AWSPREVIOUS"}, v3.ID: {"AWSCURRENT"}}, s.Stages(d.name))
}

// TestDelegatedTimeout: a rotation that does not end within
// delegated_timeout fails Finish.
func TestDelegatedTimeout(t *testing.T) {
	t.Parallel()
	s, b := start(t, nil, func(c *awssm.Config) { c.DelegatedTimeout = 300 * time.Millisecond })
	cfg := b.Config()
	ctx := t.Context()
	ref, name, v1 := delegatedSecret(t, s, "lambda-stuck")
	s.SetLambda(blockingLambda(make(chan struct{}), awssmtest.DefaultLambda)) // never released

	v, err := b.Create(ctx, ref, schemas.NewULID())
	require.NoError(t, err)
	start := time.Now()
	err = b.Finish(ctx, ref, v)
	require.ErrorContains(t, err, "did not finish within 300ms (delegated_timeout)")
	require.GreaterOrEqual(t, time.Since(start), 300*time.Millisecond)
	require.NoError(t, b.Rollback(ctx, ref, v), "nothing staged: the Lambda never made the version")
	require.Equal(t, map[string][]string{v1: {"AWSCURRENT"}}, s.Stages(name))

	d, ok := b.StepTimeout(ref, handlers.StepFinish)
	require.True(t, ok)
	require.Equal(t, cfg.DelegatedTimeout+cfg.Timeout, d, "the rotator must wait longer than delegated_timeout for Finish")
	_, ok = b.StepTimeout(ref, handlers.StepCreate)
	require.False(t, ok)
}

// TestDelegatedForeignPending: a rotation that Secrets Manager started on
// its own schedule blocks rekey's with a retryable error.
func TestDelegatedForeignPending(t *testing.T) {
	t.Parallel()
	s, b := start(t, nil, nil)
	ctx := t.Context()
	ref, name, _ := delegatedSecret(t, s, "lambda-scheduled")
	s.SetLambda(awssmtest.FailingLambda("scheduled rotation failed"))
	_, err := s.Client(t).RotateSecret(ctx, &secretsmanager.RotateSecretInput{SecretId: &name}) // Secrets Manager's own run
	require.NoError(t, err)
	s.WaitRotations()
	s.ResetCalls()
	_, err = b.Create(ctx, ref, schemas.NewULID())
	require.ErrorContains(t, err, "which rekey did not make")
	require.NotErrorIs(t, err, handlers.ErrPermanent)
	require.Zero(t, writeCalls(s))
}
