package awssmtest_test

import (
	"context"
	"crypto/rand"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/handlers/awssm/awssmtest"
)

// TestConformanceEmulator runs the conformance suite against the emulator.
func TestConformanceEmulator(t *testing.T) {
	t.Parallel()
	s := awssmtest.Start(t)
	awssmtest.Conformance(t, s.Client(t), "/rekey-conformance/")
}

// TestConformanceAWS runs the conformance suite against real AWS Secrets
// Manager when REKEY_AWS_CONFORMANCE=1 (see Conformance for credentials and
// permissions). Without it, the test says how to run it and skips: it
// needs an AWS account, which CI does not have.
func TestConformanceAWS(t *testing.T) {
	if os.Getenv("REKEY_AWS_CONFORMANCE") != "1" {
		t.Skip("opt-in: REKEY_AWS_CONFORMANCE=1 AWS_REGION=<region> go test -run TestConformanceAWS ./handlers/awssm/awssmtest/ (default credential chain)")
	}
	region := os.Getenv("AWS_REGION")
	require.NotEmpty(t, region, "set AWS_REGION to the region to test in")
	cfg, err := config.LoadDefaultConfig(t.Context(), config.WithRegion(region))
	require.NoError(t, err, "load AWS configuration")
	prefix := "/rekey-conformance/" + strings.ToLower(rand.Text()[:12]) + "/"
	t.Logf("testing Secrets Manager in %s under %s", region, prefix)
	awssmtest.Conformance(t, secretsmanager.NewFromConfig(cfg), prefix)
}

// startWith starts an emulator holding one secret, name, and returns a
// client for it.
func startWith(t *testing.T, name string) (*awssmtest.Server, *secretsmanager.Client) {
	t.Helper()
	s := awssmtest.Start(t)
	c := s.Client(t)
	create(t, c, name)
	return s, c
}

func create(t *testing.T, c *secretsmanager.Client, name string) *secretsmanager.CreateSecretOutput {
	t.Helper()
	out, err := c.CreateSecret(t.Context(), &secretsmanager.CreateSecretInput{Name: aws.String(name), SecretString: aws.String("v1-" + rand.Text())})
	require.NoError(t, err)
	return out
}

// TestFaults: throttling is retried by the SDK, an injected failure is
// returned, and calls are counted per operation, faulted ones included.
func TestFaults(t *testing.T) {
	t.Parallel()
	s, c := startWith(t, "faults")
	s.ResetCalls()

	s.Throttle(2)
	_, err := c.DescribeSecret(t.Context(), &secretsmanager.DescribeSecretInput{SecretId: aws.String("faults")})
	require.NoError(t, err, "two throttled attempts, then success")
	require.Equal(t, 3, s.Calls("DescribeSecret"))

	s.Throttle(100)
	_, err = c.DescribeSecret(t.Context(), &secretsmanager.DescribeSecretInput{SecretId: aws.String("faults")})
	require.True(t, awssmtest.IsCode(err, awssmtest.CodeThrottling), "retries exhausted: %v", err)
	s.ClearFaults()

	s.Fail("PutSecretValue", 1, awssmtest.CodeAccessDenied, "not allowed")
	_, err = c.PutSecretValue(t.Context(), &secretsmanager.PutSecretValueInput{SecretId: aws.String("faults"), SecretString: aws.String("x")})
	require.True(t, awssmtest.IsCode(err, awssmtest.CodeAccessDenied), "%v", err)
	_, err = c.PutSecretValue(t.Context(), &secretsmanager.PutSecretValueInput{SecretId: aws.String("faults"), SecretString: aws.String("x")})
	require.NoError(t, err, "the fault was for one call")
	require.Equal(t, 2, s.CallCounts()["PutSecretValue"])

	s.Fail("GetSecretValue", -1, awssmtest.CodeInternal, "boom")
	_, err = c.GetSecretValue(t.Context(), &secretsmanager.GetSecretValueInput{SecretId: aws.String("faults")})
	require.True(t, awssmtest.IsCode(err, awssmtest.CodeInternal), "%v", err)
	require.Equal(t, 5, s.Calls("GetSecretValue"), "a 500 is retried up to the client's 5 attempts")
}

// TestStopRestart: calls fail while the emulator is stopped and work again,
// with the same state, after Restart.
func TestStopRestart(t *testing.T) {
	t.Parallel()
	s, c := startWith(t, "outage")
	s.Stop()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	_, err := c.DescribeSecret(ctx, &secretsmanager.DescribeSecretInput{SecretId: aws.String("outage")})
	require.Error(t, err)
	require.NoError(t, s.Restart())
	_, err = c.DescribeSecret(t.Context(), &secretsmanager.DescribeSecretInput{SecretId: aws.String("outage")})
	require.NoError(t, err)
}

// TestRotateSecret: the default Lambda rotates; a second RotateSecret
// while one is in progress is refused; a failing Lambda leaves AWSPENDING
// and reports RotationFailed; a secret without a rotation function is
// refused.
func TestRotateSecret(t *testing.T) {
	t.Parallel()
	s := awssmtest.Start(t)
	c := s.Client(t)
	ctx := t.Context()
	var mu sync.Mutex
	var events []awssmtest.RotationEvent
	s.OnRotation(func(ev awssmtest.RotationEvent) {
		mu.Lock()
		defer mu.Unlock()
		events = append(events, ev)
	})

	first := create(t, c, "rotated")
	_, err := c.RotateSecret(ctx, &secretsmanager.RotateSecretInput{SecretId: aws.String("rotated")})
	require.True(t, awssmtest.IsCode(err, awssmtest.CodeInvalidRequest), "no rotation function: %v", err)

	release := make(chan struct{})
	s.SetLambda(func(ctx context.Context, r awssmtest.RotationRequest) error {
		<-release
		return awssmtest.DefaultLambda(ctx, r)
	})
	tok := strings.Repeat("a", 32)
	out, err := c.RotateSecret(ctx, &secretsmanager.RotateSecretInput{
		SecretId: aws.String("rotated"), RotationLambdaARN: aws.String("arn:aws:lambda:us-east-1:123456789012:function:rotate"),
		ClientRequestToken: &tok,
	})
	require.NoError(t, err)
	require.Equal(t, tok, aws.ToString(out.VersionId))
	_, err = c.RotateSecret(ctx, &secretsmanager.RotateSecretInput{SecretId: aws.String("rotated")})
	require.True(t, awssmtest.IsCode(err, awssmtest.CodeInvalidRequest), "a rotation is in progress: %v", err)
	close(release)
	s.WaitRotations()
	require.Equal(t, map[string][]string{aws.ToString(first.VersionId): {"AWSPREVIOUS"}, tok: {"AWSCURRENT"}}, s.Stages("rotated"))

	s.SetLambda(awssmtest.FailingLambda("downstream refused the new password"))
	tok2 := strings.Repeat("b", 32)
	_, err = c.RotateSecret(ctx, &secretsmanager.RotateSecretInput{SecretId: aws.String("rotated"), ClientRequestToken: &tok2})
	require.NoError(t, err)
	s.WaitRotations()
	require.Equal(t, []string{"AWSPENDING"}, s.Stages("rotated")[tok2], "a failed rotation leaves AWSPENDING")
	_, err = c.RotateSecret(ctx, &secretsmanager.RotateSecretInput{SecretId: aws.String("rotated")})
	require.True(t, awssmtest.IsCode(err, awssmtest.CodeInvalidRequest), "AWSPENDING off AWSCURRENT means a rotation is not complete: %v", err)

	mu.Lock()
	defer mu.Unlock()
	require.Len(t, events, 2)
	require.Equal(t, awssmtest.EventRotationSucceeded, events[0].Event)
	require.Equal(t, tok, events[0].VersionID)
	require.Equal(t, s.ARN("rotated"), events[0].ARN)
	require.Equal(t, awssmtest.EventRotationFailed, events[1].Event)
	require.Equal(t, "downstream refused the new password", events[1].Error)
}

// TestDeprecatedVersionsPruned: versions without a label are kept up to
// KeepDeprecated, then the oldest are dropped.
func TestDeprecatedVersionsPruned(t *testing.T) {
	t.Parallel()
	_, c := startWith(t, "pruned")
	for range awssmtest.KeepDeprecated + 5 {
		_, err := c.PutSecretValue(t.Context(), &secretsmanager.PutSecretValueInput{SecretId: aws.String("pruned"), SecretString: aws.String(rand.Text())})
		require.NoError(t, err)
	}
	out, err := c.ListSecretVersionIds(t.Context(), &secretsmanager.ListSecretVersionIdsInput{SecretId: aws.String("pruned"), IncludeDeprecated: aws.Bool(true)})
	require.NoError(t, err)
	require.Len(t, out.Versions, awssmtest.KeepDeprecated+2, "current, previous and KeepDeprecated without a label")
}

// TestScheduledDeletion: a secret scheduled for deletion refuses reads and
// writes but can be described and restored.
func TestScheduledDeletion(t *testing.T) {
	t.Parallel()
	_, c := startWith(t, "scheduled")
	ctx := t.Context()
	_, err := c.DeleteSecret(ctx, &secretsmanager.DeleteSecretInput{SecretId: aws.String("scheduled"), RecoveryWindowInDays: aws.Int64(7)})
	require.NoError(t, err)
	_, err = c.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String("scheduled")})
	var ir *types.InvalidRequestException
	require.True(t, errors.As(err, &ir), "%v", err)
	d, err := c.DescribeSecret(ctx, &secretsmanager.DescribeSecretInput{SecretId: aws.String("scheduled")})
	require.NoError(t, err)
	require.NotNil(t, d.DeletedDate)
	list, err := c.ListSecrets(ctx, &secretsmanager.ListSecretsInput{})
	require.NoError(t, err)
	require.Empty(t, list.SecretList, "ListSecrets leaves out secrets scheduled for deletion")
	_, err = c.RestoreSecret(ctx, &secretsmanager.RestoreSecretInput{SecretId: aws.String("scheduled")})
	require.NoError(t, err)
	_, err = c.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String("scheduled")})
	require.NoError(t, err)
}
