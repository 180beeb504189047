package awsevents

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// labelUpdatedDetail is the detail of Secrets Manager's native "Secret
// Label Updated" event.
type labelUpdatedDetail struct {
	Name         string `json:"name"`
	LabelUpdated string `json:"labelUpdated"`
	VersionID    string `json:"versionId"`
}

// parseLabelUpdated reads a "Secret Label Updated" event as a
// SecretEvent named EventSecretLabelUpdated: the secret is the
// envelope's resource (its ARN) and detail.name, the version the label
// moved to, the label as VersionStage. It is then handled as the
// CloudTrail events are: identified, confirmed by Secrets Manager, and
// for AWSCURRENT a sync and an invalidation.
func parseLabelUpdated(raw json.RawMessage, resources []string) (*SecretEvent, error) {
	var d labelUpdatedDetail
	if err := json.Unmarshal(raw, &d); err != nil {
		return nil, fmt.Errorf("%w: Secret Label Updated detail: %v", ErrMalformed, err)
	}
	s := &SecretEvent{EventName: EventSecretLabelUpdated, EventType: "SecretsManagerEvent", SecretID: d.Name,
		VersionID: d.VersionID, VersionStage: d.LabelUpdated}
	if len(resources) > 1 {
		return nil, fmt.Errorf("%w: Secret Label Updated names %d resources (one secret expected)", ErrMalformed, len(resources))
	}
	if len(resources) == 1 {
		s.ARN = resources[0]
	}
	switch {
	case s.SecretID == "" && s.ARN == "":
		return nil, fmt.Errorf("%w: Secret Label Updated names no secret", ErrMalformed)
	case d.LabelUpdated == "":
		return nil, fmt.Errorf("%w: Secret Label Updated has no detail.labelUpdated", ErrMalformed)
	case len(s.VersionID) > maxIDLen || len(d.LabelUpdated) > maxIDLen:
		return nil, fmt.Errorf("%w: version id or label over %d bytes", ErrMalformed, maxIDLen)
	case len(s.SecretID) > maxSecretIDLen || len(s.ARN) > maxSecretIDLen:
		return nil, fmt.Errorf("%w: secret id over %d bytes", ErrMalformed, maxSecretIDLen)
	}
	if s.SecretID == "" {
		s.SecretID = s.ARN
	}
	return s, nil
}

// asffFinding is what rekey reads of an ASFF finding.
type asffFinding struct {
	ID       string   `json:"Id"`
	Types    []string `json:"Types"`
	Title    string   `json:"Title"`
	Severity *struct {
		Label      string   `json:"Label"`
		Normalized *float64 `json:"Normalized"`
	} `json:"Severity"`
	UpdatedAt   string `json:"UpdatedAt"`
	RecordState string `json:"RecordState"`
	Workflow    *struct {
		Status string `json:"Status"`
	} `json:"Workflow"`
	Resources []struct {
		Type    string            `json:"Type"`
		ID      string            `json:"Id"`
		Tags    map[string]string `json:"Tags"`
		Details struct {
			AwsIamAccessKey *struct {
				PrincipalID string `json:"PrincipalId"`
			} `json:"AwsIamAccessKey"`
		} `json:"Details"`
	} `json:"Resources"`
}

// ocsfFinding is what rekey reads of an OCSF finding.
type ocsfFinding struct {
	FindingInfo struct {
		UID            string   `json:"uid"`
		Title          string   `json:"title"`
		Types          []string `json:"types"`
		ModifiedTimeDT string   `json:"modified_time_dt"`
	} `json:"finding_info"`
	SeverityID *int   `json:"severity_id"`
	Severity   string `json:"severity"`
	TimeDT     string `json:"time_dt"`
	Status     string `json:"status"`
	Actor      struct {
		User struct {
			UID           string `json:"uid"`
			CredentialUID string `json:"credential_uid"`
		} `json:"user"`
	} `json:"actor"`
	Resources []struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
		Tags []struct {
			Name  string `json:"name"`
			Value string `json:"value"`
		} `json:"tags"`
	} `json:"resources"`
}

// securityHubSeverities maps ASFF labels and OCSF severities onto
// GuardDuty's 0-10 scale (the lower bounds of its ranges).
var securityHubSeverities = map[string]float64{
	"informational": 0, "low": 1, "medium": 4, "high": 7, "critical": 9, "fatal": 10,
}

// ocsfSeverityIDs maps OCSF severity_id (1 Informational .. 6 Fatal).
var ocsfSeverityIDs = map[int]float64{1: 0, 2: 1, 3: 4, 4: 7, 5: 9, 6: 10}

// maxFindingItems bounds the types and resources read of a finding.
const maxFindingItems = 64

// parseSecurityHub reads the one finding of a Security Hub event: ASFF
// ("Security Hub Findings - Imported"), or OCSF when ocsf ("Findings
// Imported V2").
func parseSecurityHub(raw json.RawMessage, ocsf bool) (*Finding, error) {
	var d struct {
		Findings []json.RawMessage `json:"findings"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		return nil, fmt.Errorf("%w: Security Hub detail: %v", ErrMalformed, err)
	}
	if len(d.Findings) != 1 {
		return nil, fmt.Errorf("%w: Security Hub event has %d findings (one expected)", ErrMalformed, len(d.Findings))
	}
	var f *Finding
	var err error
	if ocsf {
		f, err = parseOCSF(d.Findings[0])
	} else {
		f, err = parseASFF(d.Findings[0])
	}
	if err != nil {
		return nil, err
	}
	switch {
	case f.ID == "":
		return nil, fmt.Errorf("%w: Security Hub finding has no id", ErrMalformed)
	case len(f.ID) > maxIDLen:
		return nil, fmt.Errorf("%w: Security Hub finding id over %d bytes", ErrMalformed, maxIDLen)
	case len(f.Types) > maxFindingItems || len(f.ResourceTypes) > maxFindingItems || len(f.Tags) > maxFindingItems*8:
		return nil, fmt.Errorf("%w: Security Hub finding has too many types, resources or tags", ErrMalformed)
	}
	if len(f.Types) > 0 {
		f.Type = f.Types[0]
	}
	return f, nil
}

func parseASFF(raw json.RawMessage) (*Finding, error) {
	var a asffFinding
	if err := json.Unmarshal(raw, &a); err != nil {
		return nil, fmt.Errorf("%w: ASFF finding: %v", ErrMalformed, err)
	}
	f := &Finding{Product: "Security Hub", ID: a.ID, Types: a.Types, Title: a.Title}
	switch {
	case a.Severity == nil:
		return nil, fmt.Errorf("%w: ASFF finding: Severity is required", ErrMalformed)
	case a.Severity.Label != "":
		v, ok := securityHubSeverities[strings.ToLower(a.Severity.Label)]
		if !ok {
			return nil, fmt.Errorf("%w: ASFF finding: Severity.Label %.20q is not a severity", ErrMalformed, a.Severity.Label)
		}
		f.Severity = v
	case a.Severity.Normalized != nil && *a.Severity.Normalized >= 0 && *a.Severity.Normalized <= 100:
		f.Severity = *a.Severity.Normalized / 10
	default:
		return nil, fmt.Errorf("%w: ASFF finding: Severity has no Label or Normalized from 0 to 100", ErrMalformed)
	}
	if a.UpdatedAt != "" {
		t, err := time.Parse(time.RFC3339, a.UpdatedAt)
		if err != nil {
			return nil, fmt.Errorf("%w: ASFF finding: UpdatedAt is not RFC 3339", ErrMalformed)
		}
		f.UpdatedAt = t.UTC()
	}
	f.Inactive = strings.EqualFold(a.RecordState, "ARCHIVED") ||
		a.Workflow != nil && (strings.EqualFold(a.Workflow.Status, "RESOLVED") || strings.EqualFold(a.Workflow.Status, "SUPPRESSED"))
	for _, r := range a.Resources {
		f.ResourceTypes = append(f.ResourceTypes, r.Type)
		if r.Type == "AwsIamAccessKey" {
			// Id is "AWS::IAM::AccessKey:<key id>" (or the key id).
			f.AccessKeyID = r.ID[strings.LastIndexByte(r.ID, ':')+1:]
			if k := r.Details.AwsIamAccessKey; k != nil {
				f.PrincipalID = k.PrincipalID
			}
		}
		for _, k := range slices.Sorted(maps.Keys(r.Tags)) {
			f.Tags = append(f.Tags, Tag{Key: k, Value: r.Tags[k]})
		}
	}
	return f, nil
}

func parseOCSF(raw json.RawMessage) (*Finding, error) {
	var o ocsfFinding
	if err := json.Unmarshal(raw, &o); err != nil {
		return nil, fmt.Errorf("%w: OCSF finding: %v", ErrMalformed, err)
	}
	f := &Finding{Product: "Security Hub", ID: o.FindingInfo.UID, Types: o.FindingInfo.Types, Title: o.FindingInfo.Title,
		AccessKeyID: o.Actor.User.CredentialUID, PrincipalID: o.Actor.User.UID}
	if o.SeverityID != nil {
		v, ok := ocsfSeverityIDs[*o.SeverityID]
		if !ok {
			return nil, fmt.Errorf("%w: OCSF finding: severity_id %d is not 1 to 6", ErrMalformed, *o.SeverityID)
		}
		f.Severity = v
	} else if v, ok := securityHubSeverities[strings.ToLower(o.Severity)]; ok {
		f.Severity = v
	} else {
		return nil, fmt.Errorf("%w: OCSF finding: severity_id is required", ErrMalformed)
	}
	if ts := cmp.Or(o.FindingInfo.ModifiedTimeDT, o.TimeDT); ts != "" {
		t, err := time.Parse(time.RFC3339, ts)
		if err != nil {
			return nil, fmt.Errorf("%w: OCSF finding: modified_time_dt is not RFC 3339", ErrMalformed)
		}
		f.UpdatedAt = t.UTC()
	}
	f.Inactive = strings.EqualFold(o.Status, "Resolved") || strings.EqualFold(o.Status, "Suppressed") || strings.EqualFold(o.Status, "Archived")
	for _, r := range o.Resources {
		f.ResourceTypes = append(f.ResourceTypes, r.Type)
		if f.AccessKeyID == "" && r.Type == "AWS::IAM::AccessKey" {
			f.AccessKeyID = r.UID
		}
		for _, t := range r.Tags {
			f.Tags = append(f.Tags, Tag{Key: t.Name, Value: t.Value})
		}
	}
	return f, nil
}
