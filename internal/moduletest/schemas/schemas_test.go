package schemas_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"maps"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/schemas"
)

// payloadType ties a CloudEvents type to its Go payload type.
type payloadType struct {
	typ string
	new func() any // a pointer to a zero payload
}

var payloadTypes = []payloadType{
	{schemas.TypeRotationRequested, func() any { return new(schemas.RotationRequested) }},
	{schemas.TypeRotationCompleted, func() any { return new(schemas.RotationCompleted) }},
	{schemas.TypeRotationFailed, func() any { return new(schemas.RotationFailed) }},
	{schemas.TypeRevocationRequested, func() any { return new(schemas.RevocationRequested) }},
	{schemas.TypeRevocationStarted, func() any { return new(schemas.RevocationStarted) }},
	{schemas.TypeRevocationCompleted, func() any { return new(schemas.RevocationCompleted) }},
	{schemas.TypeTenantRestored, func() any { return new(schemas.TenantRestored) }},
	{schemas.TypeInvalidation, func() any { return new(schemas.Invalidation) }},
	{schemas.TypeInvalidationAck, func() any { return new(schemas.InvalidationAck) }},
	{schemas.TypeUsageReport, func() any { return new(schemas.UsageReport) }},
	{schemas.TypeAuditRecord, func() any { return new(schemas.AuditRecord) }},
	{schemas.TypeAgentPresence, func() any { return new(schemas.AgentPresence) }},
	{schemas.TypeInvalidationConfirmed, func() any { return new(schemas.InvalidationConfirmed) }},
	{schemas.TypeExternalChange, func() any { return new(schemas.ExternalChange) }},
	{schemas.TypeRevocationProgress, func() any { return new(schemas.RevocationProgress) }},
	{schemas.TypeLeakReport, func() any { return new(schemas.LeakReport) }},
}

var (
	t0        = time.Date(2025, 6, 1, 9, 30, 0, 123456789, time.UTC)
	requestID = "01JWQ3K5Z8M4R2N6P7T9V0XYZA"
	long63    = strings.Repeat("a", 63)
)

// example is a payload that must validate against the schema of its type.
type example struct {
	name string
	typ  string
	v    any
}

// examples holds at least one realistic payload per type, plus edge cases
// (omitempty fields left out, IDs at their limits, nil slices).
func examples() []example {
	cron := schemas.Trigger{Kind: schemas.TriggerCron, Source: "cron", Actor: "schedule/openai-monthly@2025-06-01T00:00:00Z"}
	siem := schemas.Trigger{Kind: schemas.TriggerSIEM, Source: "datadog", Actor: "alert:8c1f0e2a"}
	cli := schemas.Trigger{Kind: schemas.TriggerCLI, Actor: "admin-token:oncall"}
	return []example{
		{"rotation requested by cron", schemas.TypeRotationRequested, schemas.RotationRequested{
			Tenant: "acme", Secret: "openai-key", Reason: "scheduled rotation (every 720h)",
			Trigger: cron, RequestedAt: t0,
		}},
		{"rotation requested, ids at their limits", schemas.TypeRotationRequested, schemas.RotationRequested{
			Tenant: long63, Secret: "a", Reason: "", Trigger: schemas.Trigger{Kind: schemas.TriggerInternal}, RequestedAt: t0,
		}},
		{"rotation completed", schemas.TypeRotationCompleted, schemas.RotationCompleted{
			Tenant: "acme", Secret: "openai-key", Backend: "vault", Version: "7", PreviousVersion: "6",
			RequestID: requestID, Coalesced: []string{"01JWQ3K60000000000000000AB", "01JWQ3K60000000000000000AC"},
			Reason: "datadog: key seen in a public repository", Trigger: siem, Attempts: 2,
			StartedAt: t0, CompletedAt: t0.Add(1500 * time.Millisecond),
		}},
		{"rotation completed, first version", schemas.TypeRotationCompleted, schemas.RotationCompleted{
			Tenant: "acme", Secret: "a_b-c", Backend: "local", Version: "1", RequestID: requestID,
			Trigger: schemas.Trigger{Kind: schemas.TriggerAPI}, Attempts: 1, StartedAt: t0, CompletedAt: t0,
		}},
		{"rotation failed", schemas.TypeRotationFailed, schemas.RotationFailed{
			Tenant: "globex", Secret: "stripe_restricted", Backend: "awssm", RequestID: requestID,
			Step: "test", Error: "test new version: downstream answered 401", Permanent: false, Attempts: 5,
			Trigger:  schemas.Trigger{Kind: schemas.TriggerTenant, Source: "self-service", Actor: "tenant-token:tk_42"},
			FailedAt: t0,
		}},
		{"revocation requested", schemas.TypeRevocationRequested, schemas.RevocationRequested{
			Tenant: "initech", Action: schemas.ActionRevoke, Reason: "GuardDuty: credential exfiltration",
			Trigger: schemas.Trigger{Kind: schemas.TriggerAWS, Source: "guardduty", Actor: "finding:7a1c"}, RequestedAt: t0,
		}},
		{"restore requested", schemas.TypeRevocationRequested, schemas.RevocationRequested{
			Tenant: "initech", Action: schemas.ActionRestore, Reason: "incident closed", Trigger: cli, RequestedAt: t0,
		}},
		{"revocation started", schemas.TypeRevocationStarted, schemas.RevocationStarted{
			Tenant: "initech", RequestID: requestID, Reason: "GuardDuty: credential exfiltration", Trigger: cli, StartedAt: t0,
		}},
		{"revocation completed", schemas.TypeRevocationCompleted, schemas.RevocationCompleted{
			Tenant: "initech", RequestID: requestID,
			Parts: []schemas.PartReport{
				{Part: "vault-leases", Succeeded: 14, DurationMS: 182.4},
				{Part: "aws-secrets", Succeeded: 3, Failed: 1, Errors: []string{"rotate initech/db-password: throttled"}, DurationMS: 950},
			},
			Failed: true, StartedAt: t0, CompletedAt: t0.Add(time.Second),
		}},
		{"revocation completed, nothing to do", schemas.TypeRevocationCompleted, schemas.RevocationCompleted{
			Tenant: "initech", RequestID: requestID, StartedAt: t0, CompletedAt: t0,
		}},
		{"tenant restored", schemas.TypeTenantRestored, schemas.TenantRestored{
			Tenant: "initech", RequestID: requestID, Trigger: cli, RestoredAt: t0,
		}},
		{"invalidation, rotated", schemas.TypeInvalidation, schemas.Invalidation{
			Tenant: "acme", Secret: "openai-key", Kind: schemas.InvalidationRotated, Version: "7",
			Reason: "scheduled rotation", RequestID: requestID, PublishedAt: t0,
		}},
		{"invalidation, tenant revoked", schemas.TypeInvalidation, schemas.Invalidation{
			Tenant: "acme", Kind: schemas.InvalidationRevoked, Reason: "kill switch", RequestID: requestID, PublishedAt: t0,
		}},
		{"invalidation, tenant restored", schemas.TypeInvalidation, schemas.Invalidation{
			Tenant: "acme", Kind: schemas.InvalidationRestored, RequestID: requestID, PublishedAt: t0,
		}},
		{"invalidation ack", schemas.TypeInvalidationAck, schemas.InvalidationAck{
			Tenant: "acme", Secret: "openai-key", Agent: "planner-7f9c", Version: "7", RequestID: requestID,
			ReceivedAt: t0, DroppedAt: t0.Add(40 * time.Microsecond),
		}},
		{"invalidation ack, tenant-wide", schemas.TypeInvalidationAck, schemas.InvalidationAck{
			Tenant: "acme", Agent: "planner-7f9c", RequestID: requestID, ReceivedAt: t0, DroppedAt: t0,
		}},
		{"usage report", schemas.TypeUsageReport, schemas.UsageReport{
			Tenant: "acme", Secret: "openai-key", Version: "7", Agent: "retriever-2", Tool: "web_search",
			Count: 1250, WindowStart: t0, WindowEnd: t0.Add(10 * time.Second),
		}},
		{"leak report", schemas.TypeLeakReport, schemas.LeakReport{
			Tenant: "acme", Secret: "openai-key", Version: "7", Agent: "retriever-2", Tool: "web_search",
			Run: "run-42", Where: "http:body", Encoding: schemas.EncodingBase64, Split: true, Count: 2, FoundAt: t0,
		}},
		{"audit record", schemas.TypeAuditRecord, schemas.AuditRecord{
			Tenant: "acme", Secret: "openai-key", Actor: "siem:datadog", Action: "rotate",
			Outcome: schemas.OutcomeCoalesced, RequestID: requestID, Component: "rotation-worker",
			Detail: map[string]string{"into": "01JWQ3K60000000000000000AB", "version": "7"}, Time: t0,
		}},
		{"audit record of acks", schemas.TypeAuditRecord, schemas.AuditRecord{
			Tenant: "acme", Secret: "openai-key", Actor: "fanout", Action: "invalidation.acks",
			Outcome: schemas.OutcomeSucceeded, RequestID: requestID, Component: "fanout",
			Detail: map[string]string{"version": "7", "count": "2"}, Time: t0,
			Acks: []schemas.AuditAck{{Agent: "planner-7f9c", Tool: "planner", DroppedAt: t0, AckMS: 3.2}, {Agent: "retriever-2", DroppedAt: t0}},
		}},
		{"audit record, tenant-wide", schemas.TypeAuditRecord, schemas.AuditRecord{
			Tenant: "acme", Actor: "admin-token:oncall", Action: "revoke", Outcome: schemas.OutcomeAccepted,
			Component: "api", Time: t0,
		}},
		{"agent presence", schemas.TypeAgentPresence, schemas.AgentPresence{
			Tenant: "acme", Agent: "planner-7f9c", Tool: "planner", StartedAt: t0, Interval: 5 * time.Second,
		}},
		{"agent leaving", schemas.TypeAgentPresence, schemas.AgentPresence{
			Tenant: "acme", Agent: "planner-7f9c", StartedAt: t0, Interval: 5 * time.Second, Leaving: true,
		}},
		{"invalidation confirmed", schemas.TypeInvalidationConfirmed, schemas.InvalidationConfirmed{
			Tenant: "acme", Secret: "openai-key", Kind: schemas.InvalidationRotated, Version: "7", RequestID: requestID,
			PublishedAt: t0, LiveAgents: 3, Acked: 3, Complete: true, LastAckMS: 1.25,
		}},
		{"invalidation partly confirmed", schemas.TypeInvalidationConfirmed, schemas.InvalidationConfirmed{
			Tenant: "acme", Kind: schemas.InvalidationRevoked, RequestID: requestID,
			PublishedAt: t0, LiveAgents: 3, Acked: 2, Missing: []string{"retriever-2"}, LastAckMS: 0.8,
		}},
		{"sync request", schemas.TypeRotationRequested, schemas.RotationRequested{
			Tenant: "acme", Secret: "stripe-key", Reason: "aws RotationSucceeded", Mode: schemas.RotateModeSync,
			Trigger: schemas.Trigger{Kind: schemas.TriggerAWS, Source: "sqs", Actor: "evt-1"}, RequestedAt: t0,
		}},
		{"external change", schemas.TypeExternalChange, schemas.ExternalChange{
			Tenant: "acme", Secret: "stripe-key", Backend: "awssm", Source: "aws.secretsmanager",
			Event: "RotationSucceeded", Outcome: schemas.ExternalSucceeded,
			ResourceID: "arn:aws:secretsmanager:us-east-1:123456789012:secret:/tenants/acme/stripe-key-AbCdEf",
			EventID:    "6a7e8feb-b491-4cf7-a9f1-bf3703467718", EventTime: t0, ObservedAt: t0,
		}},
		{"revocation progress", schemas.TypeRevocationProgress, schemas.RevocationProgress{
			Tenant: "acme", RequestID: requestID, Part: "vault.leases", Item: "vault", Outcome: schemas.OutcomeSucceeded,
			Attempt: 1, Count: 500, Done: 3, Total: 52, ElapsedMS: 812.5,
		}},
		{"revocation item retrying", schemas.TypeRevocationProgress, schemas.RevocationProgress{
			Tenant: "acme", RequestID: requestID, Part: "awssm.secrets", Item: "stripe-key", Outcome: schemas.OutcomeRetrying,
			Attempt: 2, Error: "ThrottlingException", Done: 3, Total: 52, Failed: 0, ElapsedMS: 1200,
		}},
		{"external deletion", schemas.TypeExternalChange, schemas.ExternalChange{
			Tenant: "acme", Secret: "stripe-key", Backend: "awssm", Source: "aws.secretsmanager",
			Event: "DeleteSecret", Outcome: schemas.ExternalInfo, ResourceID: "/tenants/acme/stripe-key",
			EventID: "e-3", Deleted: true, EventTime: t0, ObservedAt: t0,
		}},
		{"external failure", schemas.TypeExternalChange, schemas.ExternalChange{
			Tenant: "acme", Secret: "stripe-key", Backend: "awssm", Source: "aws.secretsmanager",
			Event: "RotationFailed", Outcome: schemas.ExternalFailed, ResourceID: "/tenants/acme/stripe-key",
			VersionID: "rekey-0a1b", EventID: "e-2", Error: "Lambda timed out", EventTime: t0, ObservedAt: t0,
		}},
	}
}

// compiler returns a compiler that knows every embedded schema under its $id
// and asserts formats (date-time).
func compiler(t testing.TB) *jsonschema.Compiler {
	t.Helper()
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	for _, name := range schemaFileNames(t) {
		require.NoError(t, c.AddResource(schemas.SchemaBaseURI+name, readSchemaDoc(t, name)))
	}
	return c
}

func compile(t testing.TB, file string) *jsonschema.Schema {
	t.Helper()
	sch, err := compiler(t).Compile(schemas.SchemaBaseURI + file)
	require.NoError(t, err, "compile %s", file)
	return sch
}

func schemaFileNames(t testing.TB) []string {
	t.Helper()
	entries, err := fs.ReadDir(schemas.SchemaFiles(), ".")
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func readSchemaDoc(t testing.TB, name string) any {
	t.Helper()
	f, err := schemas.SchemaFiles().Open(name)
	require.NoError(t, err)
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	require.NoError(t, err, "parse %s", name)
	return doc
}

func schemaFor(t testing.TB, typ string) string {
	t.Helper()
	file, ok := schemas.SchemaFor(typ)
	require.True(t, ok, "no schema for %s", typ)
	return file
}

// instance turns JSON into what jsonschema validates.
func instance(t testing.TB, b []byte) any {
	t.Helper()
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	require.NoError(t, err)
	return v
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return b
}

// decodePayload is what a consumer does with data: unmarshal and Validate.
func decodePayload(typ string, b []byte) error {
	for _, pt := range payloadTypes {
		if pt.typ == typ {
			e := schemas.Event{Type: typ, ID: "x", Data: b}
			return e.DecodeData(typ, pt.new())
		}
	}
	return errors.New("unknown type " + typ)
}

func TestExamplesValidate(t *testing.T) {
	c := compiler(t)
	seen := map[string]bool{}
	for _, ex := range examples() {
		t.Run(ex.name, func(t *testing.T) {
			seen[ex.typ] = true
			sch, err := c.Compile(schemas.SchemaBaseURI + schemaFor(t, ex.typ))
			require.NoError(t, err)
			b := mustJSON(t, ex.v)
			require.NoError(t, sch.Validate(instance(t, b)), "%s", b)
			require.NoError(t, decodePayload(ex.typ, b), "the Go side accepts it too")
		})
	}
	for _, pt := range payloadTypes {
		require.True(t, seen[pt.typ], "no example of %s", pt.typ)
	}
}

// del marks a field to delete in a mutation.
type del struct{}

// mutation changes one field of a valid example's JSON.
type mutation struct {
	name  string
	path  string // dot separated; "trigger.kind", "parts.0.part"
	value any    // del{} deletes the field
	// goRejects says DecodeData must refuse it as well; when false the Go
	// decoder is more lenient than the schema and the case is not checked
	// on the Go side.
	goRejects bool
}

var badIDs = []struct{ name, id string }{
	{"empty", ""},
	{"dot", "acme.prod"},
	{"star", "acme*"},
	{"gt", "acme>"},
	{"only wildcard", ">"},
	{"upper case", "Acme"},
	{"leading dash", "-acme"},
	{"leading underscore", "_tenant"},
	{"space", "acme prod"},
	{"unicode", "acmé"},
	{"trailing newline", "acme\n"},
	{"slash", "acme/openai-key"},
	{"64 chars", strings.Repeat("a", 64)},
}

// mutations returns the wrong variants of one valid example: generic ones
// derived from its schema and the type-specific ones below.
func mutations(t *testing.T, typ string, schemaDoc map[string]any) []mutation {
	props := schemaDoc["properties"].(map[string]any)
	var ms []mutation
	for _, req := range schemaDoc["required"].([]any) {
		ms = append(ms, mutation{name: "missing " + req.(string), path: req.(string), value: del{}})
	}
	secretRequired := slices.Contains(schemaDoc["required"].([]any), any("secret"))
	for _, bad := range badIDs {
		ms = append(ms, mutation{"tenant " + bad.name, "tenant", bad.id, true})
		if _, ok := props["secret"]; ok {
			// AuditRecord.Validate does not check the secret, and Go reads
			// an optional "secret": "" as absent; the schema refuses both.
			goRejects := typ != schemas.TypeAuditRecord && (secretRequired || bad.id != "")
			ms = append(ms, mutation{"secret " + bad.name, "secret", bad.id, goRejects})
		}
	}
	ms = append(ms,
		mutation{"extra property", "value", "sk-live-0123456789", false},
		mutation{"tenant is a number", "tenant", 42, true},
		mutation{"tenant is null", "tenant", nil, true},
	)
	for name, p := range props {
		if p.(map[string]any)["format"] == "date-time" {
			ms = append(ms,
				mutation{name + " not a date-time", name, "yesterday", true},
				mutation{name + " without a zone", name, "2025-06-01T09:30:00", true},
				mutation{name + " is a number", name, 1748770200, true},
			)
		}
	}
	if _, ok := props["trigger"]; ok {
		// Only requests check their trigger on the Go side.
		goChecksTrigger := typ == schemas.TypeRotationRequested || typ == schemas.TypeRevocationRequested
		ms = append(ms,
			mutation{"trigger kind unknown", "trigger.kind", "pagerduty", false},
			mutation{"trigger kind empty", "trigger.kind", "", goChecksTrigger},
			mutation{"trigger kind missing", "trigger.kind", del{}, goChecksTrigger},
			mutation{"trigger extra property", "trigger.token", "xoxb-1", false},
			mutation{"trigger is a string", "trigger", "cron", true},
		)
	}
	ms = append(ms, specific[typ]...)
	return ms
}

var specific = map[string][]mutation{
	schemas.TypeRotationCompleted: {
		{"empty version", "version", "", true},
		{"attempts is a string", "attempts", "2", true},
		{"attempts is fractional", "attempts", 1.5, true},
		{"coalesced holds a number", "coalesced", []any{1}, true},
		{"coalesced is a string", "coalesced", "01JWQ3K60000000000000000AB", true},
	},
	schemas.TypeRotationFailed: {
		{"permanent is a string", "permanent", "false", true},
	},
	schemas.TypeRevocationRequested: {
		{"unknown action", "action", "delete", true},
		{"action in upper case", "action", "REVOKE", true},
		{"empty action", "action", "", true},
	},
	schemas.TypeRevocationCompleted: {
		{"parts is an object", "parts", map[string]any{"part": "vault"}, true},
		{"part without name", "parts.0.part", del{}, false},
		{"part with extra property", "parts.0.value", "s3cr3t", false},
		{"part duration is a string", "parts.0.duration_ms", "182ms", true},
		{"part errors holds a number", "parts.1.errors", []any{500}, true},
		{"failed is a number", "failed", 1, true},
	},
	schemas.TypeInvalidation: {
		{"unknown kind", "kind", "expired", true},
		{"rotated without secret", "secret", del{}, true},
	},
	schemas.TypeInvalidationAck: {
		{"empty agent", "agent", "", true},
	},
	schemas.TypeUsageReport: {
		{"zero count", "count", 0, true},
		{"negative count", "count", -3, true},
		{"count is a string", "count", "1250", true},
	},
	schemas.TypeAgentPresence: {
		{"empty agent", "agent", "", true},
		{"zero interval", "interval_ns", 0, true},
	},
	schemas.TypeInvalidationConfirmed: {
		{"negative acked", "acked", -1, true},
		{"unknown kind", "kind", "expired", false},
	},
	schemas.TypeRevocationProgress: {
		{"unknown outcome", "outcome", "skipped", true},
		{"negative done", "done", -1, true},
		{"no item", "item", del{}, false},
	},
	schemas.TypeExternalChange: {
		{"unknown outcome", "outcome", "done", true},
		{"empty event id", "event_id", "", true},
		{"no resource", "resource_id", del{}, true},
	},
	schemas.TypeAuditRecord: {
		{"unknown outcome", "outcome", "ok", false},
		{"empty outcome", "outcome", "", true},
		{"empty actor", "actor", "", true},
		{"empty action", "action", "", true},
		{"detail value is a number", "detail.version", 7, true},
		{"detail is a list", "detail", []any{"version", "7"}, true},
	},
}

func applyMutation(t *testing.T, doc map[string]any, m mutation) map[string]any {
	t.Helper()
	var cur any = doc
	parts := strings.Split(m.path, ".")
	for i, p := range parts {
		last := i == len(parts)-1
		switch c := cur.(type) {
		case map[string]any:
			if last {
				if _, ok := m.value.(del); ok {
					delete(c, p)
				} else {
					c[p] = m.value
				}
				return doc
			}
			cur = c[p]
		case []any:
			n, err := strconv.Atoi(p)
			require.NoError(t, err)
			require.False(t, last, "cannot replace list items")
			cur = c[n]
		default:
			t.Fatalf("path %s does not lead to an object", m.path)
		}
	}
	return doc
}

func TestWrongExamplesFail(t *testing.T) {
	c := compiler(t)
	for _, ex := range examples() {
		file := schemaFor(t, ex.typ)
		sch, err := c.Compile(schemas.SchemaBaseURI + file)
		require.NoError(t, err)
		schemaDoc := readSchemaDoc(t, file).(map[string]any)
		for _, m := range mutations(t, ex.typ, schemaDoc) {
			var doc map[string]any
			require.NoError(t, json.Unmarshal(mustJSON(t, ex.v), &doc))
			if !applicable(doc, m) {
				continue
			}
			t.Run(ex.name+"/"+m.name, func(t *testing.T) {
				b := mustJSON(t, applyMutation(t, doc, m))
				require.Error(t, sch.Validate(instance(t, b)), "schema accepted %s", b)
				if m.goRejects {
					err := decodePayload(ex.typ, b)
					require.Error(t, err, "DecodeData accepted %s", b)
					require.ErrorIs(t, err, schemas.ErrMalformed)
				}
			})
		}
	}
}

// applicable says whether m means something for doc: the parent of its
// path exists, and a field to delete is there.
func applicable(doc map[string]any, m mutation) bool {
	parts := strings.Split(m.path, ".")
	var cur any = doc
	for _, p := range parts[:len(parts)-1] {
		switch c := cur.(type) {
		case map[string]any:
			cur = c[p]
		case []any:
			n, err := strconv.Atoi(p)
			if err != nil || n >= len(c) {
				return false
			}
			cur = c[n]
		default:
			return false
		}
	}
	parent, ok := cur.(map[string]any)
	if !ok {
		return false
	}
	if _, isDel := m.value.(del); isDel {
		_, ok = parent[parts[len(parts)-1]]
	}
	return ok
}

// TestTypesHaveSchemas checks that every Type constant declared in the
// package has a schema, that every schema file is used, and that the
// envelope schema knows exactly those types.
func TestTypesHaveSchemas(t *testing.T) {
	types := typeConstants(t)
	require.NotEmpty(t, types)

	used := map[string]bool{schemas.CloudEventSchema: true}
	for name, typ := range types {
		file, ok := schemas.SchemaFor(typ)
		require.True(t, ok, "%s (%s) has no schema", name, typ)
		require.False(t, used[file], "%s shares a schema file", name)
		used[file] = true
		_, err := fs.Stat(schemas.SchemaFiles(), file)
		require.NoError(t, err, "schema file of %s", name)
	}
	files := schemaFileNames(t)
	for _, f := range files {
		require.True(t, used[f], "schema file %s is not used by any type", f)
		require.True(t, strings.HasSuffix(f, ".schema.json"), f)
		doc := readSchemaDoc(t, f).(map[string]any)
		require.Equal(t, schemas.SchemaBaseURI+f, doc["$id"], "$id of %s", f)
		require.Equal(t, "https://json-schema.org/draft/2020-12/schema", doc["$schema"], f)
		require.Equal(t, false, doc["additionalProperties"], "%s must be closed", f)
	}
	require.Len(t, files, len(used))

	_, ok := schemas.SchemaFor("rekey.unknown.v1")
	require.False(t, ok)

	env := readSchemaDoc(t, schemas.CloudEventSchema).(map[string]any)
	enum := env["properties"].(map[string]any)["type"].(map[string]any)["enum"].([]any)
	var enumTypes []string
	for _, e := range enum {
		enumTypes = append(enumTypes, e.(string))
	}
	require.ElementsMatch(t, slices.Collect(maps.Values(types)), enumTypes)

	var tableTypes []string
	for _, pt := range payloadTypes {
		tableTypes = append(tableTypes, pt.typ)
	}
	require.ElementsMatch(t, slices.Collect(maps.Values(types)), tableTypes, "payloadTypes in this test")
}

// typeConstants parses the package source (in schemas/, its own module) for
// its Type* string constants.
func typeConstants(t *testing.T) map[string]string {
	t.Helper()
	sources, err := filepath.Glob(filepath.Join("..", "..", "..", "schemas", "*.go"))
	require.NoError(t, err)
	fset := token.NewFileSet()
	out := map[string]string{}
	for _, src := range sources {
		if strings.HasSuffix(src, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, src, nil, 0)
		require.NoError(t, err)
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, name := range vs.Names {
					if !strings.HasPrefix(name.Name, "Type") || !name.IsExported() || i >= len(vs.Values) {
						continue
					}
					lit, ok := vs.Values[i].(*ast.BasicLit)
					require.True(t, ok && lit.Kind == token.STRING, "%s is not a string literal", name.Name)
					v, err := strconv.Unquote(lit.Value)
					require.NoError(t, err)
					out[name.Name] = v
				}
			}
		}
	}
	return out
}

// TestSchemasMatchGoTypes checks each payload schema against its Go type:
// the same property names, required = the fields that are always written,
// matching JSON types, date-time for times and IDPattern for IDs.
func TestSchemasMatchGoTypes(t *testing.T) {
	for _, pt := range payloadTypes {
		t.Run(pt.typ, func(t *testing.T) {
			doc := readSchemaDoc(t, schemaFor(t, pt.typ)).(map[string]any)
			checkObject(t, doc, doc, reflect.TypeOf(pt.new()).Elem(), "")
		})
	}
	t.Run("envelope", func(t *testing.T) {
		doc := readSchemaDoc(t, schemas.CloudEventSchema).(map[string]any)
		props, required := jsonFields(reflect.TypeFor[schemas.Event]())
		require.ElementsMatch(t, props, slices.Collect(maps.Keys(doc["properties"].(map[string]any))))
		require.ElementsMatch(t, required, doc["required"])
		require.Equal(t, schemas.IDPattern, doc["properties"].(map[string]any)["tenant"].(map[string]any)["pattern"])
	})
}

func jsonFields(typ reflect.Type) (names []string, required []any) {
	for f := range typ.Fields() {
		name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
		if !f.IsExported() || name == "-" {
			continue
		}
		names = append(names, name)
		if !strings.Contains(opts, "omitempty") {
			required = append(required, name)
		}
	}
	return names, required
}

func resolve(t *testing.T, root, sch map[string]any) map[string]any {
	t.Helper()
	ref, ok := sch["$ref"].(string)
	if !ok {
		return sch
	}
	name, ok := strings.CutPrefix(ref, "#/$defs/")
	require.True(t, ok, "unexpected $ref %s", ref)
	def, ok := root["$defs"].(map[string]any)[name].(map[string]any)
	require.True(t, ok, "missing $defs/%s", name)
	return def
}

func checkObject(t *testing.T, root, sch map[string]any, typ reflect.Type, path string) {
	t.Helper()
	sch = resolve(t, root, sch)
	require.Equal(t, "object", sch["type"], path)
	require.Equal(t, false, sch["additionalProperties"], "%s must not allow other properties", path)
	props := sch["properties"].(map[string]any)
	names, required := jsonFields(typ)
	require.ElementsMatch(t, names, slices.Collect(maps.Keys(props)), "properties of %s", path)
	require.ElementsMatch(t, required, sch["required"], "required properties of %s", path)
	for f := range typ.Fields() {
		name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
		p := props[name].(map[string]any)
		if name == "tenant" || name == "secret" {
			require.Equal(t, schemas.IDPattern, p["pattern"], "%s.%s", path, name)
		}
		checkValue(t, root, p, f.Type, strings.Contains(opts, "omitempty"), path+"."+name)
	}
}

func checkValue(t *testing.T, root, sch map[string]any, typ reflect.Type, omitempty bool, path string) {
	t.Helper()
	sch = resolve(t, root, sch)
	if typ == reflect.TypeFor[time.Time]() {
		require.Equal(t, "string", sch["type"], path)
		require.Equal(t, "date-time", sch["format"], path)
		return
	}
	switch typ.Kind() {
	case reflect.String:
		require.Equal(t, "string", sch["type"], path)
	case reflect.Bool:
		require.Equal(t, "boolean", sch["type"], path)
	case reflect.Int, reflect.Int32, reflect.Int64:
		require.Equal(t, "integer", sch["type"], path)
	case reflect.Float64:
		require.Equal(t, "number", sch["type"], path)
	case reflect.Slice:
		if omitempty {
			require.Equal(t, "array", sch["type"], path)
		} else {
			// encoding/json writes a nil slice as null.
			require.ElementsMatch(t, []any{"array", "null"}, sch["type"], path)
		}
		checkValue(t, root, sch["items"].(map[string]any), typ.Elem(), true, path+"[]")
	case reflect.Map:
		require.Equal(t, reflect.String, typ.Key().Kind(), path)
		require.True(t, omitempty, "%s: a nil map is written as null", path)
		require.Equal(t, "object", sch["type"], path)
		checkValue(t, root, sch["additionalProperties"].(map[string]any), typ.Elem(), true, path+"{}")
	case reflect.Struct:
		checkObject(t, root, sch, typ, path)
	default:
		t.Fatalf("%s: no check for Go type %s", path, typ)
	}
}

func TestNewEventValidatesAgainstEnvelopeSchema(t *testing.T) {
	sch := compile(t, schemas.CloudEventSchema)
	for _, ex := range examples() {
		t.Run(ex.name, func(t *testing.T) {
			tenant := reflect.ValueOf(ex.v).FieldByName("Tenant").String()
			subject := tenant
			if s := reflect.ValueOf(ex.v).FieldByName("Secret"); s.IsValid() && s.String() != "" {
				subject = schemas.Ref{Tenant: tenant, Secret: s.String()}.String()
			}
			e, err := schemas.NewEvent("rekey/test", ex.typ, tenant, subject, ex.v)
			require.NoError(t, err)
			b, err := e.Encode()
			require.NoError(t, err)
			require.NoError(t, sch.Validate(instance(t, b)), "%s", b)

			got, err := schemas.Decode(b)
			require.NoError(t, err)
			require.Equal(t, e, got)
			v := reflect.New(reflect.TypeOf(ex.v))
			require.NoError(t, got.DecodeData(ex.typ, v.Interface()))
			require.Equal(t, ex.v, v.Elem().Interface())
		})
	}
}

func TestEnvelopeSchemaChecksData(t *testing.T) {
	sch := compile(t, schemas.CloudEventSchema)
	good := schemas.Invalidation{Tenant: "acme", Secret: "openai-key", Kind: schemas.InvalidationRotated, RequestID: requestID, PublishedAt: t0}
	e, err := schemas.NewEvent("rekey/fanout", schemas.TypeInvalidation, "acme", "acme/openai-key", good)
	require.NoError(t, err)

	tests := []struct {
		name   string
		change func(e *schemas.Event)
	}{
		{"data of another type", func(e *schemas.Event) { e.Type = schemas.TypeUsageReport }},
		{"data with a bad tenant", func(e *schemas.Event) {
			e.Data = []byte(`{"tenant":"acme.prod","secret":"k","kind":"rotated","request_id":"r","published_at":"2025-06-01T09:30:00Z"}`)
		}},
		{"data carrying a value", func(e *schemas.Event) {
			e.Data = []byte(`{"tenant":"acme","secret":"k","kind":"rotated","request_id":"r","published_at":"2025-06-01T09:30:00Z","value":"sk-1"}`)
		}},
		{"unknown type", func(e *schemas.Event) { e.Type = "rekey.rotation.requested.v2" }},
		{"bad subject", func(e *schemas.Event) { e.Subject = "acme.openai-key" }},
		{"subject with three parts", func(e *schemas.Event) { e.Subject = "acme/openai-key/x" }},
		{"other content type", func(e *schemas.Event) { e.DataContentType = "text/plain" }},
		{"empty source", func(e *schemas.Event) { e.Source = "" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad := e
			tt.change(&bad)
			b, err := bad.Encode()
			require.NoError(t, err)
			require.Error(t, sch.Validate(instance(t, b)), "%s", b)
		})
	}
	t.Run("tenant-wide subject", func(t *testing.T) {
		ok := e
		ok.Subject = "acme"
		require.NoError(t, sch.Validate(instance(t, mustJSON(t, ok))))
	})
}

func TestDecodeRejectsMalformed(t *testing.T) {
	sch := compile(t, schemas.CloudEventSchema)
	valid := map[string]any{
		"specversion": "1.0", "id": requestID, "source": "rekey/triggers/cron",
		"type": schemas.TypeRevocationStarted, "time": "2025-06-01T09:30:00Z", "subject": "acme",
		"datacontenttype": "application/json", "tenant": "acme",
		"data": map[string]any{"tenant": "acme", "request_id": requestID, "reason": "r",
			"trigger": map[string]any{"kind": "cli"}, "started_at": "2025-06-01T09:30:00Z"},
	}
	b := mustJSON(t, valid)
	require.NoError(t, sch.Validate(instance(t, b)), "the base case is valid")
	_, err := schemas.Decode(b)
	require.NoError(t, err)

	with := func(k string, v any) []byte {
		m := maps.Clone(valid)
		if _, ok := v.(del); ok {
			delete(m, k)
		} else {
			m[k] = v
		}
		return mustJSON(t, m)
	}
	tests := []struct {
		name      string
		in        []byte
		invalidID bool
	}{
		{"empty input", []byte{}, false},
		{"not JSON", []byte("rekey.rotate.acme.key"), false},
		{"truncated", b[:len(b)/2], false},
		{"null", []byte("null"), false},
		{"an array", []byte(`[` + string(b) + `]`), false},
		{"a string", []byte(`"1.0"`), false},
		{"bad specversion", with("specversion", "0.3"), false},
		{"specversion as a number", with("specversion", 1.0), false},
		{"missing specversion", with("specversion", del{}), false},
		{"missing id", with("id", del{}), false},
		{"empty id", with("id", ""), false},
		{"missing source", with("source", del{}), false},
		{"missing type", with("type", del{}), false},
		{"missing data", with("data", del{}), false},
		{"time not a date", with("time", "now"), false},
		{"id as a number", with("id", 7), false},
		{"missing tenant", with("tenant", del{}), true},
		{"upper-case tenant", with("tenant", "Acme"), true},
		{"tenant with a dot", with("tenant", "acme.prod"), true},
		{"tenant with a star", with("tenant", "*"), true},
		{"tenant with a gt", with("tenant", "acme>"), true},
		{"tenant of 64 chars", with("tenant", strings.Repeat("t", 64)), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := schemas.Decode(tt.in)
			require.Error(t, err)
			require.ErrorIs(t, err, schemas.ErrMalformed)
			if tt.invalidID {
				require.ErrorIs(t, err, schemas.ErrInvalidID)
			}
			if v, err := jsonschema.UnmarshalJSON(bytes.NewReader(tt.in)); err == nil {
				require.Error(t, sch.Validate(v), "the schema must refuse it too")
			}
		})
	}
}

func TestDecodeData(t *testing.T) {
	inv := schemas.Invalidation{Tenant: "acme", Secret: "openai-key", Kind: schemas.InvalidationRotated, Version: "7", RequestID: requestID, PublishedAt: t0}
	e, err := schemas.NewEvent("rekey/fanout", schemas.TypeInvalidation, "acme", "acme/openai-key", inv)
	require.NoError(t, err)

	t.Run("same type", func(t *testing.T) {
		var got schemas.Invalidation
		require.NoError(t, e.DecodeData(schemas.TypeInvalidation, &got))
		require.Equal(t, inv, got)
	})
	t.Run("other type", func(t *testing.T) {
		var got schemas.RotationRequested
		err := e.DecodeData(schemas.TypeRotationRequested, &got)
		require.ErrorIs(t, err, schemas.ErrMalformed)
		require.Contains(t, err.Error(), e.ID)
	})
	tests := []struct {
		name      string
		data      string
		invalidID bool
	}{
		{"not an object", `"acme"`, false},
		{"wrong field type", `{"tenant":"acme","secret":"k","kind":"rotated","request_id":5}`, false},
		{"null", `null`, true},
		{"bad tenant", `{"tenant":"acme.prod","secret":"k","kind":"rotated"}`, true},
		{"bad secret", `{"tenant":"acme","secret":"k>","kind":"rotated"}`, true},
		{"rotated without secret", `{"tenant":"acme","kind":"rotated"}`, true},
		{"bad kind", `{"tenant":"acme","kind":"gone"}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad := e
			bad.Data = json.RawMessage(tt.data)
			err := bad.DecodeData(schemas.TypeInvalidation, new(schemas.Invalidation))
			require.ErrorIs(t, err, schemas.ErrMalformed)
			if tt.invalidID {
				require.ErrorIs(t, err, schemas.ErrInvalidID)
			}
		})
	}
}

func TestNewEvent(t *testing.T) {
	before := time.Now().UTC()
	e, err := schemas.NewEvent("rekey/triggers/siem", schemas.TypeRotationRequested, "acme", "acme/openai-key",
		schemas.RotationRequested{Tenant: "acme", Secret: "openai-key", Trigger: schemas.Trigger{Kind: schemas.TriggerSIEM}})
	require.NoError(t, err)
	require.Equal(t, schemas.SpecVersion, e.SpecVersion)
	require.Len(t, e.ID, 26)
	require.Equal(t, "application/json", e.DataContentType)
	require.Equal(t, time.UTC, e.Time.Location())
	require.False(t, e.Time.Before(before.Truncate(time.Millisecond)))
	require.NoError(t, e.Validate())

	other, err := schemas.NewEvent("s", schemas.TypeRotationRequested, "acme", "acme/openai-key", struct{}{})
	require.NoError(t, err)
	require.NotEqual(t, e.ID, other.ID)

	_, err = schemas.NewEvent("s", schemas.TypeRotationRequested, "acme", "", make(chan int))
	require.Error(t, err)
	require.Contains(t, err.Error(), schemas.TypeRotationRequested)

	withID := e.WithID("siem-datadog-8c1f0e2a")
	require.Equal(t, "siem-datadog-8c1f0e2a", withID.ID)
	require.NotEqual(t, e.ID, withID.ID, "WithID returns a copy")
	withID.ID = e.ID
	require.Equal(t, e, withID)
}
