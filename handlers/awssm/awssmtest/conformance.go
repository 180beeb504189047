package awssmtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
	"github.com/aws/smithy-go"
	"github.com/stretchr/testify/require"
)

// EventualTimeout bounds how long Conformance waits for an eventually
// consistent answer (ListSecrets, a forced deletion). Secrets Manager
// documents that ListSecrets may lag by minutes; the emulator never lags,
// so the wait only matters against AWS.
var EventualTimeout = 5 * time.Minute

// Conformance checks the Secrets Manager behaviours that rekey's awssm
// backend relies on, through client: staging labels (AWSCURRENT,
// AWSPREVIOUS, AWSPENDING and custom ones, each on at most one version),
// idempotent ClientRequestToken and ResourceExistsException,
// UpdateSecretVersionStage and its InvalidParameterException cases, tags,
// ResourceNotFoundException, GetSecretValue by stage and by version,
// deprecated versions, the ListSecrets filters and forced deletion.
//
// Every secret it creates is named prefix + <check>-<random> and is
// force-deleted when the test ends; prefix must end with "/".
//
// The emulator's own test runs it (TestConformanceEmulator). To run it
// against real AWS Secrets Manager, opt in with REKEY_AWS_CONFORMANCE=1:
//
//	REKEY_AWS_CONFORMANCE=1 AWS_REGION=eu-west-1 \
//	  go test -run TestConformanceAWS -v ./handlers/awssm/awssmtest/
//
// Credentials come from the default chain (environment, shared config and
// SSO, web identity, instance or task role). They need
// secretsmanager:CreateSecret, DescribeSecret, GetSecretValue,
// PutSecretValue, UpdateSecretVersionStage, ListSecretVersionIds,
// TagResource, UntagResource, DeleteSecret on
// arn:aws:secretsmanager:*:*:secret:/rekey-conformance/*, and
// secretsmanager:ListSecrets. The run creates about a dozen secrets under
// /rekey-conformance/<random>/, deletes them without recovery, and takes a
// few minutes because ListSecrets is eventually consistent.
func Conformance(t *testing.T, client *secretsmanager.Client, prefix string) {
	t.Helper()
	c := &conformance{client: client, prefix: prefix}
	checks := []struct {
		name string
		fn   func(t *testing.T, ctx context.Context)
	}{
		{"CreateAndDescribe", c.createAndDescribe},
		{"PutMovesCurrentAndPrevious", c.putMovesCurrent},
		{"LabelOnOneVersion", c.labelOnOneVersion},
		{"IdempotentClientRequestToken", c.idempotentToken},
		{"UpdateSecretVersionStage", c.updateVersionStage},
		{"UpdateSecretVersionStageErrors", c.updateVersionStageErrors},
		{"GetSecretValueByStageAndVersion", c.getByStage},
		{"DeprecatedVersions", c.deprecated},
		{"Tags", c.tags},
		{"ResourceNotFound", c.notFound},
		{"ListSecretsFilters", c.listFilters},
		{"ForceDelete", c.forceDelete},
	}
	for _, tc := range checks {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), EventualTimeout+time.Minute)
			defer cancel()
			tc.fn(t, ctx)
		})
	}
}

type conformance struct {
	client *secretsmanager.Client
	prefix string
}

// token returns a fresh ClientRequestToken (37 characters).
func token() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return "conf-" + hex.EncodeToString(b)
}

// value returns a fresh secret value.
func value() *string { return aws.String("conformance-" + rand.Text()) }

// create makes a secret with a first value and tags, force-deleted when
// the test ends, and returns its name, ARN and first version.
func (c *conformance) create(t *testing.T, ctx context.Context, check string, tags ...types.Tag) (name, arn, first string) {
	t.Helper()
	name = c.prefix + check + "-" + rand.Text()[:10]
	first = token()
	out := c.createSecret(t, ctx, &secretsmanager.CreateSecretInput{
		Name: &name, ClientRequestToken: &first, SecretString: value(), Tags: tags,
		Description: aws.String("rekey conformance check " + check),
	})
	return name, aws.ToString(out.ARN), first
}

// createSecret makes the secret that in describes, and force-deletes it
// when the test ends (a failure other than ResourceNotFound is reported).
func (c *conformance) createSecret(t *testing.T, ctx context.Context, in *secretsmanager.CreateSecretInput) *secretsmanager.CreateSecretOutput {
	t.Helper()
	name := aws.ToString(in.Name)
	out, err := c.client.CreateSecret(ctx, in)
	require.NoError(t, err, "CreateSecret %s", name)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := c.client.DeleteSecret(ctx, &secretsmanager.DeleteSecretInput{SecretId: &name, ForceDeleteWithoutRecovery: aws.Bool(true)})
		if err != nil && !IsCode(err, CodeResourceNotFound) {
			t.Errorf("delete %s: %v", name, err)
		}
	})
	return out
}

// put adds a version with the token tok and the labels stages (nil: the
// default, AWSCURRENT).
func (c *conformance) put(t *testing.T, ctx context.Context, name, tok string, stages ...string) *secretsmanager.PutSecretValueOutput {
	t.Helper()
	out, err := c.client.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{
		SecretId: &name, ClientRequestToken: &tok, SecretString: value(), VersionStages: stages,
	})
	require.NoError(t, err, "PutSecretValue %s", tok)
	require.Equal(t, tok, aws.ToString(out.VersionId), "the VersionId is the ClientRequestToken")
	return out
}

// stages returns DescribeSecret's VersionIdsToStages, sorted.
func (c *conformance) stages(t *testing.T, ctx context.Context, name string) map[string][]string {
	t.Helper()
	d, err := c.client.DescribeSecret(ctx, &secretsmanager.DescribeSecretInput{SecretId: &name})
	require.NoError(t, err, "DescribeSecret %s", name)
	for _, s := range d.VersionIdsToStages {
		slices.Sort(s)
	}
	return d.VersionIdsToStages
}

func (c *conformance) move(ctx context.Context, name, label string, to, from *string) error {
	_, err := c.client.UpdateSecretVersionStage(ctx, &secretsmanager.UpdateSecretVersionStageInput{
		SecretId: &name, VersionStage: &label, MoveToVersionId: to, RemoveFromVersionId: from,
	})
	return err
}

// IsCode reports whether err is a Secrets Manager API error with code.
func IsCode(err error, code string) bool {
	var ae smithy.APIError
	return errors.As(err, &ae) && ae.ErrorCode() == code
}

func requireCode(t *testing.T, err error, code, msg string) {
	t.Helper()
	require.Error(t, err, msg)
	require.True(t, IsCode(err, code), "%s: want %s, got %v", msg, code, err)
}

func (c *conformance) createAndDescribe(t *testing.T, ctx context.Context) {
	name, arn, first := c.create(t, ctx, "describe", types.Tag{Key: aws.String("TenantId"), Value: aws.String("acme")})
	require.Regexp(t, `^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:`+regexp.QuoteMeta(name)+`-[A-Za-z0-9]{6}$`, arn,
		"an ARN ends with the name, a hyphen and 6 random characters")
	for _, id := range []string{name, arn} {
		d, err := c.client.DescribeSecret(ctx, &secretsmanager.DescribeSecretInput{SecretId: &id})
		require.NoError(t, err, "DescribeSecret by %s", id)
		require.Equal(t, name, aws.ToString(d.Name))
		require.Equal(t, arn, aws.ToString(d.ARN))
		require.Equal(t, map[string][]string{first: {StageCurrent}}, d.VersionIdsToStages)
		require.Len(t, d.Tags, 1)
		require.Equal(t, "TenantId", aws.ToString(d.Tags[0].Key))
		require.Equal(t, "acme", aws.ToString(d.Tags[0].Value))
	}
	_, err := c.client.CreateSecret(ctx, &secretsmanager.CreateSecretInput{Name: &name, SecretString: value()})
	requireCode(t, err, CodeResourceExists, "CreateSecret of an existing name")
}

func (c *conformance) putMovesCurrent(t *testing.T, ctx context.Context) {
	name, _, v1 := c.create(t, ctx, "current")
	v2 := token()
	out := c.put(t, ctx, name, v2)
	require.Equal(t, []string{StageCurrent}, out.VersionStages, "VersionStages default to AWSCURRENT")
	require.Equal(t, map[string][]string{v1: {StagePrevious}, v2: {StageCurrent}}, c.stages(t, ctx, name))

	v3 := token()
	c.put(t, ctx, name, v3, StageCurrent)
	require.Equal(t, map[string][]string{v2: {StagePrevious}, v3: {StageCurrent}}, c.stages(t, ctx, name),
		"AWSPREVIOUS follows AWSCURRENT; the oldest version has no label left")
}

func (c *conformance) labelOnOneVersion(t *testing.T, ctx context.Context) {
	name, _, v1 := c.create(t, ctx, "pending")
	const custom = "rekey-staged-check"
	v2, v3 := token(), token()
	c.put(t, ctx, name, v2, StagePending, custom)
	require.Equal(t, map[string][]string{v1: {StageCurrent}, v2: {StagePending, custom}}, c.stages(t, ctx, name),
		"AWSPENDING and a custom label do not move AWSCURRENT")

	c.put(t, ctx, name, v3, StagePending)
	require.Equal(t, map[string][]string{v1: {StageCurrent}, v2: {custom}, v3: {StagePending}}, c.stages(t, ctx, name),
		"labelling a version AWSPENDING takes the label off the other one")

	got, err := c.client.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: &name, VersionStage: aws.String(StagePending)})
	require.NoError(t, err)
	require.Equal(t, v3, aws.ToString(got.VersionId))
}

func (c *conformance) idempotentToken(t *testing.T, ctx context.Context) {
	name, _, v1 := c.create(t, ctx, "idempotent")
	tok, val := token(), value()
	in := &secretsmanager.PutSecretValueInput{SecretId: &name, ClientRequestToken: &tok, SecretString: val, VersionStages: []string{StagePending}}
	_, err := c.client.PutSecretValue(ctx, in)
	require.NoError(t, err)
	again, err := c.client.PutSecretValue(ctx, in)
	require.NoError(t, err, "the same token and value again")
	require.Equal(t, tok, aws.ToString(again.VersionId))
	require.Equal(t, map[string][]string{v1: {StageCurrent}, tok: {StagePending}}, c.stages(t, ctx, name), "no second version")

	_, err = c.client.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{
		SecretId: &name, ClientRequestToken: &tok, SecretString: value(), VersionStages: []string{StagePending},
	})
	requireCode(t, err, CodeResourceExists, "the same token with another value")
	got, err := c.client.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: &name, VersionId: &tok})
	require.NoError(t, err)
	require.Equal(t, aws.ToString(val), aws.ToString(got.SecretString), "the version kept its value")
}

func (c *conformance) updateVersionStage(t *testing.T, ctx context.Context) {
	name, _, v1 := c.create(t, ctx, "move")
	v2 := token()
	c.put(t, ctx, name, v2, StagePending)

	require.NoError(t, c.move(ctx, name, StageCurrent, &v2, &v1), "move AWSCURRENT")
	require.Equal(t, map[string][]string{v1: {StagePrevious}, v2: {StageCurrent, StagePending}}, c.stages(t, ctx, name),
		"moving AWSCURRENT puts AWSPREVIOUS on the version it left")

	require.NoError(t, c.move(ctx, name, StagePending, nil, &v2), "remove AWSPENDING")
	require.Equal(t, map[string][]string{v1: {StagePrevious}, v2: {StageCurrent}}, c.stages(t, ctx, name))

	const custom = "rekey-staged-move"
	require.NoError(t, c.move(ctx, name, custom, &v1, nil), "add a custom label to a version")
	require.Equal(t, map[string][]string{v1: {StagePrevious, custom}, v2: {StageCurrent}}, c.stages(t, ctx, name))
	require.NoError(t, c.move(ctx, name, custom, nil, &v1), "remove it")
}

func (c *conformance) updateVersionStageErrors(t *testing.T, ctx context.Context) {
	name, _, v1 := c.create(t, ctx, "move-errors")
	v2 := token()
	c.put(t, ctx, name, v2, StagePending)
	want := map[string][]string{v1: {StageCurrent}, v2: {StagePending}}

	requireCode(t, c.move(ctx, name, StageCurrent, &v2, nil), CodeInvalidParameter,
		"moving AWSCURRENT without naming the version that has it")
	requireCode(t, c.move(ctx, name, StageCurrent, &v2, &v2), CodeInvalidParameter,
		"RemoveFromVersionId that does not have the label")
	requireCode(t, c.move(ctx, name, StagePending, nil, &v1), CodeInvalidParameter,
		"removing a label from a version that does not have it")
	require.Equal(t, want, c.stages(t, ctx, name), "failed calls changed nothing")
}

func (c *conformance) getByStage(t *testing.T, ctx context.Context) {
	name, _, v1 := c.create(t, ctx, "get")
	v2, v3 := token(), token()
	c.put(t, ctx, name, v2)
	c.put(t, ctx, name, v3, StagePending)
	for _, tc := range []struct {
		stage, id *string
		want      string
	}{
		{nil, nil, v2},
		{aws.String(StageCurrent), nil, v2},
		{aws.String(StagePrevious), nil, v1},
		{aws.String(StagePending), nil, v3},
		{nil, &v1, v1},
		{aws.String(StagePending), &v3, v3},
	} {
		got, err := c.client.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: &name, VersionStage: tc.stage, VersionId: tc.id})
		require.NoError(t, err, "GetSecretValue stage %v version %v", aws.ToString(tc.stage), aws.ToString(tc.id))
		require.Equal(t, tc.want, aws.ToString(got.VersionId))
		require.NotEmpty(t, aws.ToString(got.SecretString))
	}
	_, err := c.client.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: &name, VersionStage: aws.String(StageCurrent), VersionId: &v3})
	requireCode(t, err, CodeResourceNotFound, "a VersionId without the VersionStage asked for")
	_, err = c.client.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: &name, VersionStage: aws.String("NO-SUCH-LABEL")})
	requireCode(t, err, CodeResourceNotFound, "a label no version has")
}

func (c *conformance) deprecated(t *testing.T, ctx context.Context) {
	name, _, v1 := c.create(t, ctx, "deprecated")
	v2 := token()
	c.put(t, ctx, name, v2, StagePending)
	require.NoError(t, c.move(ctx, name, StagePending, nil, &v2))
	list := func(deprecated bool) []string {
		out, err := c.client.ListSecretVersionIds(ctx, &secretsmanager.ListSecretVersionIdsInput{SecretId: &name, IncludeDeprecated: &deprecated})
		require.NoError(t, err)
		var ids []string
		for _, v := range out.Versions {
			ids = append(ids, aws.ToString(v.VersionId))
			require.NotNil(t, v.CreatedDate)
		}
		return ids
	}
	require.ElementsMatch(t, []string{v1}, list(false), "a version without labels is not listed")
	require.ElementsMatch(t, []string{v1, v2}, list(true), "IncludeDeprecated lists it")
	require.Equal(t, map[string][]string{v1: {StageCurrent}}, c.stages(t, ctx, name))
}

func (c *conformance) tags(t *testing.T, ctx context.Context) {
	name, _, _ := c.create(t, ctx, "tags", types.Tag{Key: aws.String("TenantId"), Value: aws.String("acme")})
	tagsOf := func() map[string]string {
		d, err := c.client.DescribeSecret(ctx, &secretsmanager.DescribeSecretInput{SecretId: &name})
		require.NoError(t, err)
		out := map[string]string{}
		for _, tg := range d.Tags {
			out[aws.ToString(tg.Key)] = aws.ToString(tg.Value)
		}
		return out
	}
	_, err := c.client.TagResource(ctx, &secretsmanager.TagResourceInput{SecretId: &name, Tags: []types.Tag{
		{Key: aws.String("TenantId"), Value: aws.String("globex")}, {Key: aws.String("team"), Value: aws.String("llm")},
	}})
	require.NoError(t, err)
	require.Equal(t, map[string]string{"TenantId": "globex", "team": "llm"}, tagsOf(), "TagResource overwrites a key and adds one")
	_, err = c.client.UntagResource(ctx, &secretsmanager.UntagResourceInput{SecretId: &name, TagKeys: []string{"TenantId"}})
	require.NoError(t, err)
	require.Equal(t, map[string]string{"team": "llm"}, tagsOf())
}

func (c *conformance) notFound(t *testing.T, ctx context.Context) {
	missing := c.prefix + "missing-" + rand.Text()[:10]
	_, err := c.client.DescribeSecret(ctx, &secretsmanager.DescribeSecretInput{SecretId: &missing})
	requireCode(t, err, CodeResourceNotFound, "DescribeSecret of a missing secret")
	_, err = c.client.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: &missing})
	requireCode(t, err, CodeResourceNotFound, "GetSecretValue of a missing secret")
	_, err = c.client.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{SecretId: &missing, SecretString: value()})
	requireCode(t, err, CodeResourceNotFound, "PutSecretValue to a missing secret")
	var nf *types.ResourceNotFoundException
	require.ErrorAs(t, err, &nf, "the SDK's typed error")

	name, _, _ := c.create(t, ctx, "no-version")
	unknown := token()
	_, err = c.client.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: &name, VersionId: &unknown})
	requireCode(t, err, CodeResourceNotFound, "GetSecretValue of an unknown version")
}

func (c *conformance) listFilters(t *testing.T, ctx context.Context) {
	base := c.prefix + "list-" + rand.Text()[:8] + "/"
	tenantKey := "rekey-conf-" + rand.Text()[:8]
	made := map[string]string{} // name -> tenant
	for _, tenant := range []string{"acme", "acme-eu", "globex"} {
		name := base + tenant + "/key"
		c.createSecret(t, ctx, &secretsmanager.CreateSecretInput{
			Name: &name, SecretString: value(), Tags: []types.Tag{{Key: &tenantKey, Value: aws.String(tenant)}},
		})
		made[name] = tenant
	}
	list := func(filters ...types.Filter) ([]string, error) {
		var names []string
		p := secretsmanager.NewListSecretsPaginator(c.client, &secretsmanager.ListSecretsInput{Filters: filters})
		for p.HasMorePages() {
			page, err := p.NextPage(ctx)
			if err != nil {
				return nil, err
			}
			for _, s := range page.SecretList {
				names = append(names, aws.ToString(s.Name))
			}
		}
		slices.Sort(names)
		return names, nil
	}
	for _, tc := range []struct {
		name    string
		filters []types.Filter
		want    []string
	}{
		{"name prefix", []types.Filter{{Key: types.FilterNameStringTypeName, Values: []string{base}}},
			[]string{base + "acme-eu/key", base + "acme/key", base + "globex/key"}},
		{"name prefix of one tenant", []types.Filter{{Key: types.FilterNameStringTypeName, Values: []string{base + "acme/"}}},
			[]string{base + "acme/key"}},
		{"tag-key and tag-value", []types.Filter{
			{Key: types.FilterNameStringTypeTagKey, Values: []string{tenantKey}},
			{Key: types.FilterNameStringTypeTagValue, Values: []string{"globex"}},
		}, []string{base + "globex/key"}},
		{"tag-value is a prefix match", []types.Filter{
			{Key: types.FilterNameStringTypeTagKey, Values: []string{tenantKey}},
			{Key: types.FilterNameStringTypeTagValue, Values: []string{"acme"}},
		}, []string{base + "acme-eu/key", base + "acme/key"}},
		{"values of one filter are alternatives", []types.Filter{
			{Key: types.FilterNameStringTypeName, Values: []string{base + "acme/", base + "globex/"}},
		}, []string{base + "acme/key", base + "globex/key"}},
	} {
		eventually(t, ctx, "ListSecrets "+tc.name, func() error {
			got, err := list(tc.filters...)
			if err != nil {
				return err
			}
			if !slices.Equal(tc.want, got) {
				return fmt.Errorf("want %v, got %v", tc.want, got)
			}
			return nil
		})
	}
	_, err := list(types.Filter{Key: "no-such-key", Values: []string{"x"}})
	require.Error(t, err, "an unknown filter key")
}

func (c *conformance) forceDelete(t *testing.T, ctx context.Context) {
	name, _, _ := c.create(t, ctx, "delete")
	_, err := c.client.DeleteSecret(ctx, &secretsmanager.DeleteSecretInput{SecretId: &name, ForceDeleteWithoutRecovery: aws.Bool(true)})
	require.NoError(t, err)
	eventually(t, ctx, "DescribeSecret after a forced deletion", func() error {
		_, err := c.client.DescribeSecret(ctx, &secretsmanager.DescribeSecretInput{SecretId: &name})
		if IsCode(err, CodeResourceNotFound) {
			return nil
		}
		return fmt.Errorf("want ResourceNotFoundException, got %v", err)
	})
}

// eventually retries check with a growing pause until it returns nil or
// EventualTimeout passes.
func eventually(t *testing.T, ctx context.Context, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(EventualTimeout)
	pause := 100 * time.Millisecond
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("%s: %v (waited %s)", what, err, EventualTimeout)
		}
		time.Sleep(pause)
		pause = min(2*pause, 5*time.Second)
	}
}
