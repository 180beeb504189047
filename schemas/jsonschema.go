package schemas

import (
	"embed"
	"io/fs"
)

// JSON Schemas (draft 2020-12) of the envelope and of every payload, for
// producers and consumers that do not use this package. Each file's $id is
// SchemaBaseURI followed by its name, and the envelope schema refers to the
// payload schemas by those names, so a validator that is given every file of
// SchemaFiles checks a whole event, data included.

//go:embed jsonschema/*.json
var schemaFiles embed.FS

// SchemaBaseURI is the base of every schema's $id.
const SchemaBaseURI = "https://github.com/rekey-dev/rekey/raw/main/schemas/jsonschema/"

// CloudEventSchema is the file name of the envelope's schema.
const CloudEventSchema = "cloudevent.schema.json"

var schemaByType = map[string]string{
	TypeRotationRequested:     "rotation_requested.schema.json",
	TypeRotationCompleted:     "rotation_completed.schema.json",
	TypeRotationFailed:        "rotation_failed.schema.json",
	TypeRevocationRequested:   "revocation_requested.schema.json",
	TypeRevocationStarted:     "revocation_started.schema.json",
	TypeRevocationCompleted:   "revocation_completed.schema.json",
	TypeTenantRestored:        "tenant_restored.schema.json",
	TypeInvalidation:          "invalidation.schema.json",
	TypeInvalidationAck:       "invalidation_ack.schema.json",
	TypeUsageReport:           "usage_report.schema.json",
	TypeAuditRecord:           "audit_record.schema.json",
	TypeAgentPresence:         "agent_presence.schema.json",
	TypeInvalidationConfirmed: "invalidation_confirmed.schema.json",
	TypeExternalChange:        "external_change.schema.json",
	TypeRevocationProgress:    "revocation_progress.schema.json",
	TypeLeakReport:            "leak_report.schema.json",
}

// SchemaFiles returns the schema files, at the root of the returned FS
// (CloudEventSchema, "rotation_requested.schema.json", ...).
func SchemaFiles() fs.FS {
	sub, err := fs.Sub(schemaFiles, "jsonschema")
	if err != nil {
		panic("schemas: embedded jsonschema directory: " + err.Error()) // unreachable: the path is a constant
	}
	return sub
}

// SchemaFor returns the name, in SchemaFiles, of the schema of the data of
// events of type eventType (one of the Type constants).
func SchemaFor(eventType string) (file string, ok bool) {
	file, ok = schemaByType[eventType]
	return file, ok
}
