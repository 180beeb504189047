package siem

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// GenericMapping says where a generic JSON payload keeps each part of an
// alert. Paths are dotted ("target.tenant", "detections.0.id"): a segment
// is an object key, or an index into an array when it is a number. Paths
// other than Alerts are relative to one alert.
type GenericMapping struct {
	// Alerts is the path to the array of alerts. Empty: the body is one
	// alert, or a top-level array of alerts.
	Alerts string `yaml:"alerts"`
	// ID is the path to the alert's id or fingerprint (required).
	ID string `yaml:"id"`
	// Name is the path to a name or title, shown in the reply.
	Name string `yaml:"name"`
	// Status is the path to the alert's status. Absent or empty: firing.
	Status string `yaml:"status"`
	// Resolved lists the status values (case-insensitive) that mean
	// resolved; default resolved, ok, recovered, closed.
	Resolved []string `yaml:"resolved"`
	// Severity is the path to the alert's severity.
	Severity string `yaml:"severity"`
	// FiredAt is the path to when the alert started firing (RFC 3339 or
	// Unix seconds or milliseconds): part of the dedup key, and an alert
	// older than the dedup window is refused.
	FiredAt string `yaml:"fired_at"`
	// Labels maps a label name to the path of its value (a string,
	// number or boolean), e.g. tenant: target.tenant.
	Labels map[string]string `yaml:"labels"`
	// LabelsFrom is the path to an object whose scalar members all become
	// labels (Labels win over it).
	LabelsFrom string `yaml:"labels_from"`
}

var defaultResolved = []string{"resolved", "ok", "recovered", "closed"}

const maxPathSegments = 16

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
	check("alerts", m.Alerts, false)
	check("id", m.ID, true)
	check("name", m.Name, false)
	check("status", m.Status, false)
	check("severity", m.Severity, false)
	check("fired_at", m.FiredAt, false)
	check("labels_from", m.LabelsFrom, false)
	for _, k := range sortedKeys(m.Labels) {
		if k == "" {
			out = append(out, fieldProblem{"labels", "a label name is empty"})
			continue
		}
		check("labels."+k, m.Labels[k], true)
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

// parse reads a generic JSON payload with the mapping m.
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
	resolved := m.Resolved
	if len(resolved) == 0 {
		resolved = defaultResolved
	}
	out := make([]Alert, 0, len(items))
	for i, item := range items {
		if _, ok := item.(map[string]any); !ok {
			return nil, fmt.Errorf("generic payload: alert %d is not an object", i)
		}
		id, ok := scalarAt(item, m.ID)
		if !ok || id == "" {
			return nil, fmt.Errorf("generic payload: alert %d has no %s", i, m.ID)
		}
		a := Alert{ID: id, Status: StatusFiring, Labels: map[string]string{}}
		a.Name, _ = scalarAt(item, m.Name)
		a.RawSeverity, _ = scalarAt(item, m.Severity)
		if m.FiredAt != "" {
			v, _ := scalarAt(item, m.FiredAt)
			fired, err := parseFiredAt(v)
			if err != nil {
				return nil, fmt.Errorf("generic payload: alert %d %s: %w", i, m.FiredAt, err)
			}
			a.FiredAt = fired
		}
		if st, _ := scalarAt(item, m.Status); st != "" {
			if slices.ContainsFunc(resolved, func(r string) bool { return strings.EqualFold(strings.TrimSpace(r), strings.TrimSpace(st)) }) {
				a.Status = StatusResolved
			}
		}
		if m.LabelsFrom != "" {
			if obj, ok := lookup(item, m.LabelsFrom); ok {
				if mm, ok := obj.(map[string]any); ok {
					for k, x := range mm {
						if v, ok := scalarValue(x); ok {
							a.Labels[k] = v
						}
					}
				}
			}
		}
		for name, path := range m.Labels {
			if v, ok := scalarAt(item, path); ok {
				a.Labels[name] = v
			}
		}
		out = append(out, a)
	}
	return finish(FormatGeneric, out)
}

// parseGeneric reads a generic JSON payload with mapping m.
func parseGeneric(m GenericMapping, body []byte) ([]Alert, error) { return m.parse(body) }
