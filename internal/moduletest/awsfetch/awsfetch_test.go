package awsfetch_test

import (
	"context"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout/agent"
	"github.com/rekey-dev/rekey/fanout/agent/agenttest"
	"github.com/rekey-dev/rekey/fanout/agent/awsfetch"
	"github.com/rekey-dev/rekey/handlers/awssm/awssmtest"
	"github.com/rekey-dev/rekey/internal/testutil"
)

func newFetcher(t *testing.T, s *awssmtest.Server, cfg awsfetch.Config) *awsfetch.Fetcher {
	t.Helper()
	f, err := awsfetch.New(s.Client(t), cfg)
	require.NoError(t, err)
	return f
}

// put creates the secret, or adds a version with stages (nil: AWSCURRENT),
// and returns the version id.
func put(t testing.TB, s *awssmtest.Server, name, value string, stages ...string) string {
	t.Helper()
	c := s.Client(t)
	ctx := context.Background()
	if s.Stages(name) == nil {
		out, err := c.CreateSecret(ctx, &secretsmanager.CreateSecretInput{Name: &name, SecretString: &value})
		require.NoError(t, err)
		return aws.ToString(out.VersionId)
	}
	out, err := c.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{SecretId: &name, SecretString: &value, VersionStages: stages})
	require.NoError(t, err)
	return aws.ToString(out.VersionId)
}

// TestFetch: the AWSCURRENT version is read with its VersionId; a staged
// (AWSPENDING) version is not; a rotation is seen by the next fetch.
func TestFetch(t *testing.T) {
	t.Parallel()
	s := awssmtest.Start(t)
	f := newFetcher(t, s, awsfetch.Config{})
	ctx := t.Context()
	require.Equal(t, "/tenants/acme/openai-key", f.SecretID("acme", "openai-key"))

	v1 := put(t, s, "/tenants/acme/openai-key", "VALUE-1-s3cr3t")
	got, err := f.Fetch(ctx, "acme", "openai-key")
	require.NoError(t, err)
	require.Equal(t, agent.Secret{Name: "openai-key", Version: v1, Value: []byte("VALUE-1-s3cr3t")}, got)

	put(t, s, "/tenants/acme/openai-key", "VALUE-2-staged", "AWSPENDING")
	got, err = f.Fetch(ctx, "acme", "openai-key")
	require.NoError(t, err)
	require.Equal(t, v1, got.Version, "a staged version is not live")

	v3 := put(t, s, "/tenants/acme/openai-key", "VALUE-3-s3cr3t")
	got, err = f.Fetch(ctx, "acme", "openai-key")
	require.NoError(t, err)
	require.Equal(t, v3, got.Version)
	require.Equal(t, "VALUE-3-s3cr3t", string(got.Value))

	prev := newFetcher(t, s, awsfetch.Config{VersionStage: "AWSPREVIOUS"})
	got, err = prev.Fetch(ctx, "acme", "openai-key")
	require.NoError(t, err)
	require.Equal(t, v1, got.Version, "a configured stage")
}

// TestFetchNamesAndBinary: a per-secret name and a custom template apply;
// a binary secret's value is its bytes.
func TestFetchNamesAndBinary(t *testing.T) {
	t.Parallel()
	s := awssmtest.Start(t)
	ctx := t.Context()
	f := newFetcher(t, s, awsfetch.Config{
		NameTemplate: "/apps/{tenant}/{secret}",
		Names:        map[string]string{"stripe-key": "/tenants/{tenant}/pay/{secret}-live"},
	})
	require.Equal(t, "/apps/acme/db", f.SecretID("acme", "db"))
	require.Equal(t, "/tenants/acme/pay/stripe-key-live", f.SecretID("acme", "stripe-key"))
	v := put(t, s, "/tenants/acme/pay/stripe-key-live", "sk_live_s3cr3t")
	got, err := f.Fetch(ctx, "acme", "stripe-key")
	require.NoError(t, err)
	require.Equal(t, v, got.Version)

	name := "/apps/acme/db"
	out, err := s.Client(t).CreateSecret(ctx, &secretsmanager.CreateSecretInput{Name: &name, SecretBinary: []byte{0, 1, 2, 0xff}})
	require.NoError(t, err)
	got, err = f.Fetch(ctx, "acme", "db")
	require.NoError(t, err)
	require.Equal(t, []byte{0, 1, 2, 0xff}, got.Value)
	require.Equal(t, aws.ToString(out.VersionId), got.Version)
}

// TestFetchErrors: missing secrets and stages are agent.ErrNotFound,
// AccessDeniedException is ErrPermissionDenied, bad ids are refused
// before any call, and no error holds the value.
func TestFetchErrors(t *testing.T) {
	t.Parallel()
	s := awssmtest.Start(t)
	ctx := t.Context()
	f := newFetcher(t, s, awsfetch.Config{})
	_, err := f.Fetch(ctx, "acme", "missing")
	require.ErrorIs(t, err, agent.ErrNotFound)
	require.ErrorContains(t, err, "/tenants/acme/missing")

	put(t, s, "/tenants/acme/key", "VALUE-s3cr3t")
	_, err = newFetcher(t, s, awsfetch.Config{VersionStage: "AWSPENDING"}).Fetch(ctx, "acme", "key")
	require.ErrorIs(t, err, agent.ErrNotFound, "no version has the stage")

	s.Fail("GetSecretValue", 1, awssmtest.CodeAccessDenied, "User: arn:aws:sts::123456789012:assumed-role/agent is not authorized to perform: secretsmanager:GetSecretValue")
	_, err = f.Fetch(ctx, "acme", "key")
	require.ErrorIs(t, err, awsfetch.ErrPermissionDenied)
	require.ErrorContains(t, err, "not authorized")
	require.NotContains(t, err.Error(), "VALUE-s3cr3t")

	calls := s.Calls("GetSecretValue")
	_, err = f.Fetch(ctx, "Acme", "key")
	require.Error(t, err)
	_, err = f.Fetch(ctx, "acme", "../key")
	require.Error(t, err)
	require.Equal(t, calls, s.Calls("GetSecretValue"), "refused before any call")

	s.Stop()
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err = f.Fetch(short, "acme", "key")
	require.Error(t, err)
	require.NotErrorIs(t, err, agent.ErrNotFound, "unreachable is not not-found")
}

func TestConfigValidate(t *testing.T) {
	for _, cfg := range []awsfetch.Config{
		{NameTemplate: "/tenants/{tenant}/key"},
		{NameTemplate: "/tenants/{tenant}/{env}/{secret}"},
		{NameTemplate: "/tenants/{tenant}/{secret} x"},
		{Names: map[string]string{"Bad Id": "/x/{secret}"}},
		{Names: map[string]string{"ok": "/x/{nope}"}},
		{Timeout: -time.Second},
	} {
		require.Error(t, cfg.Validate(), "%+v", cfg)
	}
	require.NoError(t, awsfetch.Config{}.Validate())
	_, err := awsfetch.New(nil, awsfetch.Config{})
	require.Error(t, err)
}

// TestFetcherConformance runs the Fetcher suite against the emulator.
func TestFetcherConformance(t *testing.T) {
	t.Parallel()
	s := awssmtest.Start(t)
	agenttest.Run(t, agenttest.Source{
		Fetcher: newFetcher(t, s, awsfetch.Config{}),
		Tenant:  "acme",
		Other:   "globex",
		New: func(t testing.TB) string {
			secret := testutil.Uniq("key")
			put(t, s, "/tenants/acme/"+secret, testutil.Uniq("VALUE-acme-s3cr3t"))
			put(t, s, "/tenants/globex/"+secret, testutil.Uniq("VALUE-globex-s3cr3t"))
			return secret
		},
		Missing: "never-written",
		Rotate: func(t testing.TB, secret string) {
			put(t, s, "/tenants/acme/"+secret, testutil.Uniq("VALUE-acme-rotated"))
		},
	})
}
