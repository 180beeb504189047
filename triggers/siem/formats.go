package siem

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Formats are the payload formats a source may declare.
const (
	FormatAlertmanager = "alertmanager"
	FormatGrafana      = "grafana"
	FormatSplunk       = "splunk"
	FormatDatadog      = "datadog"
	FormatPagerDuty    = "pagerduty"
	FormatGeneric      = "generic"
)

// Formats lists every supported format.
var Formats = []string{FormatAlertmanager, FormatGrafana, FormatSplunk, FormatDatadog, FormatPagerDuty, FormatGeneric}

// amPayload is an Alertmanager webhook (version 4), which Grafana's
// webhook contact point extends (orgId, state, title, message; version 1).
type amPayload struct {
	Version string     `json:"version"`
	Alerts  *[]amAlert `json:"alerts"`
}

type amAlert struct {
	Status      string            `json:"status"`
	Labels      map[string]string `json:"labels"`
	Fingerprint string            `json:"fingerprint"`
	StartsAt    string            `json:"startsAt"`
}

// parseAlertmanager reads an Alertmanager webhook_config payload (version
// "4"). Each alert's labels become Labels; its fingerprint (or, from an
// Alertmanager too old to send one, a digest of its labels) is the ID; the
// "severity" label is the severity.
func parseAlertmanager(body []byte) ([]Alert, error) {
	return parseAM(FormatAlertmanager, body, func(version string) error {
		if version != "4" {
			return fmt.Errorf("version %q is not 4", shortText(version, 16))
		}
		return nil
	})
}

// parseGrafana reads the payload of a Grafana alerting webhook contact
// point: Alertmanager's shape, with a fingerprint on every alert.
func parseGrafana(body []byte) ([]Alert, error) {
	return parseAM(FormatGrafana, body, func(string) error { return nil })
}

func parseAM(format string, body []byte, checkVersion func(string) error) ([]Alert, error) {
	var p amPayload
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, fmt.Errorf("%s payload: %w", format, err)
	}
	if err := checkVersion(p.Version); err != nil {
		return nil, fmt.Errorf("%s payload: %w", format, err)
	}
	if p.Alerts == nil {
		return nil, fmt.Errorf("%s payload: no alerts array", format)
	}
	out := make([]Alert, 0, len(*p.Alerts))
	for i, a := range *p.Alerts {
		var st Status
		switch a.Status {
		case "firing":
			st = StatusFiring
		case "resolved":
			st = StatusResolved
		default:
			return nil, fmt.Errorf("%s payload: alerts[%d].status %q is not firing or resolved", format, i, shortText(a.Status, 32))
		}
		id := a.Fingerprint
		if id == "" {
			id = labelsDigest(a.Labels)
		}
		fired, err := parseFiredAt(a.StartsAt)
		if err != nil {
			return nil, fmt.Errorf("%s payload: alerts[%d].startsAt: %w", format, i, err)
		}
		out = append(out, Alert{
			ID: id, Status: st, RawSeverity: a.Labels["severity"], Name: a.Labels["alertname"], Labels: a.Labels, FiredAt: fired,
		})
	}
	return finish(format, out)
}

// splunkPayload is the body of Splunk's webhook alert action: the search
// id, the saved search's name, app and owner, and the first result row.
type splunkPayload struct {
	SID        string                     `json:"sid"`
	SearchName *string                    `json:"search_name"`
	App        string                     `json:"app"`
	Owner      string                     `json:"owner"`
	Result     map[string]json.RawMessage `json:"result"`
}

// parseSplunk reads a Splunk webhook alert action payload. It is always
// one firing alert (Splunk sends nothing when a condition clears), whose
// ID is the search id (sid) and whose Labels are the fields of the result
// row (multivalue fields joined with commas) plus search_name, app and
// owner, which override result fields of the same name. The severity is
// the row's "severity" field, else its "urgency" (Splunk ES).
func parseSplunk(body []byte) ([]Alert, error) {
	var p splunkPayload
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, fmt.Errorf("splunk payload: %w", err)
	}
	if p.SID == "" {
		return nil, fmt.Errorf("splunk payload: no sid")
	}
	labels := make(map[string]string, len(p.Result)+3)
	for k, raw := range p.Result {
		if v, ok := scalarOrList(raw); ok {
			labels[k] = v
		}
	}
	name := ""
	if p.SearchName != nil {
		name = *p.SearchName
		labels["search_name"] = name
	}
	if p.App != "" {
		labels["app"] = p.App
	}
	if p.Owner != "" {
		labels["owner"] = p.Owner
	}
	sev := labels["severity"]
	if sev == "" {
		sev = labels["urgency"]
	}
	fired, err := parseFiredAt(labels["_time"])
	if err != nil {
		return nil, fmt.Errorf("splunk payload: result._time: %w", err)
	}
	return finish(FormatSplunk, []Alert{{ID: p.SID, Status: StatusFiring, RawSeverity: sev, Name: name, Labels: labels, FiredAt: fired}})
}

// Datadog's webhook payload is a template the user writes. These are the
// fields parseDatadog reads, with the template variable that fills each:
//
//	id                  $ID                event id
//	alert_id            $ALERT_ID          monitor id
//	alert_cycle_key     $ALERT_CYCLE_KEY   same from trigger to recovery
//	aggreg_key          $AGGREG_KEY
//	alert_transition    $ALERT_TRANSITION  Triggered, Recovered, Warn, ...
//	alert_type          $ALERT_TYPE        error, warning, info, success
//	alert_priority      $ALERT_PRIORITY    P1..P5
//	alert_title / title $ALERT_TITLE / $EVENT_TITLE
//	tags                $TAGS              "key:value,key:value" (or a JSON array)
//	alert_scope         $ALERT_SCOPE       "key:value, key:value"
//	hostname / host_name $HOSTNAME
//	org {id, name}      $ORG_ID, $ORG_NAME
//
// which is Datadog's default payload plus $ALERT_CYCLE_KEY, $AGGREG_KEY and
// $ALERT_SCOPE. Any other top-level string field becomes a label too, so a
// template may add "tenant": "acme".
var datadogText = []string{"body", "text_only_msg", "event_msg", "link", "url", "snapshot", "alert_query", "alert_status"}

// parseDatadog reads one Datadog webhook notification (see above). The ID
// is the alert cycle key, else the aggregation key, else the event id,
// else the monitor id. "Recovered" (or alert_type success) is resolved,
// "No Data" and transitions it does not know are other, the rest firing.
// The severity is the priority when the template sends one, else the
// alert type. Labels: tags, then scope, then the fields above, then other
// top-level strings; the first to set a key wins.
func parseDatadog(body []byte) ([]Alert, error) {
	var p map[string]json.RawMessage
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, fmt.Errorf("datadog payload: %w", err)
	}
	get := func(keys ...string) string {
		for _, k := range keys {
			if v, ok := scalar(p[k]); ok && !unresolvedVariable(v) {
				return strings.TrimSpace(v)
			}
		}
		return ""
	}
	labels := map[string]string{}
	set := func(k, v string) {
		if _, dup := labels[k]; !dup && k != "" && !unresolvedVariable(v) {
			labels[k] = v
		}
	}
	if tags, ok := scalarOrList(p["tags"]); ok {
		for _, kv := range parseTags(tags) {
			set(kv[0], kv[1])
		}
	}
	for _, kv := range parseTags(get("alert_scope")) {
		set(kv[0], kv[1])
	}
	for _, k := range []string{"alert_id", "alert_type", "alert_priority", "alert_transition", "alert_metric", "event_type", "priority"} {
		if v := get(k); v != "" {
			set(k, v)
		}
	}
	if v := get("hostname", "host_name"); v != "" {
		set("host", v)
	}
	var org struct {
		ID   json.RawMessage `json:"id"`
		Name json.RawMessage `json:"name"`
	}
	if raw, ok := p["org"]; ok && json.Unmarshal(raw, &org) == nil {
		if v, ok := scalar(org.ID); ok {
			set("org_id", v)
		}
		if v, ok := scalar(org.Name); ok {
			set("org_name", v)
		}
	}
	for k, raw := range p {
		if slices.Contains(datadogText, k) || k == "tags" || k == "alert_scope" || k == "org" {
			continue
		}
		if v, ok := scalar(raw); ok {
			set(k, v)
		}
	}

	id := get("alert_cycle_key", "aggreg_key", "id", "alert_id")
	if id == "" {
		return nil, fmt.Errorf("datadog payload: no alert_cycle_key, aggreg_key, id or alert_id")
	}
	typ := strings.ToLower(get("alert_type"))
	var st Status
	switch strings.ToLower(get("alert_transition")) {
	case "recovered":
		st = StatusResolved
	case "triggered", "re-triggered", "warn", "re-warn", "renotify":
		st = StatusFiring
	case "":
		st = StatusFiring
		if typ == "success" {
			st = StatusResolved
		}
	default: // "No Data", "Re-No Data", and whatever Datadog adds
		st = StatusOther
	}
	sev := get("alert_priority")
	if ParseSeverity(sev) == SeverityUnknown {
		sev = typ
	}
	fired, err := parseFiredAt(get("date"))
	if err != nil {
		return nil, fmt.Errorf("datadog payload: date: %w", err)
	}
	return finish(FormatDatadog, []Alert{{ID: id, Status: st, RawSeverity: sev, Name: get("alert_title", "title"), Labels: labels, FiredAt: fired}})
}

// unresolvedVariable reports a Datadog template variable that was sent as
// is ("$ALERT_CYCLE_KEY"), which Datadog does when it has no value for it.
func unresolvedVariable(v string) bool {
	if len(v) < 2 || v[0] != '$' {
		return false
	}
	for _, c := range v[1:] {
		if (c < 'A' || c > 'Z') && c != '_' && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// parseTags splits "key:value, key2:value2, bare" into pairs; a bare tag
// has an empty value.
func parseTags(s string) [][2]string {
	var out [][2]string
	for _, t := range strings.Split(s, ",") {
		t = strings.TrimSpace(t)
		if t == "" {
			continue
		}
		k, v, _ := strings.Cut(t, ":")
		out = append(out, [2]string{strings.TrimSpace(k), strings.TrimSpace(v)})
	}
	return out
}

// pdPayload is a PagerDuty v3 webhook: one event per delivery.
type pdPayload struct {
	Event *struct {
		ID           string          `json:"id"`
		EventType    string          `json:"event_type"`
		ResourceType string          `json:"resource_type"`
		Data         json.RawMessage `json:"data"`
	} `json:"event"`
}

type pdRef struct {
	ID      string `json:"id"`
	Summary string `json:"summary"`
}

type pdIncident struct {
	CreatedAt        string  `json:"created_at"`
	ID               string  `json:"id"`
	Type             string  `json:"type"`
	Status           string  `json:"status"`
	Title            string  `json:"title"`
	Urgency          string  `json:"urgency"`
	IncidentKey      string  `json:"incident_key"`
	Service          *pdRef  `json:"service"`
	Priority         *pdRef  `json:"priority"`
	EscalationPolicy *pdRef  `json:"escalation_policy"`
	Teams            []pdRef `json:"teams"`
	// Incident is set on the data of incident_note, incident_responder
	// and incident_status_update events.
	Incident *pdRef `json:"incident"`
}

// parsePagerDuty reads a PagerDuty v3 webhook. incident.triggered,
// incident.reopened and incident.priority_updated are firing;
// incident.resolved is resolved; every other event type (acknowledged,
// annotated, service.*...) is other. The ID is the incident's id, so the
// events of one incident are one alert. Labels: event_type, service,
// service_id, priority, urgency, status, incident_key, escalation_policy,
// team (the first team), teams (all, comma-separated) and title. The
// severity is the priority (P1..P5) when set, else the urgency.
func parsePagerDuty(body []byte) ([]Alert, error) {
	var p pdPayload
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, fmt.Errorf("pagerduty payload: %w", err)
	}
	ev := p.Event
	if ev == nil {
		return nil, fmt.Errorf("pagerduty payload: no event")
	}
	if ev.EventType == "" {
		return nil, fmt.Errorf("pagerduty payload: no event.event_type")
	}
	var inc pdIncident
	if len(ev.Data) > 0 && string(ev.Data) != "null" {
		if err := json.Unmarshal(ev.Data, &inc); err != nil {
			return nil, fmt.Errorf("pagerduty payload: event.data: %w", err)
		}
	}
	labels := map[string]string{"event_type": ev.EventType}
	set := func(k, v string) {
		if v != "" {
			labels[k] = v
		}
	}
	if ev.ResourceType != "incident" || !strings.HasPrefix(ev.EventType, "incident.") {
		id := ev.ID
		if id == "" {
			id = inc.ID
		}
		if id == "" {
			return nil, fmt.Errorf("pagerduty payload: no event.id")
		}
		return finish(FormatPagerDuty, []Alert{{ID: id, Status: StatusOther, Labels: labels}})
	}

	id := inc.ID
	if inc.Type != "incident" && inc.Incident != nil {
		id = inc.Incident.ID // a note, responder or status update of an incident
	}
	if id == "" {
		return nil, fmt.Errorf("pagerduty payload: %s event without an incident id", shortText(ev.EventType, 64))
	}
	var st Status
	switch ev.EventType {
	case "incident.triggered", "incident.reopened", "incident.priority_updated":
		st = StatusFiring
		if inc.Status == "resolved" {
			st = StatusResolved
		}
	case "incident.resolved":
		st = StatusResolved
	default:
		st = StatusOther
	}
	if inc.Service != nil {
		set("service", inc.Service.Summary)
		set("service_id", inc.Service.ID)
	}
	sev := inc.Urgency
	if inc.Priority != nil {
		set("priority", inc.Priority.Summary)
		if ParseSeverity(inc.Priority.Summary) != SeverityUnknown {
			sev = inc.Priority.Summary
		}
	}
	if inc.EscalationPolicy != nil {
		set("escalation_policy", inc.EscalationPolicy.Summary)
	}
	teams := make([]string, 0, len(inc.Teams))
	for _, t := range inc.Teams {
		if t.Summary != "" {
			teams = append(teams, t.Summary)
		}
	}
	if len(teams) > 0 {
		set("team", teams[0])
		set("teams", strings.Join(teams, ","))
	}
	set("urgency", inc.Urgency)
	set("status", inc.Status)
	set("incident_key", inc.IncidentKey)
	set("title", inc.Title)
	fired, err := parseFiredAt(inc.CreatedAt)
	if err != nil {
		return nil, fmt.Errorf("pagerduty payload: event.data.created_at: %w", err)
	}
	return finish(FormatPagerDuty, []Alert{{ID: id, Status: st, RawSeverity: sev, Name: inc.Title, Labels: labels, FiredAt: fired}})
}

// parseFiredAt reads an alert's firing time: RFC 3339, or Unix time in
// seconds (Splunk's _time, possibly with a fraction) or milliseconds
// (Datadog's date). Empty, or Go's and Alertmanager's zero time, is
// unknown (zero). A time that is not finite or not in 2000-2200 is an
// error.
func parseFiredAt(v string) (time.Time, error) {
	v = strings.TrimSpace(v)
	if v == "" || strings.HasPrefix(v, "0001-01-01") {
		return time.Time{}, nil
	}
	var t time.Time
	if f, err := strconv.ParseFloat(v, 64); err == nil {
		if math.IsNaN(f) || math.IsInf(f, 0) || f <= 0 {
			return time.Time{}, fmt.Errorf("%q is not a time", shortText(v, 40))
		}
		if f > 1e11 { // milliseconds
			f /= 1000
		}
		sec, frac := math.Modf(f)
		t = time.Unix(int64(sec), int64(frac*1e9))
	} else {
		p, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return time.Time{}, fmt.Errorf("%q is not an RFC 3339 or Unix time", shortText(v, 40))
		}
		t = p
	}
	if t.Year() < 2000 || t.Year() > 2200 {
		return time.Time{}, fmt.Errorf("%q is out of range", shortText(v, 40))
	}
	return t.UTC(), nil
}
