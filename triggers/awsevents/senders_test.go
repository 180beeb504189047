package awsevents_test

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/schemas"
	"github.com/rekey-dev/rekey/triggers/awsevents"
)

// typedYAML narrows the rules by finding type and resource type, and maps
// Security Hub findings (issue 16, items 4 and 5); %s as sectionYAML.
const typedYAML = `
queue_url: %s
region: us-east-1
endpoint: %s
wait_time: 1s
tenants: [acme, globex]
audit_tenant: ops
guardduty:
  rules:
    - name: acme-exfiltration
      tenant: acme
      access_key_ids: [ASIAEXAMPLEACMEAGENT]
      finding_types: ["UnauthorizedAccess:IAMUser/InstanceCredentialExfiltration.*"]
      resource_types: [AccessKey]
      min_severity: high
securityhub:
  rules:
    - name: acme-exfiltration-hub
      tenant: acme
      access_key_ids: [ASIAEXAMPLEACMEAGENT]
      finding_types: [".*InstanceCredentialExfiltration.*"]
      resource_types: [AwsIamAccessKey, "AWS::IAM::AccessKey"]
      min_severity: high
eventbridge:
  enabled: true
  bus_name: %s
`

// newTypedEnv is newEnv with typedYAML, and a rule that routes Security
// Hub findings and Secret Label Updated events to the queue too.
func newTypedEnv(t *testing.T) *env {
	t.Helper()
	e := newEnv(t)
	target := e.cfg.SecretsManager
	cfg, err := awsevents.ParseConfig([]byte(fmt.Sprintf(typedYAML, e.queue.URL, e.kumo.Endpoint, e.ebBus)), e.rekey)
	require.NoError(t, err)
	cfg.SecretsManager = target
	e.cfg = cfg
	require.NoError(t, e.kumo.RouteToQueue(context.Background(), e.ebBus, "more-to-rekey",
		`{"source":["aws.securityhub","aws.secretsmanager"],"detail-type":["Security Hub Findings - Imported","Findings Imported V2","Secret Label Updated"]}`,
		e.queue.ARN))
	return e
}

var hubTimeRE = regexp.MustCompile(`"(UpdatedAt|modified_time_dt|time_dt)": *"[^"]*"`)

// hubFixture is a Security Hub fixture updated just now.
func (e *env) hubFixture(name string) []byte {
	now := time.Now().UTC().Format(time.RFC3339Nano)
	return []byte(hubTimeRE.ReplaceAllString(string(e.fixture(name)), `"$1": "`+now+`"`))
}

// TestAttackFindingTypeAndResource (issue 16, item 4): a Tor caller
// finding on acme's agent key, severe as it is, is not the credential
// exfiltration the rule is for: nothing is revoked; nor is an
// exfiltration of another resource type. The exfiltration is. A replay
// of the same finding update (under a new event id) does nothing more.
func TestAttackFindingTypeAndResource(t *testing.T) {
	e := newTypedEnv(t)
	e.start()
	before := e.snapshot()
	torID := e.putEvent(e.fixture("guardduty_tor_caller"))
	wrongRes := e.putEvent([]byte(strings.Replace(string(e.fixture("guardduty_access_key")), `"resourceType": "AccessKey"`, `"resourceType": "Instance"`, 1)))
	e.waitHandled(2)
	e.requireUnchanged(before, "a finding of another type or resource type")
	require.Len(t, e.auditsOf("ops", "aws.event"), 2)
	for _, r := range e.auditsOf("ops", "aws.event") {
		require.Contains(t, []string{torID, wrongRes}, r.Detail["event_id"])
		require.Contains(t, r.Detail["reason"], "no guardduty rule maps the finding to a tenant")
	}

	body := e.fixture("guardduty_access_key")
	exfil := e.putEvent(body)
	e.waitHandled(3)
	revs, evs := e.revocations()
	require.Len(t, revs, 1)
	require.Equal(t, "acme", revs[0].Tenant)
	require.Equal(t, "aws-"+exfil+"-revoke-acme", evs[0].ID)
	require.Contains(t, revs[0].Reason, "GuardDuty finding UnauthorizedAccess:IAMUser/InstanceCredentialExfiltration.OutsideAWS")

	// The same update of the finding, delivered again under a new event id.
	after := e.snapshot()
	e.putEvent(body)
	e.waitHandled(4)
	require.Equal(t, 1.0, e.count(awsevents.OutcomeDuplicate))
	e.requireUnchanged(after, "a replayed finding")
}

// TestSecurityHubFindings (issue 16, item 4): ASFF and OCSF findings of a
// credential exfiltration on acme's key revoke acme; an archived one, one
// below min_severity and one of another type change nothing.
func TestSecurityHubFindings(t *testing.T) {
	e := newTypedEnv(t)
	e.start()
	before := e.snapshot()
	asff := string(e.hubFixture("securityhub_asff"))
	// Each variant is another finding (the same one would be a duplicate).
	variant := func(body, n, old, repl string) []byte {
		body = strings.ReplaceAll(body, "16afba5c5c43e07c9e3e5e2e544e95df", "variant"+n)
		return []byte(strings.Replace(body, old, repl, 1))
	}
	e.putEvent(variant(asff, "1", `"RecordState": "ACTIVE"`, `"RecordState": "ARCHIVED"`))
	e.putEvent(variant(asff, "2", `"Label": "HIGH"`, `"Label": "MEDIUM"`))
	e.putEvent(variant(asff, "3", "InstanceCredentialExfiltration.OutsideAWS", "TorIPCaller"))
	ocsf := string(e.hubFixture("securityhub_ocsf"))
	e.putEvent(variant(ocsf, "4", `"severity_id": 4`, `"severity_id": 3`))
	e.waitHandled(4)
	e.requireUnchanged(before, "archived, low or other Security Hub findings")
	require.Equal(t, 3.0, e.count(awsevents.OutcomeIgnored), "the archived finding and the two below min_severity")
	require.Equal(t, 1.0, e.count(awsevents.OutcomeRefused), "the other type")

	asffID := e.putEvent([]byte(asff))
	e.waitHandled(5)
	revs, evs := e.revocations()
	require.Len(t, revs, 1)
	require.Equal(t, "aws-"+asffID+"-revoke-acme", evs[0].ID)
	require.Contains(t, revs[0].Reason, "Security Hub finding TTPs/Credential Access/UnauthorizedAccess:IAMUser-InstanceCredentialExfiltration.OutsideAWS")
	require.Contains(t, revs[0].Reason, "rule acme-exfiltration-hub")

	ocsfID := e.putEvent([]byte(ocsf))
	e.waitHandled(6)
	revs, evs = e.revocations()
	require.Len(t, revs, 2)
	require.Equal(t, "aws-"+ocsfID+"-revoke-acme", evs[1].ID)
	acc := 0
	for _, r := range e.auditsOf("acme", "revocation.revoke.request") {
		if r.Outcome == schemas.OutcomeAccepted {
			acc++
			require.Equal(t, "access_key_id", r.Detail["matched"])
		}
	}
	require.Equal(t, 2, acc)
}

// TestSecretLabelUpdated (issue 16, item 5): Secrets Manager's native
// event that AWSCURRENT moved is an external change plus a sync, as the
// CloudTrail events are, once Secrets Manager confirms the version; a
// forged one naming a version that does not exist changes nothing, and
// a label other than AWSCURRENT asks for no sync.
func TestSecretLabelUpdated(t *testing.T) {
	e := newTypedEnv(t)
	e.start()
	before := e.snapshot()
	e.send(withEventID(e.fixture("secret_label_updated"), "label-forged"))
	e.waitHandled(1)
	require.Contains(t, e.unconfirmedOf("acme")["label-forged"], "does not exist")
	e.requireUnchanged(before, "a forged Secret Label Updated")

	const version = "a1b2c3d4-5678-90ab-cdef-EXAMPLE11111"
	e.putVersion("acme/openai-key", version)
	id := e.putEvent(e.fixture("secret_label_updated"))
	e.waitHandled(2)
	reqs, evs := e.rotations()
	require.Len(t, reqs, 1)
	require.Equal(t, schemas.RotateModeSync, reqs[0].Mode)
	require.Equal(t, "acme", reqs[0].Tenant)
	require.Equal(t, "openai-key", reqs[0].Secret)
	require.Equal(t, "aws-"+id+"-sync", evs[0].ID)
	chs, _ := e.changes()
	require.Len(t, chs, 1)
	require.Equal(t, awsevents.EventSecretLabelUpdated, chs[0].Event)
	require.Equal(t, schemas.ExternalSucceeded, chs[0].Outcome)
	require.Equal(t, version, chs[0].VersionID)

	// Another label: an external change for the record, no sync.
	e.send(withEventID([]byte(strings.Replace(string(e.fixture("secret_label_updated")), `"AWSCURRENT"`, `"prod"`, 1)), "label-prod"))
	e.waitHandled(3)
	reqs, _ = e.rotations()
	require.Len(t, reqs, 1)
	chs, _ = e.changes()
	require.Len(t, chs, 2)
	require.Equal(t, schemas.ExternalInfo, chs[1].Outcome)
}
