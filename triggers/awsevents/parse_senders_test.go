package awsevents_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/triggers/awsevents"
)

// TestParseSenderEvents: the native Secret Label Updated event and
// Security Hub's ASFF and OCSF findings as AWS documents them.
func TestParseSenderEvents(t *testing.T) {
	m, err := awsevents.ParseMessage(fixture(t, "secret_label_updated"))
	require.NoError(t, err)
	require.Equal(t, awsevents.KindSecretsManager, m.Kind)
	require.Equal(t, awsevents.EventSecretLabelUpdated, m.Secret.EventName)
	require.Equal(t, "acme/openai-key", m.Secret.SecretID)
	require.Equal(t, acmeARN, m.Secret.ARN)
	require.Equal(t, "a1b2c3d4-5678-90ab-cdef-EXAMPLE11111", m.Secret.VersionID)
	outcome, live := m.Secret.Change()
	require.Equal(t, "succeeded", outcome)
	require.True(t, live)

	for _, name := range []string{"securityhub_asff", "securityhub_ocsf"} {
		m, err := awsevents.ParseMessage(fixture(t, name))
		require.NoError(t, err, name)
		require.Equal(t, awsevents.KindSecurityHub, m.Kind, name)
		f := m.Finding
		require.Equal(t, "Security Hub", f.Product)
		require.Equal(t, "arn:aws:guardduty:us-east-1:123456789012:detector/123456789012abcd/finding/16afba5c5c43e07c9e3e5e2e544e95df", f.ID)
		require.Equal(t, "ASIAEXAMPLEACMEAGENT", f.AccessKeyID, name)
		require.Equal(t, "AROAEXAMPLEACMEROLE:i-0abc1234def567890", f.PrincipalID, name)
		require.Equal(t, 7.0, f.Severity, name)
		require.False(t, f.Inactive)
		require.Len(t, f.ResourceTypes, 1)
		require.Contains(t, f.Type, "InstanceCredentialExfiltration.OutsideAWS")
	}

	for _, tc := range []struct{ name, from, to, want string }{
		{"secret_label_updated", `"labelUpdated": "AWSCURRENT",`, ``, "no detail.labelUpdated"},
		{"secret_label_updated", `"account": "123456789012"`, `"account": "1234"`, "12-digit"},
		{"securityhub_asff", `"findings": [{`, `"findings": [{}, {`, "2 findings"},
		{"securityhub_asff", `"Label": "HIGH"`, `"Label": "BANANA"`, "not a severity"},
		{"securityhub_ocsf", `"severity_id": 4`, `"severity_id": 9`, "not 1 to 6"},
		{"securityhub_ocsf", `"uid": "arn:aws:guardduty`, `"x": "arn:aws:guardduty`, "no id"},
	} {
		body := strings.Replace(string(fixture(t, tc.name)), tc.from, tc.to, 1)
		_, err := awsevents.ParseMessage([]byte(body))
		require.ErrorIs(t, err, awsevents.ErrMalformed, tc.want)
		require.ErrorContains(t, err, tc.want)
	}
}

func TestTypedRulesConfig(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"guardduty: {rules: [{tenant: acme, access_key_ids: [K], finding_types: [\"(\"]}]}", "guardduty.rules[0].finding_types[0]"},
		{"securityhub: {rules: [{tenant: acme, access_key_ids: [K], resource_types: [\" x\"]}]}", "securityhub.rules[0].resource_types[0]"},
		{"securityhub: {rules: [{tenant: nobody, access_key_ids: [K]}]}", `securityhub.rules[0].tenant: tenant "nobody" is not configured`},
	} {
		_, err := awsevents.ParseConfig([]byte("enabled: false\n"+tc.yaml), rekeyConfig(t))
		require.ErrorContains(t, err, tc.want)
	}
}
