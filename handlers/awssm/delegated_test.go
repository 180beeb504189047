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

// finishAsync runs Finish in a goroutine and returns its result channel.
func finishAsync(ctx context.Context, b *awssm.Backend, ref handlers.SecretRef, v handlers.Version) <-chan error {
	done := make(chan error, 1)
	go func() { done <- b.Finish(ctx, ref, v) }()
	return done
}

// waitCalls waits until the emulator got more than n calls of op.
func waitCalls(t *testing.T, s *awssmtest.Server, op string, n int) {
	t.Helper()
	require.Eventually(t, func() bool { return s.Calls(op) > n }, 10*time.Second, 5*time.Millisecond, "no %s call", op)
}

// blockingLambda is the default Lambda, run once release is closed.
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

// TestDelegatedPolling: Create starts the rotation with RotateSecret, Set
// and Test do nothing, and Finish sees the new version AWSCURRENT by
// describing the secret every poll_interval.
func TestDelegatedPolling(t *testing.T) {
	t.Parallel()
	s := awssmtest.Start(t)
	b := newBackend(t, s, baseConfig(), nil)
	ctx := t.Context()
	ref, name, v1 := delegatedSecret(t, s, "lambda-polled")
	release := make(chan struct{})
	s.SetLambda(blockingLambda(release, awssmtest.DefaultLambda))
	s.ResetCalls()

	tok := schemas.NewULID() + "-1-1"
	v, err := b.Create(ctx, ref, tok)
	require.NoError(t, err)
	require.Equal(t, awssm.VersionID(tok), v.ID)
	require.Equal(t, 1, s.Calls("RotateSecret"))
	again, err := b.Create(ctx, ref, tok)
	require.NoError(t, err, "a retried Create while the rotation runs")
	require.Equal(t, v.ID, again.ID)
	require.NoError(t, b.Set(ctx, ref, v))
	require.NoError(t, b.Test(ctx, ref, v))
	require.Zero(t, s.Calls("PutSecretValue")+s.Calls("GetSecretValue"), "rekey neither writes nor reads the value")

	done := finishAsync(ctx, b, ref, v)
	waitCalls(t, s, "DescribeSecret", s.Calls("DescribeSecret")+2) // polling
	close(release)
	require.NoError(t, <-done)
	require.Equal(t, map[string][]string{v1: {"AWSPREVIOUS"}, v.ID: {"AWSCURRENT"}}, s.Stages(name))
	cur, err := b.Current(ctx, ref)
	require.NoError(t, err)
	require.Equal(t, v.ID, cur.ID)
	require.NoError(t, b.Finish(ctx, ref, v), "Finish again")
}

// TestDelegatedNotify: with polling too slow to matter, Finish returns
// when Notify passes the RotationSucceeded event.
func TestDelegatedNotify(t *testing.T) {
	t.Parallel()
	s := awssmtest.Start(t)
	cfg := baseConfig()
	cfg.PollInterval = time.Hour
	b := newBackend(t, s, cfg, nil)
	ctx := t.Context()
	ref, name, v1 := delegatedSecret(t, s, "lambda-notified")
	release := make(chan struct{})
	s.SetLambda(blockingLambda(release, awssmtest.DefaultLambda))
	s.OnRotation(func(ev awssmtest.RotationEvent) { b.Notify(change(ref, ev)) })

	v, err := b.Create(ctx, ref, schemas.NewULID())
	require.NoError(t, err)
	described := s.Calls("DescribeSecret")
	done := finishAsync(ctx, b, ref, v)
	waitCalls(t, s, "DescribeSecret", described) // Finish looked once and waits
	// Changes to other secrets and backends do not wake it.
	other := change(handlers.SecretRef{Tenant: "acme", Secret: "other"}, awssmtest.RotationEvent{Event: awssmtest.EventRotationFailed, Error: "not ours"})
	b.Notify(other)
	vaultChange := change(ref, awssmtest.RotationEvent{Event: awssmtest.EventRotationFailed, Error: "not ours"})
	vaultChange.Backend = "vault"
	b.Notify(vaultChange)
	close(release)
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Finish did not return after the RotationSucceeded event")
	}
	require.Equal(t, map[string][]string{v1: {"AWSPREVIOUS"}, v.ID: {"AWSCURRENT"}}, s.Stages(name))
}

// TestDelegatedNotifyFailed: a RotationFailed event fails Finish with the
// provider's message (retryable); Rollback then takes AWSPENDING off the
// version, and the next rotation can start.
func TestDelegatedNotifyFailed(t *testing.T) {
	t.Parallel()
	s := awssmtest.Start(t)
	cfg := baseConfig()
	cfg.PollInterval = time.Hour
	b := newBackend(t, s, cfg, nil)
	ctx := t.Context()
	ref, name, v1 := delegatedSecret(t, s, "lambda-failed")
	release := make(chan struct{})
	s.SetLambda(blockingLambda(release, awssmtest.FailingLambda("setSecret: the database refused the new password")))
	s.OnRotation(func(ev awssmtest.RotationEvent) { b.Notify(change(ref, ev)) })

	v, err := b.Create(ctx, ref, schemas.NewULID())
	require.NoError(t, err)
	done := finishAsync(ctx, b, ref, v)
	close(release)
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Finish did not return after the RotationFailed event")
	}
	require.ErrorContains(t, err, "setSecret: the database refused the new password")
	require.ErrorContains(t, err, "RotationFailed")
	require.NotErrorIs(t, err, handlers.ErrPermanent)
	require.Equal(t, map[string][]string{v1: {"AWSCURRENT"}, v.ID: {"AWSPENDING"}}, s.Stages(name))

	staged, err := b.Staged(ctx, ref)
	require.NoError(t, err)
	require.Len(t, staged, 1)
	require.Equal(t, v.ID, staged[0].ID)
	require.Equal(t, v.Token, staged[0].Token)
	require.NoError(t, b.Rollback(ctx, ref, v))
	require.Equal(t, map[string][]string{v1: {"AWSCURRENT"}}, s.Stages(name))

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
	require.Equal(t, map[string][]string{v1: {"AWSPREVIOUS"}, v3.ID: {"AWSCURRENT"}}, s.Stages(name))
}

// TestDelegatedTimeout: a rotation that does not end within
// delegated_timeout fails Finish.
func TestDelegatedTimeout(t *testing.T) {
	t.Parallel()
	s := awssmtest.Start(t)
	cfg := baseConfig()
	cfg.DelegatedTimeout = 300 * time.Millisecond
	b := newBackend(t, s, cfg, nil)
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
	s := awssmtest.Start(t)
	b := newBackend(t, s, baseConfig(), nil)
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
