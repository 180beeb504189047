package awssm_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/handlers/awssm"
	"github.com/rekey-dev/rekey/handlers/awssm/awssmtest"
	"github.com/rekey-dev/rekey/schemas"
)

// baseConfig is a configuration for the emulator with short waits.
func baseConfig() awssm.Config {
	return awssm.Config{Region: awssmtest.Region, Timeout: 5 * time.Second, PollInterval: 20 * time.Millisecond, DelegatedTimeout: 20 * time.Second}
}

// newBackend returns a backend calling s through the SDK client.
func newBackend(t testing.TB, s *awssmtest.Server, cfg awssm.Config, log *slog.Logger) *awssm.Backend {
	t.Helper()
	b, err := awssm.NewWithClient(s.Client(t), cfg, log)
	require.NoError(t, err)
	return b
}

// start starts an emulator and a backend on it, with baseConfig changed
// by mutate (when not nil), logging to log (nil: nowhere).
func start(t testing.TB, log *slog.Logger, mutate func(*awssm.Config)) (*awssmtest.Server, *awssm.Backend) {
	t.Helper()
	s := awssmtest.Start(t)
	cfg := baseConfig()
	if mutate != nil {
		mutate(&cfg)
	}
	return s, newBackend(t, s, cfg, log)
}

var uniqN atomic.Int64

// uniq makes a secret id no other test uses.
func uniq(prefix string) string { return fmt.Sprintf("%s-%d", prefix, uniqN.Add(1)) }

// seed creates tenant's secret at its default name with a first value and
// tags (TenantId=tenant unless tags are given), and returns its ref and the
// first version.
func seed(t testing.TB, s *awssmtest.Server, tenant, secret string, tags ...types.Tag) (handlers.SecretRef, string) {
	t.Helper()
	return seedNamed(t, s, tenant, secret, "/tenants/"+tenant+"/"+secret, tags...)
}

func seedNamed(t testing.TB, s *awssmtest.Server, tenant, secret, name string, tags ...types.Tag) (handlers.SecretRef, string) {
	t.Helper()
	if tags == nil {
		tags = []types.Tag{{Key: aws.String("TenantId"), Value: aws.String(tenant)}}
	}
	out, err := s.Client(t).CreateSecret(context.Background(), &secretsmanager.CreateSecretInput{
		Name: &name, SecretString: aws.String("first-value-" + secret), Tags: tags,
	})
	require.NoError(t, err)
	ref := handlers.SecretRef{Tenant: tenant, Secret: secret, Backend: awssm.Name}
	return ref, aws.ToString(out.VersionId)
}

// rotate runs the whole saga with a fresh token.
func rotate(t testing.TB, ctx context.Context, b *awssm.Backend, ref handlers.SecretRef) handlers.Version {
	t.Helper()
	v, err := b.Create(ctx, ref, schemas.NewULID()+"-1-1")
	require.NoError(t, err, "Create")
	require.NoError(t, b.Set(ctx, ref, v), "Set")
	require.NoError(t, b.Test(ctx, ref, v), "Test")
	require.NoError(t, b.Finish(ctx, ref, v), "Finish")
	return v
}

// writeCalls counts the calls that change a secret.
func writeCalls(s *awssmtest.Server) int {
	n := 0
	for _, op := range []string{"PutSecretValue", "UpdateSecretVersionStage", "RotateSecret", "TagResource", "UntagResource", "CreateSecret", "DeleteSecret"} {
		n += s.Calls(op)
	}
	return n
}

// allValues reads every version the emulator holds of the secret.
func allValues(t *testing.T, s *awssmtest.Server, name string) [][]byte {
	t.Helper()
	c := s.Client(t)
	out, err := c.ListSecretVersionIds(context.Background(), &secretsmanager.ListSecretVersionIdsInput{SecretId: &name, IncludeDeprecated: aws.Bool(true)})
	require.NoError(t, err)
	var values [][]byte
	for _, v := range out.Versions {
		got, err := c.GetSecretValue(context.Background(), &secretsmanager.GetSecretValueInput{SecretId: &name, VersionId: v.VersionId})
		require.NoError(t, err)
		values = append(values, []byte(aws.ToString(got.SecretString)))
	}
	return values
}

// change is the external_change event the daemon would pass to Notify for
// an emulator rotation event.
func change(ref handlers.SecretRef, ev awssmtest.RotationEvent) schemas.ExternalChange {
	outcome := schemas.ExternalSucceeded
	if ev.Event == awssmtest.EventRotationFailed {
		outcome = schemas.ExternalFailed
	}
	return schemas.ExternalChange{
		Tenant: ref.Tenant, Secret: ref.Secret, Backend: awssm.Name, Source: "aws.secretsmanager", Event: ev.Event,
		Outcome: outcome, ResourceID: ev.ARN, EventID: schemas.NewULID(), Error: ev.Error, EventTime: ev.Time, ObservedAt: time.Now(),
	}
}
