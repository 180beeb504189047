package siem

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// GenericMapping says where a generic JSON payload keeps each part of an
// alert. Paths are dotted ("target.tenant", "detections.0.id"): a segment
// is an object key, or an index into an array when it is a number. Paths
// other than Alerts are relative to one alert.
//
// A field (a Path, or a label's value) may name several alternatives,
// as a YAML list or separated by " | ": the first that holds a non-empty
// value wins. An alternative "=text" is the constant text, e.g.
// severity: [priority, "=critical"] or tenant: "target.tenant | =acme".
type GenericMapping struct {
	// Alerts is the path to the array of alerts. Empty: the body is one
	// alert, or a top-level array of alerts.
	Alerts string `yaml:"alerts"`
	// ID is the path to the alert's id or fingerprint. Required unless
	// DedupKey is set; an alert whose ID is empty takes the DedupKey.
	ID Path `yaml:"id"`
	// DedupKey lists paths whose values together identify one alert
	// when the sender gives no usable id (Sumo Logic, Panther policy
	// alerts with alertId null): the alert's ID is then a digest of
	// those values. It requires FiredAt, which is part of the dedup key
	// too, so that two firings of one condition are never merged and a
	// repeat of one firing is.
	DedupKey []string `yaml:"dedup_key"`
	// Name is the path to a name or title, shown in the reply.
	Name Path `yaml:"name"`
	// Status is the path to the alert's status. Absent or empty: firing.
	Status Path `yaml:"status"`
	// Resolved lists the status values (case-insensitive) that mean
	// resolved; default resolved, ok, recovered, closed.
	Resolved []string `yaml:"resolved"`
	// Firing, when set, lists the status values (case-insensitive) that
	// mean firing; any other status that is not resolved is "other" and
	// does nothing (an Opsgenie Acknowledge or AddNote).
	Firing []string `yaml:"firing"`
	// Severity is the path to the alert's severity.
	Severity Path `yaml:"severity"`
	// FiredAt is the path to when the alert started firing (RFC 3339 or
	// Unix seconds or milliseconds): part of the dedup key, and an alert
	// older than the dedup window is refused.
	FiredAt Path `yaml:"fired_at"`
	// Labels maps a label name to the path of its value (a string,
	// number or boolean), e.g. tenant: target.tenant; alternatives are
	// separated by " | ".
	Labels map[string]string `yaml:"labels"`
	// LabelsFrom is the path to an object whose scalar members all become
	// labels (Labels win over it), or to an array of "key:value" strings
	// (Opsgenie and Datadog tags), each a label. Unlike the other fields,
	// every alternative is read (later ones win): labels_from:
	// [alert.tags, alert.details].
	LabelsFrom Path `yaml:"labels_from"`
}

// Path is a field's path, or several alternatives (see GenericMapping).
// In YAML it is a string ("a | b") or a list of strings.
type Path string

// altSep separates the alternatives of a Path.
const altSep = "|"

// UnmarshalYAML reads a string or a list of strings.
func (p *Path) UnmarshalYAML(unmarshal func(any) error) error {
	var one string
	if err := unmarshal(&one); err == nil {
		*p = Path(one)
		return nil
	}
	var list []string
	if err := unmarshal(&list); err != nil {
		return fmt.Errorf("must be a path or a list of paths")
	}
	*p = Path(strings.Join(list, " "+altSep+" "))
	return nil
}

// alternatives splits p into its trimmed alternatives.
func (p Path) alternatives() []string {
	if p == "" {
		return nil
	}
	var out []string
	for a := range strings.SplitSeq(string(p), altSep) {
		out = append(out, strings.TrimSpace(a))
	}
	return out
}

var defaultResolved = []string{"resolved", "ok", "recovered", "closed"}

const maxPathSegments = 16

// maxAlternatives bounds the alternatives of a field and the paths of a
// dedup key.
const maxAlternatives = 8

// validate returns FieldErrors relative to the mapping.
func (m GenericMapping) validate() []fieldProblem {
	var out []fieldProblem
	check := func(field, path string, required bool) {
		if path == "" {
			if required {
				out = append(out, fieldProblem{field, "must be set"})
			}
			return
		}
		if err := checkPath(path); err != nil {
			out = append(out, fieldProblem{field, err.Error()})
		}
	}
	checkAlts := func(field string, p Path, required bool) {
		alts := p.alternatives()
		if len(alts) == 0 && required {
			out = append(out, fieldProblem{field, "must be set"})
		}
		if len(alts) > maxAlternatives {
			out = append(out, fieldProblem{field, fmt.Sprintf("has more than %d alternatives", maxAlternatives)})
			return
		}
		for i, a := range alts {
			if c, ok := strings.CutPrefix(a, "="); ok {
				if i != len(alts)-1 {
					out = append(out, fieldProblem{field, fmt.Sprintf("constant %q must be the last alternative", shortText(c, 40))})
				}
				continue
			}
			check(field, a, true)
		}
	}
	check("alerts", m.Alerts, false)
	checkAlts("id", m.ID, len(m.DedupKey) == 0)
	if len(m.DedupKey) > maxAlternatives {
		out = append(out, fieldProblem{"dedup_key", fmt.Sprintf("has more than %d paths", maxAlternatives)})
	}
	for i, p := range m.DedupKey {
		check(fmt.Sprintf("dedup_key[%d]", i), p, true)
	}
	if len(m.DedupKey) > 0 && m.FiredAt == "" {
		out = append(out, fieldProblem{"fired_at", "must be set with dedup_key: the firing time tells two firings of one alert apart"})
	}
	checkAlts("name", m.Name, false)
	checkAlts("status", m.Status, false)
	checkAlts("severity", m.Severity, false)
	checkAlts("fired_at", m.FiredAt, false)
	for _, a := range m.LabelsFrom.alternatives() {
		check("labels_from", a, true)
	}
	for _, k := range sortedKeys(m.Labels) {
		if k == "" {
			out = append(out, fieldProblem{"labels", "a label name is empty"})
			continue
		}
		checkAlts("labels."+k, Path(m.Labels[k]), true)
	}
	for i, v := range m.Firing {
		if strings.TrimSpace(v) == "" {
			out = append(out, fieldProblem{fmt.Sprintf("firing[%d]", i), "is empty"})
		}
	}
	for i, v := range m.Resolved {
		if strings.TrimSpace(v) == "" {
			out = append(out, fieldProblem{fmt.Sprintf("resolved[%d]", i), "is empty"})
		}
	}
	return out
}

func checkPath(p string) error {
	segs := strings.Split(p, ".")
	if len(segs) > maxPathSegments {
		return fmt.Errorf("%q has more than %d segments", p, maxPathSegments)
	}
	for _, s := range segs {
		if s == "" {
			return fmt.Errorf("%q has an empty segment", p)
		}
	}
	return nil
}

// lookup follows a dotted path through decoded JSON.
func lookup(v any, path string) (any, bool) {
	if path == "" {
		return v, true
	}
	for seg := range strings.SplitSeq(path, ".") {
		switch n := v.(type) {
		case map[string]any:
			next, ok := n[seg]
			if !ok {
				return nil, false
			}
			v = next
		case []any:
			i, err := strconv.Atoi(seg)
			if err != nil || i < 0 || i >= len(n) {
				return nil, false
			}
			v = n[i]
		default:
			return nil, false
		}
	}
	return v, true
}

// scalarAt returns the string, number or boolean at path as text.
func scalarAt(v any, path string) (string, bool) {
	if path == "" {
		return "", false
	}
	x, ok := lookup(v, path)
	if !ok {
		return "", false
	}
	return scalarValue(x)
}

// scalarValue returns a decoded JSON string, number or boolean as text.
func scalarValue(x any) (string, bool) {
	switch s := x.(type) {
	case string:
		return s, true
	case json.Number:
		return s.String(), true
	case bool:
		return strconv.FormatBool(s), true
	}
	return "", false
}

// value returns the first non-empty alternative of p in item: the
// scalar at a path, or a constant. field names p in errors.
func (p Path) value(item any, field string) (string, error) {
	for _, a := range p.alternatives() {
		if c, ok := strings.CutPrefix(a, "="); ok {
			return c, nil
		}
		v, ok := scalarAt(item, a)
		if !ok || strings.TrimSpace(v) == "" {
			continue
		}
		if kind := placeholder(v); kind != "" {
			return "", &TemplateError{Field: field, Kind: kind}
		}
		return v, nil
	}
	return "", nil
}

// parse reads a generic JSON payload with the mapping m. A mapped field
// holding a template placeholder is a *TemplateError.
func (m GenericMapping) parse(body []byte) ([]Alert, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var root any
	if err := dec.Decode(&root); err != nil {
		return nil, fmt.Errorf("generic payload: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("generic payload: data after the JSON value")
	}
	var items []any
	if m.Alerts != "" {
		v, ok := lookup(root, m.Alerts)
		if !ok {
			return nil, fmt.Errorf("generic payload: no %s", m.Alerts)
		}
		list, ok := v.([]any)
		if !ok {
			return nil, fmt.Errorf("generic payload: %s is not an array", m.Alerts)
		}
		items = list
	} else if list, ok := root.([]any); ok {
		items = list
	} else {
		items = []any{root}
	}
	out := make([]Alert, 0, len(items))
	for i, item := range items {
		a, err := m.alert(i, item)
		if err != nil {
			var te *TemplateError
			if errors.As(err, &te) {
				te.Alert = i
				return nil, te
			}
			return nil, fmt.Errorf("generic payload: alert %d %w", i, err)
		}
		out = append(out, a)
	}
	return finish(FormatGeneric, out)
}

// alert reads one alert of a generic payload.
func (m GenericMapping) alert(i int, item any) (Alert, error) {
	if _, ok := item.(map[string]any); !ok {
		return Alert{}, errors.New("is not an object")
	}
	id, err := m.ID.value(item, "id")
	if err != nil {
		return Alert{}, err
	}
	a := Alert{ID: id, Status: StatusFiring, Labels: map[string]string{}}
	if a.Name, err = m.Name.value(item, "name"); err != nil {
		return Alert{}, err
	}
	if a.RawSeverity, err = m.Severity.value(item, "severity"); err != nil {
		return Alert{}, err
	}
	if m.FiredAt != "" {
		v, err := m.FiredAt.value(item, "fired_at")
		if err != nil {
			return Alert{}, err
		}
		if a.FiredAt, err = parseGenericTime(v); err != nil {
			return Alert{}, fmt.Errorf("fired_at: %w", err)
		}
	}
	st, err := m.Status.value(item, "status")
	if err != nil {
		return Alert{}, err
	}
	a.Status = m.status(st)
	for _, p := range m.LabelsFrom.alternatives() {
		if err := labelsFrom(item, p, a.Labels); err != nil {
			return Alert{}, err
		}
	}
	for _, name := range sortedKeys(m.Labels) {
		v, err := Path(m.Labels[name]).value(item, "labels."+name)
		if err != nil {
			return Alert{}, err
		}
		if v != "" {
			a.Labels[name] = v
		}
	}
	if a.ID == "" && len(m.DedupKey) > 0 {
		if a.FiredAt.IsZero() {
			return Alert{}, fmt.Errorf("has no id and no %s (the dedup key needs the firing time)", m.FiredAt)
		}
		if a.ID, err = m.composedID(item); err != nil {
			return Alert{}, err
		}
	}
	if a.ID == "" {
		return Alert{}, fmt.Errorf("has no %s", m.ID)
	}
	return a, nil
}

// status maps a status value to firing, resolved or other.
func (m GenericMapping) status(st string) Status {
	st = strings.TrimSpace(st)
	if st == "" {
		return StatusFiring
	}
	is := func(list []string) bool {
		return slices.ContainsFunc(list, func(r string) bool { return strings.EqualFold(strings.TrimSpace(r), st) })
	}
	resolved := m.Resolved
	if len(resolved) == 0 {
		resolved = defaultResolved
	}
	switch {
	case is(resolved):
		return StatusResolved
	case len(m.Firing) == 0 || is(m.Firing):
		return StatusFiring
	}
	return StatusOther
}

// composedID is the digest of the dedup key's values: the alert's id
// when the sender gives none. A digest, because the values may be
// anything (a user name, an address) and the id goes into audit records.
func (m GenericMapping) composedID(item any) (string, error) {
	h := sha256.New()
	n := 0
	for i, p := range m.DedupKey {
		v, err := Path(p).value(item, fmt.Sprintf("dedup_key[%d]", i))
		if err != nil {
			return "", err
		}
		if v != "" {
			n++
		}
		h.Write([]byte(v))
		h.Write([]byte{0})
	}
	if n == 0 {
		return "", fmt.Errorf("has no id and none of the dedup_key paths %s holds a value", strings.Join(m.DedupKey, ", "))
	}
	return "key:" + hex.EncodeToString(h.Sum(nil)[:16]), nil
}

// labelsFrom adds the scalar members of the object at path to labels, or
// the "key:value" strings of the array at path.
func labelsFrom(item any, path string, labels map[string]string) error {
	obj, ok := lookup(item, path)
	if !ok {
		return nil
	}
	switch v := obj.(type) {
	case map[string]any:
		for _, k := range sortedKeys(v) {
			s, ok := scalarValue(v[k])
			if !ok {
				continue
			}
			if kind := placeholder(s); kind != "" {
				return &TemplateError{Field: "labels." + shortText(k, 64), Kind: kind}
			}
			labels[k] = s
		}
	case []any:
		for _, x := range v {
			s, ok := x.(string)
			if !ok {
				continue
			}
			k, val, ok := strings.Cut(s, ":")
			if !ok || k == "" {
				continue
			}
			if kind := placeholder(val); kind != "" {
				return &TemplateError{Field: "labels." + shortText(k, 64), Kind: kind}
			}
			labels[strings.TrimSpace(k)] = strings.TrimSpace(val)
		}
	}
	return nil
}

// TemplateError is a mapped field of an alert that still holds a
// template placeholder: the sender did not render its template (a Kibana
// body with {{alert.id}}, a Sumo Logic one with {{Name}}). It is refused
// with 422 naming the field; the value is not repeated.
type TemplateError struct {
	Alert int    // the alert's index in the delivery
	Field string // the mapped field: id, name, labels.tenant...
	Kind  string // the placeholder's kind: {{...}}, $VAR, ${...}, $...$ or <...>
}

func (e *TemplateError) Error() string {
	return fmt.Sprintf("alert %d: field %s holds an unrendered template placeholder (%s): fix the sender's payload template",
		e.Alert, e.Field, e.Kind)
}

var (
	mustacheRE  = regexp.MustCompile(`\{\{[^{}]*\}\}`)
	dollarVarRE = regexp.MustCompile(`\$[A-Z][A-Z0-9_]{1,}\b`)
	dollarBrace = regexp.MustCompile(`\$\{[^{}]+\}`)
	splunkTokRE = regexp.MustCompile(`^\$[A-Za-z_][A-Za-z0-9_.]*\$$`)
	angleRE     = regexp.MustCompile(`^<[^<>]+>$`)
)

// placeholder returns the kind of template placeholder v holds, or "".
// {{...}} (Mustache: Kibana, Sumo Logic, Grafana), ${...} and $VAR
// (Datadog, Coralogix) are found anywhere; a Splunk token $result.x$ and
// a <...> placeholder only as the whole value, so that a rendered text
// with a "<" or a price in it is not taken for a template.
func placeholder(v string) string {
	v = strings.TrimSpace(v)
	switch {
	case mustacheRE.MatchString(v):
		return "{{...}}"
	case dollarBrace.MatchString(v):
		return "${...}"
	case splunkTokRE.MatchString(v):
		return "$...$"
	case dollarVarRE.MatchString(v):
		return "$VAR"
	case angleRE.MatchString(v):
		return "<...>"
	}
	return ""
}

// parseGeneric reads a generic JSON payload with mapping m.
func parseGeneric(m GenericMapping, body []byte) ([]Alert, error) { return m.parse(body) }

// genericTimeLayouts are the layouts besides RFC 3339 and Unix times that
// senders render times in (Sumo Logic's "2024-02-06 16:43:48 UTC").
var genericTimeLayouts = []string{"2006-01-02 15:04:05 MST", "2006-01-02 15:04:05Z07:00", "01/02/2006 15:04:05 MST", "2006-01-02T15:04:05.999999999"}

// parseGenericTime is parseFiredAt plus genericTimeLayouts (in UTC when
// the layout has no zone).
func parseGenericTime(v string) (time.Time, error) {
	t, err := parseFiredAt(v)
	if err == nil {
		return t, nil
	}
	for _, l := range genericTimeLayouts {
		if p, perr := time.Parse(l, strings.TrimSpace(v)); perr == nil {
			if p.Year() < 2000 || p.Year() > 2200 {
				break
			}
			return p.UTC(), nil
		}
	}
	return time.Time{}, err
}
