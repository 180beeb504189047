package awsevents

import (
	"errors"
	"fmt"
	"net/url"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/goccy/go-yaml"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// Section is the configuration section this package reads.
const Section = "triggers.awsevents"

// Defaults of Config.
const (
	DefaultWaitTime    = 20 * time.Second
	DefaultMaxMessages = 10
	// DefaultConfirmTPS paces the Secrets Manager calls that confirm
	// events (a fraction of DescribeSecret's quota of 50 per second).
	DefaultConfirmTPS = 10
	// DefaultDedupWindow is how long event ids are remembered.
	DefaultDedupWindow = 24 * time.Hour
	// DefaultMaxReceiveCount is deployments/aws's maxReceiveCount.
	DefaultMaxReceiveCount = 5
)

// Config is the triggers.awsevents section of rekey.yaml.
type Config struct {
	// Enabled runs the SQS consumer (default true). The EventBridge
	// outcome publisher has its own switch, eventbridge.enabled.
	Enabled bool `yaml:"enabled"`
	// QueueURL is the SQS queue an EventBridge rule feeds (required when
	// enabled). Give it a redrive policy to a dead-letter queue: a message
	// rekey cannot parse is left on the queue and only the redrive policy
	// takes it away.
	QueueURL string `yaml:"queue_url"`
	// Region of the queue (and, unless eventbridge.region is set, of
	// the EventBridge bus the exporter puts on). Default: read from
	// a standard queue URL (https://sqs.<region>.amazonaws.com/...), else
	// the SDK's (AWS_REGION, the shared config).
	Region string `yaml:"region"`
	// Endpoint overrides the SQS and EventBridge endpoint (an emulator,
	// a VPC endpoint). Credentials always come from the SDK's default chain.
	Endpoint string `yaml:"endpoint"`
	// WaitTime is the long poll of one ReceiveMessage, 1s to 20s in whole
	// seconds (default 20s).
	WaitTime time.Duration `yaml:"wait_time"`
	// MaxMessages received at once, 1 to 10 (default 10).
	MaxMessages int `yaml:"max_messages"`
	// VisibilityTimeout of the messages received, in whole seconds up to
	// 12h; 0 (default) keeps the queue's own.
	VisibilityTimeout time.Duration `yaml:"visibility_timeout"`
	// Tenants, when not empty, is the allow-list of tenants the queue's
	// Secrets Manager events may act on; an event about a secret of another
	// tenant is refused (audited to that tenant) and deleted.
	Tenants []string `yaml:"tenants"`
	// Accounts, when not empty, are the only AWS accounts whose events are
	// acted on; others are refused and deleted.
	Accounts []string `yaml:"accounts"`
	// AuditTenant receives the audit records of messages that name no
	// tenant: unparsable messages, unknown secrets, findings no rule maps.
	// Without it those are only logged and counted.
	AuditTenant string `yaml:"audit_tenant"`
	// GuardDuty maps GuardDuty findings to tenants to revoke.
	GuardDuty GuardDutyConfig `yaml:"guardduty"`
	// SecurityHub maps Security Hub findings ("Security Hub Findings -
	// Imported", ASFF, and "Findings Imported V2", OCSF) to tenants to
	// revoke, with rules of the same shape: access_key_ids and
	// principal_ids match the finding's IAM access key resource (OCSF:
	// actor.user), tag_key the tags of its resources, finding_types its
	// Types (OCSF finding_info.types), resource_types its resources'
	// Type. Archived, resolved and suppressed findings do nothing.
	SecurityHub GuardDutyConfig `yaml:"securityhub"`
	// CanaryReaders are the principals (userIdentity.arn, path.Match
	// patterns) expected to read canary secrets; a CloudTrail
	// GetSecretValue of a canary (see Trigger.WatchCanaries) by any other
	// is reported as a leak of it.
	CanaryReaders []string `yaml:"canary_readers"`
	// EventBridge is the outcome publisher's configuration, read by
	// fanout/exporters/eventbridge (with region, endpoint and queue_url);
	// kept here so that the section decodes strictly, not validated here.
	EventBridge yaml.RawMessage `yaml:"eventbridge"`
	// ConfirmTPS paces, per process, the Secrets Manager calls
	// (DescribeSecret, ListSecretVersionIds) that confirm a Secrets Manager
	// event before rekey acts on it (default 10). An event waits for its
	// turn up to the message's handling time, then stays on the queue.
	ConfirmTPS float64 `yaml:"confirm_tps"`
	// DedupWindow is how long an EventBridge event id, and a GuardDuty
	// finding's id with its updatedAt, are remembered (KV bucket
	// rekey_awsevents_dedup, shared by replicas and kept across
	// restarts): the same event within it acts once. A GuardDuty finding
	// last updated longer ago is refused as stale. It must exceed the
	// queue's visibility timeout times its maxReceiveCount, checked at
	// start (default 24h).
	DedupWindow time.Duration `yaml:"dedup_window"`
	// MaxReceiveCount is the most receives the queue's redrive policy may
	// allow before it dead-letters a message (default 5, as
	// deployments/aws). At start the queue must have a redrive policy
	// whose maxReceiveCount is at most this.
	MaxReceiveCount int `yaml:"max_receive_count"`
	// SecretsManager is where events are confirmed: the region and
	// endpoint of backends.awssm. The daemon fills it in; it is not read
	// from the section. Region defaults to the queue's.
	SecretsManager SecretsManagerTarget `yaml:"-"`
}

// SecretsManagerTarget is the Secrets Manager the trigger asks to confirm
// events: the one the awssm backend writes to.
type SecretsManagerTarget struct {
	Region   string
	Endpoint string
}

// GuardDutyConfig holds the rules that turn a GuardDuty finding into
// revocations. Every rule is tried; each rule that matches and whose
// min_severity the finding reaches names a tenant, and each tenant named
// is revoked once.
type GuardDutyConfig struct {
	Rules []GuardDutyRule `yaml:"rules"`
}

// GuardDutyRule matches a finding by the IAM access key or principal it
// names (and then revokes Tenant), or by a tag of the resource it names
// (and then revokes the tenant the tag's value names, if listed in
// Tenants).
type GuardDutyRule struct {
	// Name appears in audit records and reasons (default rule-<n>).
	Name string `yaml:"name"`
	// Tenant revoked when AccessKeyIDs or PrincipalIDs match
	// (detail.resource.accessKeyDetails.accessKeyId / .principalId).
	Tenant       string   `yaml:"tenant"`
	AccessKeyIDs []string `yaml:"access_key_ids"`
	PrincipalIDs []string `yaml:"principal_ids"`
	// TagKey is a tag of the finding's resource (EC2 instance, EKS or ECS
	// cluster, ECS task, Lambda function, RDS instance, S3 bucket) whose
	// value is the tenant, e.g. TenantId. Tenants is then required: the
	// only values acted on, since whoever may tag a resource may set it.
	TagKey  string   `yaml:"tag_key"`
	Tenants []string `yaml:"tenants"`
	// MinSeverity is the least detail.severity acted on: a number from 0
	// to 10, or low (1), medium (4), high (7), critical (9). Empty: any.
	MinSeverity string `yaml:"min_severity"`
	// FindingTypes, when set, narrow the rule to findings whose type
	// matches one of these regular expressions (RE2, anchored), e.g.
	// "UnauthorizedAccess:IAMUser/InstanceCredentialExfiltration.*", so
	// that a credential exfiltration and a Tor caller on the same key are
	// told apart by more than severity.
	FindingTypes []string `yaml:"finding_types"`
	// ResourceTypes, when set, narrow the rule to findings about a
	// resource of one of these types (GuardDuty detail.resource.resourceType:
	// AccessKey, Instance, EKSCluster...; Security Hub: AwsIamAccessKey,
	// AWS::IAM::AccessKey...).
	ResourceTypes []string `yaml:"resource_types"`
}

// Defaults returns the configuration of an empty section.
func Defaults() Config {
	return Config{
		Enabled: true, WaitTime: DefaultWaitTime, MaxMessages: DefaultMaxMessages,
		ConfirmTPS: DefaultConfirmTPS, DedupWindow: DefaultDedupWindow, MaxReceiveCount: DefaultMaxReceiveCount,
	}
}

// ParseConfig decodes the raw triggers.awsevents section over the
// defaults, validates it, and checks every tenant it names against the
// rekey configuration. Errors name their field, e.g.
// "triggers.awsevents.guardduty.rules[0].tenant".
func ParseConfig(raw []byte, rekey *orchestrator.Config) (Config, error) {
	cfg := Defaults()
	if s := strings.TrimSpace(string(raw)); s == "null" || s == "~" {
		raw = nil // a section with nothing under it
	}
	if err := orchestrator.DecodeSection(Section, raw, &cfg); err != nil {
		return Config{}, err
	}
	if err := cfg.checkAgainst(rekey); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Validate checks every field and returns every problem, each an
// *orchestrator.FieldError naming its field within the section.
func (c *Config) Validate() error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, orchestrator.FieldErrorf(field, format, args...))
	}
	for i, p := range c.CanaryReaders {
		if _, err := path.Match(p, ""); err != nil || p == "" {
			add(fmt.Sprintf("canary_readers[%d]", i), "%q is not a path.Match pattern", p)
		}
	}
	if c.Enabled {
		if c.QueueURL == "" {
			add("queue_url", "is required when enabled")
		} else if err := checkURL(c.QueueURL, true); err != nil {
			add("queue_url", "%v", err)
		}
	}
	if c.Endpoint != "" {
		if err := checkURL(c.Endpoint, false); err != nil {
			add("endpoint", "%v", err)
		}
	}
	if c.WaitTime < time.Second || c.WaitTime > 20*time.Second || c.WaitTime%time.Second != 0 {
		add("wait_time", "%s must be whole seconds from 1s to 20s", c.WaitTime)
	}
	if c.MaxMessages < 1 || c.MaxMessages > 10 {
		add("max_messages", "%d must be between 1 and 10", c.MaxMessages)
	}
	if c.VisibilityTimeout < 0 || c.VisibilityTimeout > 12*time.Hour || c.VisibilityTimeout%time.Second != 0 {
		add("visibility_timeout", "%s must be whole seconds up to 12h (0: the queue's)", c.VisibilityTimeout)
	}
	if !(c.ConfirmTPS > 0 && c.ConfirmTPS <= 1000) {
		add("confirm_tps", "%v must be above 0 and at most 1000", c.ConfirmTPS)
	}
	if c.MaxReceiveCount < 1 || c.MaxReceiveCount > 1000 {
		add("max_receive_count", "%d must be between 1 and 1000 (SQS's range)", c.MaxReceiveCount)
	}
	switch {
	case c.DedupWindow < time.Minute || c.DedupWindow > 30*24*time.Hour:
		add("dedup_window", "%s must be from 1m to 720h", c.DedupWindow)
	case c.VisibilityTimeout > 0 && c.MaxReceiveCount > 0 && c.DedupWindow <= c.VisibilityTimeout*time.Duration(c.MaxReceiveCount):
		add("dedup_window", "%s must exceed visibility_timeout (%s) times max_receive_count (%d): a message can come back that long after its first receive",
			c.DedupWindow, c.VisibilityTimeout, c.MaxReceiveCount)
	}
	if c.SecretsManager.Endpoint != "" {
		if err := checkURL(c.SecretsManager.Endpoint, false); err != nil {
			add("secretsmanager.endpoint", "%v", err)
		}
	}
	for i, t := range c.Tenants {
		if err := schemas.ValidateID("tenant", t); err != nil {
			add(fmt.Sprintf("tenants[%d]", i), "%v", err)
		}
	}
	for i, a := range c.Accounts {
		if !isAccountID(a) {
			add(fmt.Sprintf("accounts[%d]", i), "%q is not a 12-digit AWS account id", a)
		}
	}
	if c.AuditTenant != "" {
		if err := schemas.ValidateID("tenant", c.AuditTenant); err != nil {
			add("audit_tenant", "%v", err)
		}
	}
	for _, rs := range []struct {
		field string
		rules []GuardDutyRule
	}{{"guardduty", c.GuardDuty.Rules}, {"securityhub", c.SecurityHub.Rules}} {
		names := map[string]bool{}
		for i, r := range rs.rules {
			rf := fmt.Sprintf("%s.rules[%d]", rs.field, i)
			for _, p := range r.validate() {
				add(strings.TrimSuffix(rf+"."+p.field, "."), "%s", p.reason)
			}
			if n := r.name(i); names[n] {
				add(rf+".name", "%q is used by another rule", n)
			} else {
				names[n] = true
			}
		}
	}
	return errors.Join(errs...)
}

type fieldProblem struct{ field, reason string }

func (r GuardDutyRule) name(i int) string {
	if r.Name != "" {
		return r.Name
	}
	return fmt.Sprintf("rule-%d", i+1)
}

func (r GuardDutyRule) validate() []fieldProblem {
	var out []fieldProblem
	add := func(field, format string, args ...any) {
		out = append(out, fieldProblem{field, fmt.Sprintf(format, args...)})
	}
	byIdentity := len(r.AccessKeyIDs) > 0 || len(r.PrincipalIDs) > 0
	switch {
	case byIdentity && r.TagKey != "":
		add("tag_key", "a rule matches access_key_ids/principal_ids or tag_key, not both")
	case byIdentity:
		if r.Tenant == "" {
			add("tenant", "is required with access_key_ids or principal_ids")
		} else if err := schemas.ValidateID("tenant", r.Tenant); err != nil {
			add("tenant", "%v", err)
		}
		if len(r.Tenants) > 0 {
			add("tenants", "is for tag_key rules; use tenant")
		}
	case r.TagKey != "":
		if r.Tenant != "" {
			add("tenant", "a tag_key rule revokes the tenant its tag names; list it in tenants")
		}
		if len(r.Tenants) == 0 {
			add("tenants", "at least one tenant is required with tag_key (the values acted on)")
		}
	default:
		add("", "one of access_key_ids, principal_ids or tag_key is required")
	}
	for i, t := range r.Tenants {
		if err := schemas.ValidateID("tenant", t); err != nil {
			add(fmt.Sprintf("tenants[%d]", i), "%v", err)
		}
	}
	for i, k := range r.AccessKeyIDs {
		if k == "" || strings.TrimSpace(k) != k {
			add(fmt.Sprintf("access_key_ids[%d]", i), "must be an access key id without spaces")
		}
	}
	for i, p := range r.PrincipalIDs {
		if p == "" || strings.TrimSpace(p) != p {
			add(fmt.Sprintf("principal_ids[%d]", i), "must be a principal id without spaces")
		}
	}
	if _, err := ParseSeverity(r.MinSeverity); err != nil {
		add("min_severity", "%v", err)
	}
	for i, p := range r.FindingTypes {
		if p == "" {
			add(fmt.Sprintf("finding_types[%d]", i), "is empty")
		} else if _, err := regexp.Compile("^(?:" + p + ")$"); err != nil {
			add(fmt.Sprintf("finding_types[%d]", i), "%v", err)
		}
	}
	for i, t := range r.ResourceTypes {
		if t == "" || strings.TrimSpace(t) != t {
			add(fmt.Sprintf("resource_types[%d]", i), "must be a resource type without spaces")
		}
	}
	return out
}

// checkAgainst checks that every tenant the section names is configured.
func (c Config) checkAgainst(rekey *orchestrator.Config) error {
	if rekey == nil {
		return nil
	}
	var errs []error
	check := func(field, tenant string) {
		if _, ok := rekey.Tenants[tenant]; !ok {
			errs = append(errs, orchestrator.FieldErrorf(Section+"."+field, "tenant %q is not configured in tenants", tenant))
		}
	}
	for i, t := range c.Tenants {
		check(fmt.Sprintf("tenants[%d]", i), t)
	}
	if c.AuditTenant != "" {
		check("audit_tenant", c.AuditTenant)
	}
	for _, rs := range []struct {
		field string
		rules []GuardDutyRule
	}{{"guardduty", c.GuardDuty.Rules}, {"securityhub", c.SecurityHub.Rules}} {
		for i, r := range rs.rules {
			rf := fmt.Sprintf("%s.rules[%d]", rs.field, i)
			if r.Tenant != "" {
				check(rf+".tenant", r.Tenant)
			}
			for j, t := range r.Tenants {
				check(fmt.Sprintf("%s.tenants[%d]", rf, j), t)
			}
		}
	}
	return errors.Join(errs...)
}

// withDefaults fills the zero values that stand for defaults.
func (c Config) withDefaults() Config {
	if c.WaitTime == 0 {
		c.WaitTime = DefaultWaitTime
	}
	if c.MaxMessages == 0 {
		c.MaxMessages = DefaultMaxMessages
	}
	if c.ConfirmTPS == 0 {
		c.ConfirmTPS = DefaultConfirmTPS
	}
	if c.DedupWindow == 0 {
		c.DedupWindow = DefaultDedupWindow
	}
	if c.MaxReceiveCount == 0 {
		c.MaxReceiveCount = DefaultMaxReceiveCount
	}
	return c
}

func checkURL(raw string, queue bool) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("%q must be an http(s) URL", raw)
	}
	if queue && strings.Count(strings.Trim(u.Path, "/"), "/") != 1 {
		return fmt.Errorf("%q is not a queue URL (https://sqs.<region>.amazonaws.com/<account>/<queue>)", raw)
	}
	return nil
}

func isAccountID(s string) bool {
	if len(s) != 12 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Severity names GuardDuty uses for its ranges.
var severityNames = map[string]float64{"low": 1, "medium": 4, "high": 7, "critical": 9}

// ParseSeverity parses a min_severity: "" (0), a number from 0 to 10, or
// low, medium, high or critical (the lower bound of GuardDuty's range).
func ParseSeverity(s string) (float64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	if v, ok := severityNames[strings.ToLower(s)]; ok {
		return v, nil
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || !(v >= 0 && v <= 10) {
		return 0, fmt.Errorf("%q must be a number from 0 to 10, or low, medium, high or critical", s)
	}
	return v, nil
}
