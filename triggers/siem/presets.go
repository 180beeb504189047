package siem

import (
	"maps"
	"slices"
)

// Preset is a named mapping of the generic format for one sender's
// payload, with the severities that sender uses where they differ from
// the built-in scale. A source with a preset may still set generic: its
// set fields replace the preset's (labels are merged, the source's win),
// and its severities win over the preset's.
type Preset struct {
	Mapping    GenericMapping
	Severities map[string]string
}

// Preset names.
const (
	PresetSplunk       = "splunk"
	PresetAzureMonitor = "azure-monitor"
	PresetSumoLogic    = "sumologic"
	PresetKibana       = "kibana"
	PresetPanther      = "panther"
	PresetOpsgenie     = "opsgenie"
)

// Presets are the built-in presets, by name. Each has a test on the
// vendor's documented sample payload (testdata/presets).
var Presets = map[string]Preset{
	// Splunk's webhook alert action (the same payload as format splunk,
	// for sources that need the generic mapping's fallbacks or a URL
	// secret): the search id, the first result row as labels.
	PresetSplunk: {Mapping: GenericMapping{
		ID: "sid", Name: "search_name", FiredAt: "result._time",
		Severity:   "result.severity | result.urgency",
		LabelsFrom: "result",
		Labels:     map[string]string{"search_name": "search_name", "app": "app", "owner": "owner"},
	}},
	// Azure Monitor's common alert schema (action groups with "use
	// common alert schema"): the alert id, Fired/Resolved, Sev0..Sev4,
	// custom properties as labels.
	PresetAzureMonitor: {
		Mapping: GenericMapping{
			ID: "data.essentials.alertId", Name: "data.essentials.alertRule",
			Status: "data.essentials.monitorCondition", Resolved: []string{"Resolved"}, Firing: []string{"Fired"},
			Severity: "data.essentials.severity", FiredAt: "data.essentials.firedDateTime",
			LabelsFrom: "data.customProperties",
			Labels: map[string]string{
				"alert_rule": "data.essentials.alertRule", "signal_type": "data.essentials.signalType",
				"monitoring_service": "data.essentials.monitoringService",
				"target":             "data.essentials.alertTargetIDs.0", "configuration_item": "data.essentials.configurationItems.0",
			},
		},
		Severities: map[string]string{"sev0": "critical", "sev1": "error", "sev2": "warning", "sev3": "info", "sev4": "info"},
	},
	// Sumo Logic monitors and scheduled searches: no alert id, so the
	// dedup key is the monitor's name and query plus the trigger time;
	// TriggerType gives the status and severity.
	PresetSumoLogic: {Mapping: GenericMapping{
		ID: "AlertID | Id", DedupKey: []string{"Name", "eventType", "Query"},
		Name: "Name | eventType", FiredAt: "TriggerTimeStart | TriggerTime",
		Status: "TriggerType", Resolved: []string{"ResolvedCritical", "ResolvedWarning", "ResolvedMissingData", "Normal"},
		Firing: []string{"Critical", "Warning"}, Severity: "TriggerType",
		Labels: map[string]string{"monitor": "Name | eventType", "tenant": "tenant", "secret": "secret"},
	}},
	// Kibana (Elastic) alerting rules with a webhook connector whose body
	// is the one the README gives: the alert's uuid, else its id within
	// the rule, the rule's action group (recovered: resolved), the date.
	PresetKibana: {Mapping: GenericMapping{
		ID: "alert_uuid | alert_id", DedupKey: []string{"rule_id", "alert_id"},
		Name: "rule_name", Status: "action_group", Severity: "severity", FiredAt: "date",
		Labels: map[string]string{
			"rule_id": "rule_id", "rule_name": "rule_name", "space": "space_id", "action_group": "action_group",
			"tenant": "tenant", "secret": "secret",
		},
	}},
	// Panther's custom webhook destination: alertId (null for policy
	// alerts, which then take the detection id, the resource and the
	// creation time), alertContext as labels.
	PresetPanther: {Mapping: GenericMapping{
		ID: "alertId", DedupKey: []string{"id", "alertContext.resourceId", "title"},
		Name: "title | name", Severity: "severity", FiredAt: "createdAt",
		LabelsFrom: "alertContext",
		Labels:     map[string]string{"detection": "id", "type": "type"},
	}},
	// Opsgenie's webhook integration: the alert id, Create fires, Close
	// and Delete resolve, every other action (Acknowledge, AddNote...)
	// does nothing; "key:value" tags and the alert's details as labels.
	PresetOpsgenie: {Mapping: GenericMapping{
		ID: "alert.alertId", Name: "alert.message", Status: "action",
		Firing: []string{"Create"}, Resolved: []string{"Close", "Delete"},
		Severity: "alert.priority", FiredAt: "alert.createdAt",
		LabelsFrom: "alert.tags | alert.details",
		Labels:     map[string]string{"alias": "alert.alias", "entity": "alert.entity", "source": "alert.source", "integration": "integrationName"},
	}},
}

// PresetNames lists the presets, sorted.
func PresetNames() []string { return slices.Sorted(maps.Keys(Presets)) }

// merge returns the preset's mapping with the set fields of m over it.
func (p Preset) merge(m *GenericMapping) GenericMapping {
	out := p.Mapping
	out.Labels = maps.Clone(p.Mapping.Labels)
	if m == nil {
		return out
	}
	set := func(dst *Path, v Path) {
		if v != "" {
			*dst = v
		}
	}
	if m.Alerts != "" {
		out.Alerts = m.Alerts
	}
	set(&out.ID, m.ID)
	set(&out.Name, m.Name)
	set(&out.Status, m.Status)
	set(&out.Severity, m.Severity)
	set(&out.FiredAt, m.FiredAt)
	set(&out.LabelsFrom, m.LabelsFrom)
	if len(m.DedupKey) > 0 {
		out.DedupKey = m.DedupKey
	}
	if len(m.Resolved) > 0 {
		out.Resolved = m.Resolved
	}
	if len(m.Firing) > 0 {
		out.Firing = m.Firing
	}
	if out.Labels == nil {
		out.Labels = map[string]string{}
	}
	maps.Copy(out.Labels, m.Labels)
	return out
}
