package awsevents

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rekey-dev/rekey/schemas"
)

// ErrMalformed is returned (wrapped) by ParseMessage for a body that is not
// an EventBridge event rekey can read. Such a message is left on the queue.
var ErrMalformed = errors.New("malformed EventBridge message")

// Event sources and detail types rekey reads.
const (
	SourceSecretsManager   = "aws.secretsmanager"
	SourceGuardDuty        = "aws.guardduty"
	DetailTypeAPICall      = "AWS API Call via CloudTrail"
	DetailTypeServiceEvent = "AWS Service Event via CloudTrail"
	DetailTypeFinding      = "GuardDuty Finding"
	// DetailTypeSecretLabelUpdated is Secrets Manager's one native event:
	// a staging label (AWSCURRENT among them) moved to another version.
	DetailTypeSecretLabelUpdated = "Secret Label Updated"
	SourceSecurityHub            = "aws.securityhub"
	// DetailTypeFindingsImported is Security Hub CSPM's ASFF finding;
	// DetailTypeFindingsImportedV2 Security Hub's OCSF one. Each event
	// carries one finding.
	DetailTypeFindingsImported   = "Security Hub Findings - Imported"
	DetailTypeFindingsImportedV2 = "Findings Imported V2"
)

// Secrets Manager event names rekey understands: the service's own
// rotation events and the API calls that change a secret's versions.
const (
	EventRotationStarted          = "RotationStarted"
	EventRotationSucceeded        = "RotationSucceeded"
	EventRotationFailed           = "RotationFailed"
	EventRotationAbandoned        = "RotationAbandoned"
	EventPutSecretValue           = "PutSecretValue"
	EventUpdateSecretVersionStage = "UpdateSecretVersionStage"
	EventRotateSecret             = "RotateSecret"
	EventDeleteSecret             = "DeleteSecret"
	EventUpdateSecret             = "UpdateSecret"
	// EventSecretLabelUpdated is the event name rekey gives the native
	// "Secret Label Updated" event.
	EventSecretLabelUpdated = "SecretLabelUpdated"
	// EventGetSecretValue is read only for canary secrets: any read of
	// one by a principal not in canary_readers is a sign of a leak.
	EventGetSecretValue = "GetSecretValue"
)

// StageCurrent is the staging label of a secret's live version.
const StageCurrent = "AWSCURRENT"

var understood = []string{
	EventRotationStarted, EventRotationSucceeded, EventRotationFailed, EventRotationAbandoned,
	EventPutSecretValue, EventUpdateSecretVersionStage, EventRotateSecret, EventDeleteSecret, EventUpdateSecret,
	EventSecretLabelUpdated,
}

// Kind is the family of a parsed message.
type Kind int

// Message kinds.
const (
	// KindOther is a well-formed event rekey does not act on.
	KindOther Kind = iota
	// KindSecretsManager is a Secrets Manager event delivered through
	// CloudTrail (Message.Secret is set).
	KindSecretsManager
	// KindGuardDuty is a GuardDuty finding (Message.Finding is set).
	KindGuardDuty
	// KindSecurityHub is a Security Hub finding, ASFF or OCSF
	// (Message.Finding is set).
	KindSecurityHub
)

func (k Kind) String() string {
	switch k {
	case KindSecretsManager:
		return "secretsmanager"
	case KindGuardDuty:
		return "guardduty"
	case KindSecurityHub:
		return "securityhub"
	default:
		return "other"
	}
}

// Message is an EventBridge event read from the queue: the envelope's
// fields and, for the events rekey acts on, what it needs of the detail.
type Message struct {
	Version    string
	ID         string
	DetailType string
	Source     string
	Account    string
	Region     string
	// Time is the envelope's time; zero when it had none.
	Time      time.Time
	Resources []string
	Kind      Kind
	Secret    *SecretEvent
	Finding   *Finding
}

// SecretEvent is what rekey reads of a Secrets Manager CloudTrail event.
// It never holds a value: CloudTrail does not log them.
type SecretEvent struct {
	// EventName is the API call or service event (RotationSucceeded...).
	EventName string
	// EventType is "AwsApiCall" or "AwsServiceEvent".
	EventType string
	// EventTime is CloudTrail's eventTime; zero when absent.
	EventTime time.Time
	// SecretID is the secret as the event names it: an ARN or a name
	// (additionalEventData.SecretId for service events,
	// requestParameters.secretId for API calls).
	SecretID string
	// ARN is the secret's ARN from responseElements, when the call
	// returned one.
	ARN string
	// VersionID is the version the event is about, when it names one.
	VersionID string
	// VersionStages are PutSecretValue's staging labels; nil when the
	// call named none (Secrets Manager then moves AWSCURRENT).
	VersionStages []string
	// VersionStage, MoveToVersionID and RemoveFromVersionID are
	// UpdateSecretVersionStage's parameters.
	VersionStage        string
	MoveToVersionID     string
	RemoveFromVersionID string
	// ErrorCode is set when an API call failed; ErrorMessage then, or for
	// RotationFailed, says why.
	ErrorCode    string
	ErrorMessage string
	// AWSRegion and RecipientAccount are CloudTrail's awsRegion and
	// recipientAccountId, when present.
	AWSRegion        string
	RecipientAccount string
	// Principal is userIdentity.arn: who made the call, when CloudTrail
	// says.
	Principal string
}

// Understood reports whether rekey acts on this event name.
func (s *SecretEvent) Understood() bool { return slices.Contains(understood, s.EventName) }

// Change says what the event means for the secret: the ExternalChange
// outcome (schemas.ExternalSucceeded, ExternalFailed or ExternalInfo) and
// whether the live version (AWSCURRENT) changed, which calls for a sync.
func (s *SecretEvent) Change() (outcome string, liveChanged bool) {
	switch s.EventName {
	case EventRotationSucceeded:
		return schemas.ExternalSucceeded, true
	case EventRotationFailed, EventRotationAbandoned:
		return schemas.ExternalFailed, false
	}
	if s.ErrorCode != "" {
		return schemas.ExternalInfo, false // the call failed: nothing changed
	}
	switch s.EventName {
	case EventPutSecretValue:
		if s.VersionStages == nil || slices.Contains(s.VersionStages, StageCurrent) {
			return schemas.ExternalSucceeded, true
		}
	case EventUpdateSecretVersionStage:
		if s.VersionStage == StageCurrent && s.MoveToVersionID != "" {
			return schemas.ExternalSucceeded, true
		}
	case EventSecretLabelUpdated:
		if s.VersionStage == StageCurrent && s.VersionID != "" {
			return schemas.ExternalSucceeded, true
		}
	case EventUpdateSecret:
		if s.VersionID != "" { // a new value was given: it is AWSCURRENT now
			return schemas.ExternalSucceeded, true
		}
	case EventDeleteSecret:
		return schemas.ExternalInfo, true
	}
	return schemas.ExternalInfo, false
}

// Finding is what rekey reads of a GuardDuty or Security Hub finding.
type Finding struct {
	// Product is "GuardDuty" or "Security Hub".
	Product string
	ID      string
	// Type is the finding's type (GuardDuty's, or the first of Types).
	Type string
	// Types are every type the finding has (Security Hub's ASFF Types,
	// OCSF finding_info.types; GuardDuty's one type).
	Types []string
	// ResourceTypes are the types of the resources the finding names
	// (GuardDuty "AccessKey", ASFF "AwsIamAccessKey", OCSF
	// "AWS::IAM::AccessKey").
	ResourceTypes []string
	// Inactive is set for a Security Hub finding that is archived,
	// resolved or suppressed: nothing is done about it.
	Inactive bool
	Title    string
	// Severity is from 0 to 10 (Security Hub's labels and OCSF
	// severity ids are mapped onto GuardDuty's scale).
	Severity float64
	// UpdatedAt is when GuardDuty last updated the finding (it sends a
	// still-active finding again, updated, under a new event id).
	UpdatedAt time.Time
	// AccessKeyID and PrincipalID are from resource.accessKeyDetails.
	AccessKeyID string
	PrincipalID string
	// Tags of every resource the finding names.
	Tags []Tag
}

// Tag is an AWS resource tag.
type Tag struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// envelope is the EventBridge event as delivered to SQS.
type envelope struct {
	Version    string          `json:"version"`
	ID         string          `json:"id"`
	DetailType string          `json:"detail-type"`
	Source     string          `json:"source"`
	Account    string          `json:"account"`
	Time       string          `json:"time"`
	Region     string          `json:"region"`
	Resources  []string        `json:"resources"`
	Detail     json.RawMessage `json:"detail"`
}

// cloudTrailDetail is the detail of "AWS API Call via CloudTrail" and
// "AWS Service Event via CloudTrail" events of Secrets Manager. Field
// names match case-insensitively (encoding/json), which covers the "arn"
// and "aRN" spellings of older events.
type cloudTrailDetail struct {
	EventSource        string `json:"eventSource"`
	EventName          string `json:"eventName"`
	EventType          string `json:"eventType"`
	EventTime          string `json:"eventTime"`
	ErrorCode          string `json:"errorCode"`
	ErrorMessage       string `json:"errorMessage"`
	AWSRegion          string `json:"awsRegion"`
	RecipientAccountID string `json:"recipientAccountId"`
	UserIdentity       *struct {
		ARN string `json:"arn"`
	} `json:"userIdentity"`
	AdditionalEventData *struct {
		SecretID  string `json:"SecretId"`
		VersionID string `json:"VersionId"`
	} `json:"additionalEventData"`
	ServiceEventDetails *struct {
		SecretID  string `json:"secretId"`
		VersionID string `json:"versionId"`
	} `json:"serviceEventDetails"`
	RequestParameters *struct {
		SecretID            string   `json:"secretId"`
		ClientRequestToken  string   `json:"clientRequestToken"`
		VersionStages       []string `json:"versionStages"`
		VersionStage        string   `json:"versionStage"`
		MoveToVersionID     string   `json:"moveToVersionId"`
		RemoveFromVersionID string   `json:"removeFromVersionId"`
		VersionID           string   `json:"versionId"`
	} `json:"requestParameters"`
	ResponseElements *struct {
		ARN           string   `json:"arn"`
		VersionID     string   `json:"versionId"`
		VersionStages []string `json:"versionStages"`
	} `json:"responseElements"`
}

// findingDetail is the detail of a "GuardDuty Finding" event.
type findingDetail struct {
	ID        string    `json:"id"`
	Type      string    `json:"type"`
	Title     string    `json:"title"`
	Severity  *severity `json:"severity"`
	UpdatedAt string    `json:"updatedAt"`
	Resource  struct {
		ResourceType     string `json:"resourceType"`
		AccessKeyDetails struct {
			AccessKeyID string `json:"accessKeyId"`
			PrincipalID string `json:"principalId"`
		} `json:"accessKeyDetails"`
		InstanceDetails      tagged   `json:"instanceDetails"`
		EKSClusterDetails    tagged   `json:"eksClusterDetails"`
		LambdaDetails        tagged   `json:"lambdaDetails"`
		RDSDBInstanceDetails tagged   `json:"rdsDbInstanceDetails"`
		S3BucketDetails      []tagged `json:"s3BucketDetails"`
		ECSClusterDetails    struct {
			Tags        []Tag  `json:"tags"`
			TaskDetails tagged `json:"taskDetails"`
		} `json:"ecsClusterDetails"`
	} `json:"resource"`
}

type tagged struct {
	Tags []Tag `json:"tags"`
}

// severity is GuardDuty's severity: a JSON number, or a string holding one
// (a decimal number or a severity name), finite and from 0 to 10.
// ParseFloat alone would also take "NaN", "Inf" and hex floats, and NaN
// compares false with every min_severity.
type severity float64

// decimalRE is a plain decimal number, as JSON writes one.
var decimalRE = regexp.MustCompile(`^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$`)

func (s *severity) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var str string
		if err := json.Unmarshal(b, &str); err != nil {
			return err
		}
		b = []byte(strings.TrimSpace(str))
	}
	if string(b) == "null" {
		return errors.New("detail.severity is null")
	}
	v, named := severityNames[strings.ToLower(string(b))]
	if !named {
		if !decimalRE.Match(b) {
			return fmt.Errorf("detail.severity %.20q is not a decimal number", b)
		}
		var err error
		if v, err = strconv.ParseFloat(string(b), 64); err != nil {
			return fmt.Errorf("detail.severity %.20q is not a number", b)
		}
	}
	if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 || v > 10 {
		return fmt.Errorf("detail.severity %.20q is not from 0 to 10", b)
	}
	*s = severity(v)
	return nil
}

// Bounds on what a message may hold.
const (
	maxIDLen       = 256
	maxSecretIDLen = 2048
)

// ParseMessage parses the body of an SQS message fed by an EventBridge
// rule. A body that is not an EventBridge event (not a JSON object, no id,
// source, detail-type or detail object, a bad time), or a Secrets Manager
// or GuardDuty event without what rekey needs (the event name, the secret
// of an event rekey acts on), is an error wrapping ErrMalformed. A
// well-formed event of another kind is returned with Kind KindOther.
func ParseMessage(body []byte) (Message, error) {
	var env envelope
	if err := json.Unmarshal(body, &env); err != nil {
		return Message{}, fmt.Errorf("%w: not an EventBridge event: %v", ErrMalformed, err)
	}
	m := Message{
		Version: env.Version, ID: env.ID, DetailType: env.DetailType, Source: env.Source,
		Account: env.Account, Region: env.Region, Resources: env.Resources,
	}
	switch {
	case m.ID == "":
		return Message{}, fmt.Errorf("%w: no id", ErrMalformed)
	case len(m.ID) > maxIDLen:
		return Message{}, fmt.Errorf("%w: id is %d bytes long (at most %d)", ErrMalformed, len(m.ID), maxIDLen)
	case m.Source == "":
		return Message{}, fmt.Errorf("%w: no source", ErrMalformed)
	case m.DetailType == "":
		return Message{}, fmt.Errorf("%w: no detail-type", ErrMalformed)
	case !isObject(env.Detail):
		return Message{}, fmt.Errorf("%w: detail is not a JSON object", ErrMalformed)
	}
	if env.Time != "" {
		t, err := time.Parse(time.RFC3339, env.Time)
		if err != nil {
			return Message{}, fmt.Errorf("%w: time is not RFC 3339", ErrMalformed)
		}
		m.Time = t.UTC()
	}
	cloudTrail := m.Source == SourceSecretsManager && (m.DetailType == DetailTypeAPICall || m.DetailType == DetailTypeServiceEvent)
	labelUpdated := m.Source == SourceSecretsManager && m.DetailType == DetailTypeSecretLabelUpdated
	securityHub := m.Source == SourceSecurityHub && (m.DetailType == DetailTypeFindingsImported || m.DetailType == DetailTypeFindingsImportedV2)
	acts := cloudTrail || labelUpdated || securityHub || m.Source == SourceGuardDuty && m.DetailType == DetailTypeFinding
	if acts {
		// Who and where: the identities rekey checks must be well formed.
		switch {
		case !isAccountID(m.Account):
			return Message{}, fmt.Errorf("%w: account %.20q is not a 12-digit AWS account id", ErrMalformed, m.Account)
		case !regionRE.MatchString(m.Region):
			return Message{}, fmt.Errorf("%w: region %.32q is not an AWS region", ErrMalformed, m.Region)
		}
	}
	switch {
	case labelUpdated:
		s, err := parseLabelUpdated(env.Detail, m.Resources)
		if err != nil {
			return Message{}, err
		}
		m.Kind, m.Secret = KindSecretsManager, s
	case securityHub:
		f, err := parseSecurityHub(env.Detail, m.DetailType == DetailTypeFindingsImportedV2)
		if err != nil {
			return Message{}, err
		}
		m.Kind, m.Finding = KindSecurityHub, f
	case cloudTrail:
		s, err := parseSecretEvent(env.Detail)
		if err != nil {
			return Message{}, err
		}
		if s != nil {
			m.Kind, m.Secret = KindSecretsManager, s
		}
	case m.Source == SourceGuardDuty && m.DetailType == DetailTypeFinding:
		f, err := parseFinding(env.Detail)
		if err != nil {
			return Message{}, err
		}
		m.Kind, m.Finding = KindGuardDuty, f
	}
	return m, nil
}

// parseSecretEvent reads a Secrets Manager CloudTrail detail; nil for an
// event of another service under the same source.
func parseSecretEvent(raw json.RawMessage) (*SecretEvent, error) {
	var d cloudTrailDetail
	if err := json.Unmarshal(raw, &d); err != nil {
		return nil, fmt.Errorf("%w: CloudTrail detail: %v", ErrMalformed, err)
	}
	if d.EventSource != "" && d.EventSource != "secretsmanager.amazonaws.com" {
		return nil, nil
	}
	if d.EventName == "" {
		return nil, fmt.Errorf("%w: CloudTrail detail has no eventName", ErrMalformed)
	}
	s := &SecretEvent{
		EventName: d.EventName, EventType: d.EventType, ErrorCode: d.ErrorCode, ErrorMessage: d.ErrorMessage,
		AWSRegion: d.AWSRegion, RecipientAccount: d.RecipientAccountID,
	}
	if s.AWSRegion != "" && !regionRE.MatchString(s.AWSRegion) {
		return nil, fmt.Errorf("%w: detail.awsRegion %.32q is not an AWS region", ErrMalformed, s.AWSRegion)
	}
	if s.RecipientAccount != "" && !isAccountID(s.RecipientAccount) {
		return nil, fmt.Errorf("%w: detail.recipientAccountId %.20q is not a 12-digit AWS account id", ErrMalformed, s.RecipientAccount)
	}
	if d.EventTime != "" {
		t, err := time.Parse(time.RFC3339, d.EventTime)
		if err != nil {
			return nil, fmt.Errorf("%w: detail.eventTime is not RFC 3339", ErrMalformed)
		}
		s.EventTime = t.UTC()
	}
	var rotated string // the version a rotation event names, if any
	if a := d.AdditionalEventData; a != nil {
		s.SecretID, rotated = a.SecretID, a.VersionID
	}
	if e := d.ServiceEventDetails; e != nil {
		s.SecretID, rotated = cmp.Or(s.SecretID, e.SecretID), cmp.Or(rotated, e.VersionID)
	}
	if u := d.UserIdentity; u != nil {
		if len(u.ARN) > maxSecretIDLen {
			return nil, fmt.Errorf("%w: userIdentity.arn over %d bytes", ErrMalformed, maxSecretIDLen)
		}
		s.Principal = u.ARN
	}
	var token, created string // the call's client token; the version it made
	var read string           // the version GetSecretValue asked for
	if p := d.RequestParameters; p != nil {
		read = p.VersionID
		if s.SecretID == "" {
			s.SecretID = p.SecretID
		}
		s.VersionStages = p.VersionStages
		s.VersionStage, s.MoveToVersionID, s.RemoveFromVersionID = p.VersionStage, p.MoveToVersionID, p.RemoveFromVersionID
		token = p.ClientRequestToken
	}
	if r := d.ResponseElements; r != nil {
		s.ARN, created = r.ARN, r.VersionID
		if s.VersionStages == nil {
			s.VersionStages = r.VersionStages
		}
	}
	switch s.EventName {
	case EventPutSecretValue, EventRotateSecret:
		// The client token is the id of the version the call makes.
		s.VersionID = cmp.Or(created, token)
	case EventUpdateSecret:
		// A version only when a value was given; SDKs send a token anyway.
		s.VersionID = created
	case EventUpdateSecretVersionStage:
		s.VersionID = s.MoveToVersionID
	case EventRotationStarted, EventRotationSucceeded, EventRotationFailed, EventRotationAbandoned:
		s.VersionID = rotated
	case EventGetSecretValue:
		s.VersionID = read
	}
	if len(s.VersionID) > maxIDLen {
		return nil, fmt.Errorf("%w: version id over %d bytes", ErrMalformed, maxIDLen)
	}
	if s.SecretID == "" {
		s.SecretID = s.ARN
	}
	if s.Understood() && s.SecretID == "" {
		return nil, fmt.Errorf("%w: %s event names no secret", ErrMalformed, s.EventName)
	}
	if len(s.SecretID) > maxSecretIDLen || len(s.ARN) > maxSecretIDLen {
		return nil, fmt.Errorf("%w: secret id over %d bytes", ErrMalformed, maxSecretIDLen)
	}
	return s, nil
}

// parseFinding reads a GuardDuty finding.
func parseFinding(raw json.RawMessage) (*Finding, error) {
	var d findingDetail
	if err := json.Unmarshal(raw, &d); err != nil {
		return nil, fmt.Errorf("%w: GuardDuty finding: %v", ErrMalformed, err)
	}
	switch {
	case d.ID == "":
		return nil, fmt.Errorf("%w: GuardDuty finding: detail.id is required", ErrMalformed)
	case len(d.ID) > maxIDLen:
		return nil, fmt.Errorf("%w: GuardDuty finding: detail.id over %d bytes", ErrMalformed, maxIDLen)
	case d.Severity == nil:
		return nil, fmt.Errorf("%w: GuardDuty finding: detail.severity is required", ErrMalformed)
	}
	var updated time.Time
	if d.UpdatedAt != "" {
		t, err := time.Parse(time.RFC3339, d.UpdatedAt)
		if err != nil {
			return nil, fmt.Errorf("%w: GuardDuty finding: detail.updatedAt is not RFC 3339", ErrMalformed)
		}
		updated = t.UTC()
	}
	r := &d.Resource
	f := &Finding{
		Product: "GuardDuty", ID: d.ID, Type: d.Type, Title: d.Title, Severity: float64(*d.Severity), UpdatedAt: updated,
		AccessKeyID: r.AccessKeyDetails.AccessKeyID, PrincipalID: r.AccessKeyDetails.PrincipalID,
	}
	if d.Type != "" {
		f.Types = []string{d.Type}
	}
	if r.ResourceType != "" {
		f.ResourceTypes = []string{r.ResourceType}
	}
	for _, tags := range [][]Tag{
		r.InstanceDetails.Tags, r.EKSClusterDetails.Tags, r.ECSClusterDetails.Tags, r.ECSClusterDetails.TaskDetails.Tags,
		r.LambdaDetails.Tags, r.RDSDBInstanceDetails.Tags,
	} {
		f.Tags = append(f.Tags, tags...)
	}
	for _, b := range r.S3BucketDetails {
		f.Tags = append(f.Tags, b.Tags...)
	}
	return f, nil
}

// regionRE is an AWS region name (us-east-1, us-gov-west-1, cn-north-1).
var regionRE = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$`)

// isObject reports whether raw is a JSON object (after white space).
func isObject(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) >= 2 && raw[0] == '{'
}
