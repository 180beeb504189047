package siem_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/triggers/siem"
)

// presetsYAML has one source per preset. Splunk and Azure Monitor's plain
// webhooks cannot set a header: they carry a URL secret.
const presetsYAML = `
sources:
  splunk:
    preset: splunk
    tenants: [globex]
    auth:
      url_secret: {secrets: [` + urlSecret1 + `]}
    rules:
      - match: {search_name: DB credential brute force}
        tenant_label: tenant
        secret_label: credential
        min_severity: error
  azure:
    preset: azure-monitor
    tenants: [acme]
    auth:
      url_secret: {secrets: [` + urlSecret1 + `], param: code}
    rules:
      - tenant_label: tenant
        secret_label: secret
        min_severity: error
  sumo:
    preset: sumologic
    tenants: [acme]
    auth:
      basic: {username: sumo, password: ` + basicPass + `}
    rules:
      - tenant_label: tenant
        secret_label: secret
  kibana:
    preset: kibana
    tenants: [acme]
    auth:
      basic: {username: kibana, password: ` + basicPass + `}
    rules:
      - tenant_label: tenant
        secret_label: secret
  panther:
    preset: panther
    tenants: [acme]
    auth:
      bearer: {token: ` + bearerToken + `}
    rules:
      - tenant_label: tenant
        secret_label: secret
        min_severity: error
  opsgenie:
    format: generic
    preset: opsgenie
    tenants: [acme]
    auth:
      bearer: {token: ` + bearerToken + `}
    generic:
      labels: {route: "alert.alias | =none"}
    rules:
      - match: {route: leak-acme-openai}
        tenant_label: tenant
        secret_label: secret
        min_severity: critical
`

// TestPresets (issue 16, item 7): each preset on its vendor's documented
// sample payload (testdata/presets, the documented shape with this
// test's tenants in the sender's custom fields).
func TestPresets(t *testing.T) {
	e := newEnvWith(t, presetsYAML, urlSecret1)
	for _, tc := range []struct {
		name, path, file string
		sign             signer
		code             int
		id, outcome      string
		severity         siem.Severity
		tenant, secret   string
		field            string // of a refusal
	}{
		{"splunk", "splunk/" + urlSecret1, "../splunk/alert.json", noAuth, 202,
			"scheduler__admin__search__RMD5a1f3c09e2b7d4411_at_1772442000_5120", "accepted", siem.SeverityError, "globex", "db-password", ""},
		{"azure resolved (documented sample)", "azure?code=" + urlSecret1, "azure-monitor.json", noAuth, 202,
			"sha256:", "ignored", siem.SeverityInfo, "", "", ""},
		{"azure fired", "azure?code=" + urlSecret1, "azure-monitor-fired.json", noAuth, 202,
			"sha256:", "accepted", siem.SeverityError, "acme", "openai-key", ""},
		{"sumo (no alert id)", "sumo", "sumologic.json", basic("sumo", basicPass), 202, "", "accepted", siem.SeverityCritical, "acme", "openai-key", ""},
		{"sumo unrendered", "sumo", "sumologic-unrendered.json", basic("sumo", basicPass), 422, "", "", 0, "", "", "name"},
		{"kibana", "kibana", "kibana.json", basic("kibana", basicPass), 202, "3d8a5b7e-1f2c-4e6a-9b0d-c7e5f3a1b2d4", "accepted", siem.SeverityError, "acme", "openai-key", ""},
		{"kibana unrendered", "kibana", "kibana-unrendered.json", basic("kibana", basicPass), 422, "", "", 0, "", "", "id"},
		{"panther policy (alertId null)", "panther", "panther-policy.json", bearer(bearerToken), 202, "", "accepted", siem.SeverityError, "acme", "openai-key", ""},
		{"panther rule", "panther", "panther-rule.json", bearer(bearerToken), 202, "5f2b8c1e4d7a9b3c6e0f1a2b3c4d5e6f", "accepted", siem.SeverityCritical, "acme", "stripe-key", ""},
		{"opsgenie create", "opsgenie", "opsgenie-create.json", bearer(bearerToken), 202, "052652ac-5d1c-464a-812a-7dd18bbfba8c", "accepted", siem.SeverityCritical, "acme", "openai-key", ""},
		{"opsgenie acknowledge", "opsgenie", "opsgenie-ack.json", bearer(bearerToken), 202, "052652ac-5d1c-464a-812a-7dd18bbfba8c", "ignored", siem.SeverityCritical, "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(e.rotations())
			code, _, resp := e.post(e.url, tc.path, load(t, "presets/"+tc.file), tc.sign)
			require.Equal(t, tc.code, code, "%+v", resp)
			if tc.field != "" {
				require.Equal(t, tc.field, resp.Field)
				require.Len(t, e.rotations(), before)
				return
			}
			require.Len(t, resp.Alerts, 1)
			a := resp.Alerts[0]
			if tc.id == "sha256:" { // Azure's alert ids are longer than 128 bytes
				require.Regexp(t, `^sha256:[0-9a-f]{32}$`, a.ID)
			} else if tc.id != "" {
				require.Equal(t, tc.id, a.ID)
			} else {
				require.Regexp(t, `^key:[0-9a-f]{32}$`, a.ID)
			}
			require.Equal(t, tc.outcome, a.Outcome, "%+v", a)
			require.Equal(t, tc.severity, a.Severity)
			if tc.outcome != "accepted" {
				require.Len(t, e.rotations(), before)
				return
			}
			rots := e.rotations()
			require.Len(t, rots, before+1)
			require.Equal(t, tc.tenant, rots[before].Tenant)
			require.Equal(t, tc.secret, rots[before].Secret)
		})
	}
}

func TestPresetConfig(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"preset: nope", `sources.s.preset: "nope" must be one of azure-monitor, kibana, opsgenie, panther, splunk, sumologic`},
		{"preset: panther\n    format: splunk", "sources.s.preset: is only for format generic"},
		{"format: generic\n    generic: {dedup_key: [a, b]}", "sources.s.generic.fired_at: must be set with dedup_key"},
		{"format: generic\n    generic: {id: [\"=x\", a]}", `sources.s.generic.id: constant "x" must be the last alternative`},
		{"format: generic\n    generic: {name: n}", "sources.s.generic.id: must be set"},
	} {
		_, err := siem.ParseConfig([]byte(`
sources:
  s:
    `+tc.yaml+`
    tenants: [acme]
    auth: {bearer: {token: `+bearerToken+`}}
    rules: [{tenant: acme, all_secrets: true}]
`), rekeyConfig(t))
		require.ErrorContains(t, err, tc.want)
	}
}
