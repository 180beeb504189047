package siem

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Status is what an alert says about its condition.
type Status string

// Alert statuses. Only a firing alert can start a request; a resolved
// alert, and a vendor notification that is neither (a PagerDuty
// acknowledgement, a Datadog "No Data"), do nothing.
const (
	StatusFiring   Status = "firing"
	StatusResolved Status = "resolved"
	StatusOther    Status = "other"
)

// Severity is a vendor severity normalised to one ordered scale.
type Severity int

// The scale, lowest first. SeverityUnknown is below every named level, so
// a rule with a min_severity never matches an alert without a severity
// (set the source's default_severity for those).
const (
	SeverityUnknown Severity = iota
	SeverityInfo
	SeverityWarning
	SeverityError
	SeverityCritical
)

var severityNames = [...]string{"unknown", "info", "warning", "error", "critical"}

// String returns the level's name.
func (s Severity) String() string {
	if s < 0 || int(s) >= len(severityNames) {
		return "unknown"
	}
	return severityNames[s]
}

// MarshalText writes the level's name.
func (s Severity) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads a level's name ("unknown" included).
func (s *Severity) UnmarshalText(b []byte) error {
	if string(b) == "unknown" {
		*s = SeverityUnknown
		return nil
	}
	v, ok := SeverityLevel(string(b))
	if !ok {
		return fmt.Errorf("severity %q is not unknown, info, warning, error or critical", shortText(string(b), 32))
	}
	*s = v
	return nil
}

// SeverityLevel returns the level named exactly "info", "warning",
// "error" or "critical" (the names used in the configuration).
func SeverityLevel(name string) (Severity, bool) {
	for i, n := range severityNames {
		if i > 0 && n == name {
			return Severity(i), true
		}
	}
	return SeverityUnknown, false
}

// vendorSeverities maps the severity words and priorities the supported
// vendors use (Prometheus/Grafana severity labels, Splunk ES urgency,
// Datadog alert types and P1..P5, PagerDuty priorities and urgency) to the
// scale. Keys are lower case.
var vendorSeverities = map[string]Severity{
	"info": SeverityInfo, "informational": SeverityInfo, "information": SeverityInfo,
	"notice": SeverityInfo, "debug": SeverityInfo, "low": SeverityInfo, "ok": SeverityInfo,
	"success": SeverityInfo, "none": SeverityInfo, "p4": SeverityInfo, "p5": SeverityInfo,
	"sev4": SeverityInfo, "sev5": SeverityInfo,

	"warning": SeverityWarning, "warn": SeverityWarning, "medium": SeverityWarning,
	"moderate": SeverityWarning, "minor": SeverityWarning, "p3": SeverityWarning, "sev3": SeverityWarning,

	"error": SeverityError, "err": SeverityError, "high": SeverityError, "major": SeverityError,
	"severe": SeverityError, "p2": SeverityError, "sev2": SeverityError,

	"critical": SeverityCritical, "crit": SeverityCritical, "fatal": SeverityCritical,
	"emergency": SeverityCritical, "emerg": SeverityCritical, "page": SeverityCritical,
	"urgent": SeverityCritical, "disaster": SeverityCritical, "highest": SeverityCritical,
	"p0": SeverityCritical, "p1": SeverityCritical, "sev0": SeverityCritical, "sev1": SeverityCritical,
}

// ParseSeverity normalises a vendor severity ("warning", "High", "P1",
// "critical"...). Words it does not know give SeverityUnknown.
func ParseSeverity(s string) Severity {
	return vendorSeverities[strings.ToLower(strings.TrimSpace(s))]
}

// Alert is one alert of a webhook payload, in the same shape whatever the
// vendor. Labels hold what rules match on: the alert's labels for
// Alertmanager and Grafana, the first result row for Splunk, tags for
// Datadog, the incident's service, priority and teams for PagerDuty, the
// mapped fields for generic payloads (see each parser).
type Alert struct {
	// ID identifies the alert across deliveries: the Alertmanager or
	// Grafana fingerprint, the Splunk search id, the Datadog alert cycle
	// key, the PagerDuty incident id. At most 128 printable ASCII
	// characters; a longer or stranger vendor id is replaced by a digest.
	ID     string
	Status Status
	// Severity is RawSeverity normalised with ParseSeverity; a source may
	// re-normalise it (severity_label, severities, default_severity).
	Severity    Severity
	RawSeverity string
	// Name is the alert's name or title, for the reply only.
	Name   string
	Labels map[string]string
	// FiredAt is when the alert started firing, as the sender says
	// (Alertmanager and Grafana startsAt, PagerDuty created_at, Splunk
	// _time, Datadog date, generic fired_at); zero when the format or
	// the payload has none. It is part of the dedup key, and an alert
	// that fired longer ago than the dedup window is refused as stale.
	FiredAt time.Time
}

const maxIDLen = 128

// cleanID returns id if it is short printable ASCII, else a digest of it,
// so that an id can go into an event, an audit record and a reply as is.
func cleanID(id string) string {
	if len(id) <= maxIDLen && printable(id) {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return "sha256:" + hex.EncodeToString(sum[:16])
}

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// shortText keeps the printable ASCII of s, at most n bytes of it.
func shortText(s string, n int) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < n; i++ {
		if c := s[i]; c >= 0x20 && c <= 0x7e {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// labelsDigest identifies a label set when a vendor sent no fingerprint.
func labelsDigest(labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	h := sha256.New()
	for _, k := range keys {
		h.Write([]byte(k))
		h.Write([]byte{0})
		h.Write([]byte(labels[k]))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// finish checks and normalises what a parser produced.
func finish(format string, alerts []Alert) ([]Alert, error) {
	for i := range alerts {
		a := &alerts[i]
		if a.ID == "" {
			return nil, fmt.Errorf("%s payload: alert %d has no id", format, i)
		}
		a.ID = cleanID(a.ID)
		a.Name = shortText(a.Name, 128)
		if a.Labels == nil {
			a.Labels = map[string]string{}
		}
		a.Severity = ParseSeverity(a.RawSeverity)
	}
	return alerts, nil
}

// scalar returns a JSON string, number or boolean as text; ok is false for
// null, objects, arrays and anything that does not parse.
func scalar(raw json.RawMessage) (string, bool) {
	raw = json.RawMessage(strings.TrimSpace(string(raw)))
	if len(raw) == 0 {
		return "", false
	}
	switch raw[0] {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", false
		}
		return s, true
	case 't', 'f':
		var b bool
		if err := json.Unmarshal(raw, &b); err != nil {
			return "", false
		}
		return fmt.Sprint(b), true
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		var n json.Number
		if err := json.Unmarshal(raw, &n); err != nil {
			return "", false
		}
		return n.String(), true
	}
	return "", false
}

// scalarOrList is scalar, plus an array of scalars joined with commas
// (Splunk multivalue fields, Datadog tag lists).
func scalarOrList(raw json.RawMessage) (string, bool) {
	if s, ok := scalar(raw); ok {
		return s, true
	}
	var list []json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil {
		return "", false
	}
	parts := make([]string, 0, len(list))
	for _, item := range list {
		if s, ok := scalar(item); ok {
			parts = append(parts, s)
		}
	}
	return strings.Join(parts, ","), true
}
