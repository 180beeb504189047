package awssm_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
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
	"github.com/rekey-dev/rekey/handlers/backendtest"
	"github.com/rekey-dev/rekey/schemas"
)

// TestBackendSuite runs the shared suite against the emulator through the
// real SDK client, then checks that no value it read was logged.
func TestBackendSuite(t *testing.T) {
	t.Parallel()
	logs := &backendtest.LogBuffer{}
	s, b := start(t, logs.Logger(), nil)
	read := backendtest.ReadsNotLogged(t, logs, b.Read)
	backendtest.Run(t, backendtest.Features{Read: true}, func(t *testing.T) backendtest.Fixture {
		ref, _ := seed(t, s, "acme", uniq("suite"))
		return backendtest.Fixture{Backend: b, Ref: ref, Read: read}
	})
}

// TestBackendSuiteNameOption runs the suite on secrets named by the name
// option, with an api-key generator.
func TestBackendSuiteNameOption(t *testing.T) {
	t.Parallel()
	s, b := start(t, nil, nil)
	backendtest.Run(t, backendtest.Features{Read: true}, func(t *testing.T) backendtest.Fixture {
		secret := uniq("opt")
		ref, _ := seedNamed(t, s, "globex", secret, "/tenants/globex/llm/"+secret+"/key")
		ref.Options = map[string]string{awssm.OptName: "/tenants/{tenant}/llm/{secret}/key"}
		ref.Generator = handlers.Generator{Style: handlers.StyleAPIKey, Length: 40, Prefix: "sk-globex-"}
		return backendtest.Fixture{Backend: b, Ref: ref, Read: b.Read}
	})
}

// TestStagedLayout checks what readers of Secrets Manager see: the staged
// version carries AWSPENDING and rekey's label while AWSCURRENT is still
// the old one; after Finish the new version is AWSCURRENT, the old one
// AWSPREVIOUS, and no AWSPENDING or rekey label is left.
func TestStagedLayout(t *testing.T) {
	t.Parallel()
	s, b := start(t, nil, nil)
	ctx := t.Context()
	ref, v1 := seed(t, s, "acme", "openai-key")
	name := "/tenants/acme/openai-key"

	tok := schemas.NewULID() + "-1-1"
	v, err := b.Create(ctx, ref, tok)
	require.NoError(t, err)
	require.Equal(t, "rekey-"+tok, v.ID, "the version id is derived from the token")
	require.Equal(t, awssm.VersionID(tok), v.ID)
	require.Equal(t, map[string][]string{v1: {"AWSCURRENT"}, v.ID: {"AWSPENDING", "rekey-staged-" + tok}}, s.Stages(name))
	cur, value, err := b.Read(ctx, ref)
	require.NoError(t, err)
	require.Equal(t, v1, cur)
	require.Equal(t, "first-value-openai-key", string(value), "the staged value is not live")

	require.NoError(t, b.Set(ctx, ref, v))
	require.NoError(t, b.Test(ctx, ref, v))
	require.NoError(t, b.Finish(ctx, ref, v))
	require.Equal(t, map[string][]string{v1: {"AWSPREVIOUS"}, v.ID: {"AWSCURRENT"}}, s.Stages(name))
	_, value, err = b.Read(ctx, ref)
	require.NoError(t, err)
	require.Len(t, value, 32, "a generated password")

	v3 := rotate(t, ctx, b, ref)
	require.Equal(t, map[string][]string{v.ID: {"AWSPREVIOUS"}, v3.ID: {"AWSCURRENT"}}, s.Stages(name),
		"AWSPREVIOUS follows AWSCURRENT; no AWSPENDING is left")
	cur2, err := b.Current(ctx, ref)
	require.NoError(t, err)
	require.Equal(t, v3.ID, cur2.ID)
	require.Equal(t, v3.Token, cur2.Token, "the token is read back from the version id")
}

// TestForeignPendingNotClobbered: an AWSPENDING on a version rekey did not
// make (a rotation by Secrets Manager in progress) is neither taken by
// Create nor listed by Staged; Create fails with a retryable error naming
// the version.
func TestForeignPendingNotClobbered(t *testing.T) {
	t.Parallel()
	logs := &backendtest.LogBuffer{}
	s, b := start(t, logs.Logger(), nil)
	ctx := t.Context()
	ref, v1 := seed(t, s, "acme", "foreign")
	name := "/tenants/acme/foreign"
	lambdaVersion := "a1b2c3d4-0000-4000-8000-1234567890ab"
	_, err := s.Client(t).PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{
		SecretId: &name, ClientRequestToken: &lambdaVersion, SecretString: aws.String("lambda-value"), VersionStages: []string{"AWSPENDING"},
	})
	require.NoError(t, err)
	want := s.Stages(name)
	s.ResetCalls()

	_, err = b.Create(ctx, ref, schemas.NewULID())
	require.Error(t, err)
	require.Contains(t, err.Error(), lambdaVersion, "the error names the version")
	require.NotErrorIs(t, err, handlers.ErrPermanent, "retryable: the rotation may end")
	require.Zero(t, writeCalls(s), "nothing written")
	require.Equal(t, want, s.Stages(name))

	staged, err := b.Staged(ctx, ref)
	require.NoError(t, err)
	require.Empty(t, staged, "a foreign AWSPENDING is not reported as staged")
	require.Contains(t, logs.String(), "AWSPENDING is on a version rekey did not make")
	require.NoError(t, b.Rollback(ctx, ref, handlers.Version{ID: lambdaVersion}))
	require.Equal(t, want, s.Stages(name), "Rollback leaves a foreign version alone")

	// Once the other rotation ends, rekey rotates.
	_, err = s.Client(t).UpdateSecretVersionStage(ctx, &secretsmanager.UpdateSecretVersionStageInput{
		SecretId: &name, VersionStage: aws.String("AWSCURRENT"), MoveToVersionId: &lambdaVersion, RemoveFromVersionId: &v1,
	})
	require.NoError(t, err)
	v := rotate(t, ctx, b, ref)
	require.Equal(t, map[string][]string{lambdaVersion: {"AWSPREVIOUS"}, v.ID: {"AWSCURRENT"}}, s.Stages(name))
}

// rewriteName is a Secrets Manager API whose DescribeSecret reports
// another name, as if the id resolved to another tenant's secret.
type rewriteName struct {
	awssm.API
	name string
}

func (r rewriteName) DescribeSecret(ctx context.Context, in *secretsmanager.DescribeSecretInput, optFns ...func(*secretsmanager.Options)) (*secretsmanager.DescribeSecretOutput, error) {
	out, err := r.API.DescribeSecret(ctx, in, optFns...)
	if err == nil {
		out.Name = &r.name
	}
	return out, err
}

// TestTenantCheck: before any write, a secret whose name is not under the
// tenant's prefix, or whose TenantId tag is missing or another tenant's,
// is refused with ErrPermanent, an error that says what did not match,
// and nothing written.
func TestTenantCheck(t *testing.T) {
	t.Parallel()
	s := awssmtest.Start(t)
	ctx := t.Context()
	tag := func(k, v string) types.Tag { return types.Tag{Key: aws.String(k), Value: aws.String(v)} }
	for _, tc := range []struct {
		name   string
		tags   []types.Tag
		rename string
		want   []string
	}{
		{"missing tag", []types.Tag{tag("team", "llm")}, "", []string{`it has no TenantId tag (want "acme")`}},
		{"other tenant's tag", []types.Tag{tag("TenantId", "globex")}, "", []string{`its TenantId tag is "globex", not "acme"`}},
		{"wrong prefix", nil, "/tenants/globex/key", []string{`its name "/tenants/globex/key" is not under tenant acme's prefix "/tenants/acme/"`}},
		{"both", []types.Tag{tag("TenantId", "")}, "/shared/key", []string{`its name "/shared/key" is not under`, `its TenantId tag is "", not "acme"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ref, v1 := seed(t, s, "acme", uniq("tenant-check"), tc.tags...)
			b := newBackend(t, s, baseConfig(), nil)
			if tc.rename != "" {
				awssm.WrapAPI(b, func(api awssm.API) awssm.API { return rewriteName{API: api, name: tc.rename} })
			}
			name := "/tenants/acme/" + ref.Secret
			writes := writeCalls(s)

			_, err := b.Create(ctx, ref, schemas.NewULID())
			require.ErrorIs(t, err, handlers.ErrPermanent)
			for _, w := range tc.want {
				require.Contains(t, err.Error(), w)
			}
			require.Contains(t, err.Error(), "nothing was written")
			require.Error(t, b.Finish(ctx, ref, handlers.Version{ID: awssm.VersionID(schemas.NewULID())}))

			// A version staged by someone else under rekey's id scheme is
			// not rolled back either.
			staged := awssm.VersionID(schemas.NewULID())
			_, err = s.Client(t).PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{
				SecretId: &name, ClientRequestToken: &staged, SecretString: aws.String("x"), VersionStages: []string{"AWSPENDING"},
			})
			require.NoError(t, err)
			writes++
			before := s.Stages(name)
			require.ErrorIs(t, b.Rollback(ctx, ref, handlers.Version{ID: staged}), handlers.ErrPermanent)
			require.Equal(t, writes, writeCalls(s), "no write call was made")
			require.Equal(t, before, s.Stages(name))
			require.Contains(t, before[v1], "AWSCURRENT")
		})
	}
}

// TestThrottlingRetried: ThrottlingException answers are retried by the
// SDK, with the retryer New configures (max_retries), against the
// emulator as endpoint and credentials from the environment.
func TestThrottlingRetried(t *testing.T) {
	s := awssmtest.Start(t)
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIAEMULATOR")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "emulator-secret-key")
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_CONFIG_FILE", t.TempDir()+"/none")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", t.TempDir()+"/none")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	ctx := t.Context()
	ref, _ := seed(t, s, "acme", "throttled")

	cfg := baseConfig()
	cfg.Endpoint = s.Endpoint()
	cfg.Timeout = 30 * time.Second
	cfg.MaxRetries = 1 // the SDK's real back-off: up to 2 s before the retry
	b, err := awssm.New(ctx, cfg, nil)
	require.NoError(t, err)

	s.ResetCalls()
	s.Throttle(1)
	v, err := b.Create(ctx, ref, schemas.NewULID())
	require.NoError(t, err, "a throttled answer, then success")
	require.Equal(t, 2, s.Calls("DescribeSecret"))
	require.Equal(t, 1, s.Calls("PutSecretValue"))

	s.Throttle(2)
	err = b.Finish(ctx, ref, v)
	require.Error(t, err, "max_retries 1: two throttled answers are too many")
	require.Contains(t, err.Error(), "ThrottlingException")
	require.Equal(t, 4, s.Calls("DescribeSecret"), "one attempt and max_retries retries")
	require.NoError(t, b.Finish(ctx, ref, v))
}

// countingLimiter counts waits and can refuse them.
type countingLimiter struct {
	n      atomic.Int64
	refuse bool
}

func (l *countingLimiter) Wait(ctx context.Context) error {
	l.n.Add(1)
	if l.refuse {
		return errors.New("limiter refused")
	}
	return ctx.Err()
}

// TestRateLimiter: every write call waits for the write limiter (and
// RotateSecret for the rotate limiter) first; a limiter that refuses
// stops the call.
func TestRateLimiter(t *testing.T) {
	t.Parallel()
	s, b := start(t, nil, nil)
	ctx := t.Context()
	write, rot := &countingLimiter{}, &countingLimiter{}
	awssm.SetLimiters(b, write, rot)
	ref, _ := seed(t, s, "acme", "paced")
	s.ResetCalls()

	rotate(t, ctx, b, ref)
	writes := s.Calls("PutSecretValue") + s.Calls("UpdateSecretVersionStage")
	require.Equal(t, 4, writes, "put, move AWSCURRENT, remove AWSPENDING and the staged label")
	require.EqualValues(t, writes, write.n.Load(), "one wait per write call")
	require.Zero(t, rot.n.Load())

	write.refuse = true
	s.ResetCalls()
	_, err := b.Create(ctx, ref, schemas.NewULID())
	require.ErrorContains(t, err, "limiter refused")
	require.Zero(t, s.Calls("PutSecretValue"), "no call without the limiter's go")

	dref, _, _ := delegatedSecret(t, s, "paced-delegated")
	s.ResetCalls()
	rot.refuse = true
	_, err = b.Create(ctx, dref, schemas.NewULID())
	require.ErrorContains(t, err, "limiter refused")
	require.EqualValues(t, 1, rot.n.Load())
	require.Zero(t, s.Calls("RotateSecret"))
	rot.refuse = false
	_, err = b.Create(ctx, dref, schemas.NewULID())
	require.NoError(t, err)
	require.EqualValues(t, 2, rot.n.Load())
	require.Equal(t, 1, s.Calls("RotateSecret"))
}

// TestOutageMidRotation: Secrets Manager goes away after Create; the next
// step fails, and so does the rollback. Once it is back, a retry with the
// same token completes and the rotator's leftover clean-up finds nothing
// staged; a crashed rotation's version is found by Staged and rolled back.
func TestOutageMidRotation(t *testing.T) {
	t.Parallel()
	s, b := start(t, nil, func(c *awssm.Config) { c.Timeout = 2 * time.Second })
	ctx := t.Context()
	ref, v1 := seed(t, s, "acme", "outage")
	name := "/tenants/acme/outage"

	tok := schemas.NewULID() + "-1-1"
	v, err := b.Create(ctx, ref, tok)
	require.NoError(t, err)
	s.Stop()
	require.Error(t, b.Test(ctx, ref, v), "Test while Secrets Manager is unreachable")
	require.Error(t, b.Rollback(ctx, ref, v), "Rollback while Secrets Manager is unreachable")
	_, err = b.Current(ctx, ref)
	require.Error(t, err)
	require.NotErrorIs(t, err, handlers.ErrNotFound, "unreachable is not not-found")
	require.NoError(t, s.Restart())

	// The step is retried with the same token: the same version, promoted.
	again, err := b.Create(ctx, ref, tok)
	require.NoError(t, err)
	require.Equal(t, v.ID, again.ID)
	require.NoError(t, b.Test(ctx, ref, again))
	require.NoError(t, b.Finish(ctx, ref, again))
	require.Equal(t, map[string][]string{v1: {"AWSPREVIOUS"}, v.ID: {"AWSCURRENT"}}, s.Stages(name))

	// Outage after Create, and the worker gives up: the next rotation's
	// clean-up rolls the version back, then rotates.
	lost, err := b.Create(ctx, ref, schemas.NewULID()+"-1-1")
	require.NoError(t, err)
	s.Stop()
	require.Error(t, b.Finish(ctx, ref, lost))
	require.NoError(t, s.Restart())
	staged, err := b.Staged(ctx, ref)
	require.NoError(t, err)
	require.Equal(t, []string{lost.ID}, []string{staged[0].ID})
	require.Len(t, staged, 1)
	require.NoError(t, b.Rollback(ctx, ref, staged[0]))
	next := rotate(t, ctx, b, ref)
	require.Equal(t, map[string][]string{v.ID: {"AWSPREVIOUS"}, next.ID: {"AWSCURRENT"}}, s.Stages(name), "no AWSPENDING left")
}

// TestErrors: a missing secret is ErrNotFound, access denied is
// ErrPermanent, and every error names the operation and the secret.
func TestErrors(t *testing.T) {
	t.Parallel()
	s, b := start(t, nil, nil)
	ctx := t.Context()
	missing := handlers.SecretRef{Tenant: "acme", Secret: "missing", Backend: awssm.Name}
	_, err := b.Current(ctx, missing)
	require.ErrorIs(t, err, handlers.ErrNotFound)
	require.ErrorContains(t, err, "awssm: current acme/missing")
	_, err = b.Create(ctx, missing, schemas.NewULID())
	require.ErrorIs(t, err, handlers.ErrNotFound)
	require.ErrorContains(t, err, "awssm: create acme/missing (/tenants/acme/missing)")
	_, err = b.Staged(ctx, missing)
	require.ErrorIs(t, err, handlers.ErrNotFound)
	require.NoError(t, b.Rollback(ctx, missing, handlers.Version{ID: awssm.VersionID(schemas.NewULID())}), "nothing staged in a missing secret")

	ref, _ := seed(t, s, "acme", "denied")
	s.Fail("PutSecretValue", 1, awssmtest.CodeAccessDenied, "User is not authorized to perform: secretsmanager:PutSecretValue")
	_, err = b.Create(ctx, ref, schemas.NewULID())
	require.ErrorIs(t, err, handlers.ErrPermanent)
	require.ErrorContains(t, err, "permission denied")

	calls := s.CallCounts()
	_, err = b.Create(ctx, handlers.SecretRef{Tenant: "acme", Secret: "x", Options: map[string]string{awssm.OptName: "/tenants/globex/x"}}, schemas.NewULID())
	require.ErrorIs(t, err, handlers.ErrPermanent, "a name outside the tenant's prefix")
	require.ErrorContains(t, err, "options.name")
	require.Equal(t, calls, s.CallCounts(), "refused before any call")
}

// hookServer records the hook requests it gets and answers status.
type hookServer struct {
	mu     sync.Mutex
	bodies []map[string]string
	status atomic.Int32
}

func (h *hookServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var m map[string]string
	_ = json.Unmarshal(body, &m)
	h.mu.Lock()
	h.bodies = append(h.bodies, m)
	h.mu.Unlock()
	w.WriteHeader(int(h.status.Load()))
}

// TestHooks: set_url and test_url get the tenant, secret and version, not
// the value; a non-2xx answer fails the step; with test_url, Test does
// not read the value itself.
func TestHooks(t *testing.T) {
	t.Parallel()
	h := &hookServer{}
	h.status.Store(http.StatusNoContent)
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	s, b := start(t, nil, nil)
	ctx := t.Context()
	ref, _ := seed(t, s, "acme", "hooked")
	ref.Options = map[string]string{awssm.OptSetURL: hs.URL + "/set?token=hook-credential", awssm.OptTestURL: hs.URL + "/test"}

	s.ResetCalls()
	v := rotate(t, ctx, b, ref)
	require.Zero(t, s.Calls("GetSecretValue"), "test_url replaces the read-back")
	h.mu.Lock()
	require.Equal(t, []map[string]string{
		{"step": "set", "tenant": "acme", "secret": "hooked", "secret_id": "/tenants/acme/hooked", "version_id": v.ID, "stage": "AWSPENDING"},
		{"step": "test", "tenant": "acme", "secret": "hooked", "secret_id": "/tenants/acme/hooked", "version_id": v.ID, "stage": "AWSPENDING"},
	}, h.bodies)
	h.mu.Unlock()

	h.status.Store(http.StatusBadGateway)
	v2, err := b.Create(ctx, ref, schemas.NewULID())
	require.NoError(t, err)
	err = b.Set(ctx, ref, v2)
	require.ErrorContains(t, err, "answered HTTP 502")
	require.NotContains(t, err.Error(), "hook-credential", "the URL's query is not in errors")
	require.NotErrorIs(t, err, handlers.ErrPermanent)
	require.NoError(t, b.Rollback(ctx, ref, v2))
}

// TestNoValueInLogsOrErrors rotates, fails in every way the tests know,
// and greps the logs and the errors for every value the secret had.
func TestNoValueInLogsOrErrors(t *testing.T) {
	t.Parallel()
	logs := &backendtest.LogBuffer{}
	s, b := start(t, logs.Logger(), func(c *awssm.Config) { c.Timeout = time.Second })
	ctx := t.Context()
	ref, _ := seed(t, s, "acme", "leak")
	var errs []string
	keep := func(err error) {
		if err != nil {
			errs = append(errs, err.Error())
		}
	}
	for range 3 {
		rotate(t, ctx, b, ref)
	}
	v, err := b.Create(ctx, ref, schemas.NewULID())
	require.NoError(t, err)
	_, err = b.Create(ctx, ref, v.Token) // idempotent
	keep(err)
	s.Fail("GetSecretValue", -1, awssmtest.CodeInternal, "boom")
	keep(b.Test(ctx, ref, v))
	s.ClearFaults()
	s.Fail("UpdateSecretVersionStage", -1, awssmtest.CodeInvalidRequest, "refused")
	keep(b.Finish(ctx, ref, v))
	keep(b.Rollback(ctx, ref, v))
	s.ClearFaults()
	s.Stop()
	keep(b.Test(ctx, ref, v))
	require.NoError(t, s.Restart())
	require.NoError(t, b.Rollback(ctx, ref, v))
	require.Len(t, errs, 4, "test, finish, rollback and test failed")

	values := allValues(t, s, "/tenants/acme/leak")
	require.GreaterOrEqual(t, len(values), 4)
	backendtest.RequireNoValue(t, logs.String()+strings.Join(errs, "\n"), values...)
}

// enableRotation gives the secret a rotation function without rotating.
func enableRotation(t testing.TB, s *awssmtest.Server, name string) {
	t.Helper()
	_, err := s.Client(t).RotateSecret(context.Background(), &secretsmanager.RotateSecretInput{
		SecretId: &name, RotationLambdaARN: aws.String("arn:aws:lambda:us-east-1:123456789012:function:rotate"), RotateImmediately: aws.Bool(false),
	})
	require.NoError(t, err)
}
