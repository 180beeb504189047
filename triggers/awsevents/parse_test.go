package awsevents_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/awsevents"
)

const acmeARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:acme/openai-key-AbCdEf"

// fixture reads testdata/events/<name>.json: payloads in the shapes AWS
// documents (EventBridge envelope, CloudTrail detail, GuardDuty finding).
func fixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "events", name+".json"))
	require.NoError(t, err)
	return b
}

// TestParseFixtures: every documented event shape is read as rekey needs
// it, and says what it means for the secret.
func TestParseFixtures(t *testing.T) {
	for _, tc := range []struct {
		fixture, event, secretID, version, outcome string
		live                                       bool
	}{
		{"rotation_succeeded", "RotationSucceeded", acmeARN, "", schemas.ExternalSucceeded, true},
		{"rotation_started", "RotationStarted", acmeARN, "", schemas.ExternalInfo, false},
		{"rotation_failed", "RotationFailed", acmeARN, "", schemas.ExternalFailed, false},
		{"rotation_abandoned", "RotationAbandoned", acmeARN, "", schemas.ExternalFailed, false},
		{"put_secret_value", "PutSecretValue", acmeARN, "4d383ea9-084a-49c9-8722-cbfb0f25c456", schemas.ExternalSucceeded, true},
		{"put_secret_value_current", "PutSecretValue", "acme/openai-key", "a1b2c3d4-0000-4000-8000-000000000001", schemas.ExternalSucceeded, true},
		{"put_secret_value_pending", "PutSecretValue", "acme/openai-key", "rekey-7f3a9c21", schemas.ExternalInfo, false},
		{"put_secret_value_denied", "PutSecretValue", acmeARN, "4d383ea9-084a-49c9-8722-cbfb0f25c456", schemas.ExternalInfo, false},
		{"update_secret_version_stage", "UpdateSecretVersionStage", acmeARN, "b7e1c2d3-1111-4222-8333-944455556666", schemas.ExternalSucceeded, true},
		{"update_secret_version_stage_pending", "UpdateSecretVersionStage", acmeARN, "", schemas.ExternalInfo, false},
		{"rotate_secret", "RotateSecret", "acme/openai-key", "c3d4e5f6-2222-4333-8444-a55566667777", schemas.ExternalInfo, false},
		{"delete_secret", "DeleteSecret", "acme/openai-key", "", schemas.ExternalInfo, true},
		{"update_secret", "UpdateSecret", "acme/openai-key", "d4e5f6a7-3333-4444-8555-b66677778888", schemas.ExternalSucceeded, true},
		{"update_secret_description", "UpdateSecret", "acme/openai-key", "", schemas.ExternalInfo, false},
	} {
		t.Run(tc.fixture, func(t *testing.T) {
			m, err := awsevents.ParseMessage(fixture(t, tc.fixture))
			require.NoError(t, err)
			require.Equal(t, awsevents.KindSecretsManager, m.Kind)
			require.Equal(t, awsevents.SourceSecretsManager, m.Source)
			require.NotEmpty(t, m.ID)
			require.False(t, m.Time.IsZero())
			s := m.Secret
			require.NotNil(t, s)
			require.True(t, s.Understood())
			require.Equal(t, tc.event, s.EventName)
			require.Equal(t, tc.secretID, s.SecretID)
			require.Equal(t, tc.version, s.VersionID)
			require.False(t, s.EventTime.IsZero())
			outcome, live := s.Change()
			require.Equal(t, tc.outcome, outcome)
			require.Equal(t, tc.live, live)
		})
	}

	m, err := awsevents.ParseMessage(fixture(t, "rotation_failed"))
	require.NoError(t, err)
	require.Contains(t, m.Secret.ErrorMessage, "during createSecret step")
	require.Empty(t, m.Secret.ErrorCode)

	m, err = awsevents.ParseMessage(fixture(t, "put_secret_value_denied"))
	require.NoError(t, err)
	require.Equal(t, "AccessDenied", m.Secret.ErrorCode)

	m, err = awsevents.ParseMessage(fixture(t, "tag_resource"))
	require.NoError(t, err)
	require.Equal(t, awsevents.KindSecretsManager, m.Kind)
	require.False(t, m.Secret.Understood(), "TagResource is not acted on")
}

func TestParseGuardDutyFindings(t *testing.T) {
	m, err := awsevents.ParseMessage(fixture(t, "guardduty_access_key"))
	require.NoError(t, err)
	require.Equal(t, awsevents.KindGuardDuty, m.Kind)
	f := m.Finding
	require.Equal(t, "ASIAEXAMPLEACMEAGENT", f.AccessKeyID)
	require.Equal(t, "AROAEXAMPLEACMEROLE:i-0abc1234def567890", f.PrincipalID)
	require.Equal(t, 8.0, f.Severity)
	require.Equal(t, "UnauthorizedAccess:IAMUser/InstanceCredentialExfiltration.OutsideAWS", f.Type)
	require.Equal(t, "16afba5c5c43e07c9e3e5e2e544e95df", f.ID)
	require.Empty(t, f.Tags)

	m, err = awsevents.ParseMessage(fixture(t, "guardduty_instance_tags"))
	require.NoError(t, err)
	require.Equal(t, 5.0, m.Finding.Severity)
	require.Contains(t, m.Finding.Tags, awsevents.Tag{Key: "TenantId", Value: "globex"})

	m, err = awsevents.ParseMessage(fixture(t, "guardduty_eks_tags"))
	require.NoError(t, err)
	require.Equal(t, 2.0, m.Finding.Severity)
	require.Contains(t, m.Finding.Tags, awsevents.Tag{Key: "TenantId", Value: "acme"})

	// PascalCase keys and a severity given as a string or a name still read.
	m, err = awsevents.ParseMessage([]byte(`{"id":"x","source":"aws.guardduty","detail-type":"GuardDuty Finding",` + where + `
		"detail":{"Id":"f","Severity":"7.5","Resource":{"AccessKeyDetails":{"AccessKeyId":"AKIAX"}}}}`))
	require.NoError(t, err)
	require.Equal(t, 7.5, m.Finding.Severity)
	require.Equal(t, "AKIAX", m.Finding.AccessKeyID)
	m, err = awsevents.ParseMessage([]byte(`{"id":"x","source":"aws.guardduty","detail-type":"GuardDuty Finding",` + where + `"detail":{"id":"f","severity":"HIGH"}}`))
	require.NoError(t, err)
	require.Equal(t, 7.0, m.Finding.Severity)
}

// TestParseOtherEvents: well-formed events rekey does not act on are not
// errors (the message is deleted, not left for the dead-letter queue).
func TestParseOtherEvents(t *testing.T) {
	for name, body := range map[string]string{
		"another source":          `{"id":"1","source":"aws.ec2","detail-type":"EC2 Instance State-change Notification","detail":{"state":"running"}}`,
		"another detail-type":     `{"id":"1","source":"aws.secretsmanager","detail-type":"Something New","detail":{}}`,
		"another CloudTrail svc":  `{"id":"1","source":"aws.secretsmanager","detail-type":"AWS API Call via CloudTrail",` + where + `"detail":{"eventSource":"kms.amazonaws.com","eventName":"Decrypt"}}`,
		"GuardDuty other type":    `{"id":"1","source":"aws.guardduty","detail-type":"GuardDuty Malware Protection Object Scan Result","detail":{}}`,
		"no time, no resources":   `{"id":"1","source":"custom","detail-type":"x","detail":{}}`,
		"unknown secret event ok": `{"id":"1","source":"aws.secretsmanager","detail-type":"AWS API Call via CloudTrail",` + where + `"detail":{"eventName":"GetSecretValue"}}`,
	} {
		t.Run(name, func(t *testing.T) {
			m, err := awsevents.ParseMessage([]byte(body))
			require.NoError(t, err)
			if m.Kind == awsevents.KindSecretsManager {
				require.False(t, m.Secret.Understood())
			} else {
				require.Equal(t, awsevents.KindOther, m.Kind)
			}
		})
	}
}

func TestParseMalformed(t *testing.T) {
	long := strings.Repeat("a", 300)
	for name, body := range map[string]string{
		"not JSON":                 `not json`,
		"empty":                    ``,
		"array":                    `[]`,
		"string":                   `"hello"`,
		"no id":                    `{"source":"aws.secretsmanager","detail-type":"x","detail":{}}`,
		"long id":                  `{"id":"` + long + `","source":"s","detail-type":"x","detail":{}}`,
		"no source":                `{"id":"1","detail-type":"x","detail":{}}`,
		"no detail-type":           `{"id":"1","source":"s","detail":{}}`,
		"no detail":                `{"id":"1","source":"s","detail-type":"x"}`,
		"detail not an object":     `{"id":"1","source":"s","detail-type":"x","detail":"text"}`,
		"bad time":                 `{"id":"1","source":"s","detail-type":"x","time":"yesterday","detail":{}}`,
		"id of the wrong type":     `{"id":1,"source":"s","detail-type":"x","detail":{}}`,
		"resources not strings":    `{"id":"1","source":"s","detail-type":"x","resources":[1],"detail":{}}`,
		"no eventName":             secretEvent(``),
		"no secret":                secretEvent(`"eventName":"RotationSucceeded"`),
		"bad eventTime":            secretEvent(`"eventName":"DeleteSecret","eventTime":"x","requestParameters":{"secretId":"s"}`),
		"requestParameters string": secretEvent(`"eventName":"PutSecretValue","requestParameters":"s"`),
		"severity not a number":    finding(`"severity":"very"`),
		"tags not a list":          finding(`"severity":5,"resource":{"instanceDetails":{"tags":{"k":"v"}}}`),
		"severity NaN":             finding(`"severity":"NaN"`),
		"severity Inf":             finding(`"severity":"Inf"`),
		"severity -Infinity":       finding(`"severity":"-Infinity"`),
		"severity hex":             finding(`"severity":"0x1p3"`),
		"severity below 0":         finding(`"severity":-1`),
		"severity above 10":        finding(`"severity":10.5`),
		"severity huge":            finding(`"severity":1e400`),
		"severity null":            finding(`"severity":null`),
		"no severity":              finding(`"type":"x"`),
		"no finding id":            `{"id":"1","source":"aws.guardduty","detail-type":"GuardDuty Finding",` + where + `"detail":{"severity":5}}`,
		"bad updatedAt":            finding(`"severity":5,"updatedAt":"yesterday"`),
		"no account":               `{"id":"1","source":"aws.guardduty","detail-type":"GuardDuty Finding","region":"us-east-1","detail":{"id":"f","severity":5}}`,
		"account not 12 digits":    `{"id":"1","source":"aws.secretsmanager","detail-type":"AWS API Call via CloudTrail","account":"12345","region":"us-east-1","detail":{"eventName":"DeleteSecret","requestParameters":{"secretId":"s"}}}`,
		"region not a region":      `{"id":"1","source":"aws.secretsmanager","detail-type":"AWS API Call via CloudTrail","account":"123456789012","region":"../x","detail":{"eventName":"DeleteSecret","requestParameters":{"secretId":"s"}}}`,
		"awsRegion not a region":   secretEvent(`"eventName":"DeleteSecret","awsRegion":"moon","requestParameters":{"secretId":"s"}`),
		"recipient not an account": secretEvent(`"eventName":"DeleteSecret","recipientAccountId":"x","requestParameters":{"secretId":"s"}`),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := awsevents.ParseMessage([]byte(body))
			require.Error(t, err)
			require.True(t, errors.Is(err, awsevents.ErrMalformed), "%v", err)
		})
	}
	// The error names the field.
	for field, body := range map[string]string{
		"detail.severity":           finding(`"severity":"NaN"`),
		"detail.id":                 `{"id":"1","source":"aws.guardduty","detail-type":"GuardDuty Finding",` + where + `"detail":{"severity":5}}`,
		"detail.updatedAt":          finding(`"severity":5,"updatedAt":"x"`),
		"account":                   `{"id":"1","source":"aws.guardduty","detail-type":"GuardDuty Finding","region":"us-east-1","detail":{"id":"f","severity":5}}`,
		"detail.awsRegion":          secretEvent(`"eventName":"DeleteSecret","awsRegion":"moon","requestParameters":{"secretId":"s"}`),
		"detail.recipientAccountId": secretEvent(`"eventName":"DeleteSecret","recipientAccountId":"x","requestParameters":{"secretId":"s"}`),
	} {
		_, err := awsevents.ParseMessage([]byte(body))
		require.ErrorContains(t, err, field)
	}
}

// where is the account and region of an event's envelope.
const where = `"account":"123456789012","region":"us-east-1",`

// finding is a GuardDuty finding event with detail fields (and id f).
func finding(fields string) string {
	return `{"id":"1","source":"aws.guardduty","detail-type":"GuardDuty Finding",` + where + `"detail":{"id":"f",` + fields + `}}`
}

// secretEvent is a Secrets Manager CloudTrail event with detail fields.
func secretEvent(fields string) string {
	return `{"id":"1","source":"aws.secretsmanager","detail-type":"AWS API Call via CloudTrail",` + where + `"detail":{` + fields + `}}`
}

// FuzzParseMessage: no input panics; what parses holds what the trigger
// relies on; what does not is ErrMalformed.
func FuzzParseMessage(f *testing.F) {
	names, err := filepath.Glob(filepath.Join("testdata", "events", "*.json"))
	if err != nil || len(names) == 0 {
		f.Fatalf("no fixtures: %v", err)
	}
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"id":"1","source":"aws.guardduty","detail-type":"GuardDuty Finding","detail":{"severity":"1e400"}}`))
	f.Add([]byte(finding(`"severity":"NaN"`)))
	f.Add([]byte(finding(`"severity":"Inf","updatedAt":"2024-11-05T09:12:40Z"`)))
	f.Add([]byte(`{"id":"1","source":"aws.secretsmanager","detail-type":"AWS API Call via CloudTrail","detail":{"eventName":"PutSecretValue","requestParameters":{"secretId":"s","versionStages":[]}}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := awsevents.ParseMessage(body)
		if err != nil {
			if !errors.Is(err, awsevents.ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
			return
		}
		if m.ID == "" || len(m.ID) > 256 || m.Source == "" || m.DetailType == "" {
			t.Fatalf("parsed without id, source or detail-type: %+v", m)
		}
		if !m.Time.IsZero() && m.Time.Location() != time.UTC {
			t.Fatalf("time not in UTC: %v", m.Time)
		}
		switch m.Kind {
		case awsevents.KindSecretsManager:
			if m.Secret == nil || m.Secret.EventName == "" {
				t.Fatalf("secrets manager event without its detail: %+v", m)
			}
			if m.Secret.Understood() && m.Secret.SecretID == "" {
				t.Fatalf("%s without a secret", m.Secret.EventName)
			}
			outcome, _ := m.Secret.Change()
			if outcome != schemas.ExternalSucceeded && outcome != schemas.ExternalFailed && outcome != schemas.ExternalInfo {
				t.Fatalf("outcome %q", outcome)
			}
		case awsevents.KindGuardDuty:
			if m.Finding == nil {
				t.Fatal("finding without its detail")
			}
			if sev := m.Finding.Severity; !(sev >= 0 && sev <= 10) || m.Finding.ID == "" {
				t.Fatalf("finding with severity %v, id %q", sev, m.Finding.ID)
			}
		}
		// Parsing is a pure function of the body.
		again, err := awsevents.ParseMessage(body)
		if err != nil {
			t.Fatalf("second parse failed: %v", err)
		}
		a, _ := json.Marshal(m)
		b, _ := json.Marshal(again)
		if string(a) != string(b) {
			t.Fatalf("two parses differ:\n%s\n%s", a, b)
		}
	})
}

func BenchmarkParseMessage(b *testing.B) {
	for _, name := range []string{"rotation_succeeded", "put_secret_value", "guardduty_instance_tags"} {
		body := fixture(b, name)
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if _, err := awsevents.ParseMessage(body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
