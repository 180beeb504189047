package schemas_test

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/goccy/go-yaml"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/orchestrator/agentauth"
	"github.com/rekey-dev/rekey/schemas"
)

// asyncAPIPath is the agent protocol document, next to the schema files it
// refers to.
var asyncAPIPath = filepath.Join("..", "..", "..", "schemas", "asyncapi.yaml")

// channelSubjects builds each channel's address from the subject function
// its x-go-subject names, given the address's parameters in order.
var channelSubjects = map[string]struct {
	params int
	build  func(p []string) string
}{
	"InvalidateSubject": {2, func(p []string) string { return schemas.InvalidateSubject(p[0], p[1]) }},
	"ResyncSubject":     {2, func(p []string) string { return schemas.ResyncSubject(p[0], p[1]) }},
	"FetchSubject":      {2, func(p []string) string { return schemas.FetchSubject(p[0], p[1]) }},
	"AckSubject":        {3, func(p []string) string { return schemas.AckSubject(p[0], p[1], p[2]) }},
	"PresenceSubject":   {2, func(p []string) string { return schemas.PresenceSubject(p[0], p[1]) }},
	"UsedSubject":       {3, func(p []string) string { return schemas.UsedSubject(p[0], p[1], p[2]) }},
	"LeakSubject":       {2, func(p []string) string { return schemas.LeakSubject(p[0], p[1]) }},
	// Replies: the tenant's inbox prefix, then tokens the agent chooses.
	"AgentInboxPrefix": {2, func(p []string) string { return schemas.AgentInboxPrefix(p[0]) + "." + p[1] }},
}

// wantMessages is what the agent sends and receives (fanout/agent): each
// message of the document is either a CloudEvent of a type (event), a Go
// struct encoded as JSON (goType), or empty; msgID says whether the agent
// sets Nats-Msg-Id.
var wantMessages = map[string]struct {
	event  string
	goType reflect.Type
	msgID  bool
}{
	"invalidation":    {event: schemas.TypeInvalidation},
	"resyncRequest":   {},
	"resyncReply":     {event: schemas.TypeInvalidation},
	"fetchRequest":    {goType: reflect.TypeFor[schemas.FetchRequest]()},
	"fetchReply":      {goType: reflect.TypeFor[schemas.FetchResponse]()},
	"invalidationAck": {event: schemas.TypeInvalidationAck},
	"agentPresence":   {event: schemas.TypeAgentPresence},
	"usageReport":     {event: schemas.TypeUsageReport, msgID: true},
	"leakReport":      {event: schemas.TypeLeakReport, msgID: true},
}

// TestAsyncAPI checks schemas/asyncapi.yaml against the code: addresses
// against the subject functions, channels and actions against the agents'
// NATS permissions, payloads against the schema files and type constants.
func TestAsyncAPI(t *testing.T) {
	doc := loadAsyncAPI(t)
	errs := checkAsyncAPI(doc)
	require.Empty(t, errs, "schemas/asyncapi.yaml disagrees with the code:\n%s", strings.Join(errs, "\n"))
}

// TestAsyncAPIDrift: a document that drifted from the code fails the check.
func TestAsyncAPIDrift(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(doc map[string]any)
		want   string
	}{
		{"leak channel removed", func(d map[string]any) {
			delete(obj(d["channels"]), "leak")
			delete(obj(d["operations"]), "sendLeak")
		}, "publish permission rekey.leak.acme.*"},
		{"ack received instead of sent", func(d map[string]any) {
			obj(obj(d["operations"])["sendAck"])["action"] = "receive"
		}, "channel ack"},
		{"presence address wrong", func(d map[string]any) {
			obj(obj(d["channels"])["presence"])["address"] = "rekey.heartbeat.{tenant}.{instance}"
		}, "PresenceSubject"},
		{"extra channel the agent may not use", func(d map[string]any) {
			obj(d["channels"])["rotate"] = map[string]any{"address": "rekey.rotate.{tenant}.{secret}", "x-go-subject": "RotateSubject"}
		}, "rotate"},
		{"invalidation payload of another type", func(d map[string]any) {
			data := obj(obj(slice(obj(obj(msgObj(d, "invalidation")["payload"])["schema"])["allOf"])[1])["properties"])["data"]
			obj(data)["$ref"] = "jsonschema/usage_report.schema.json"
		}, "invalidation"},
		{"schema file missing", func(d map[string]any) {
			data := obj(obj(slice(obj(obj(msgObj(d, "agentPresence")["payload"])["schema"])["allOf"])[1])["properties"])["data"]
			obj(data)["$ref"] = "jsonschema/agent_heartbeat.schema.json"
		}, "agent_heartbeat.schema.json"},
		{"Nats-Msg-Id header dropped", func(d map[string]any) {
			delete(msgObj(d, "usageReport"), "headers")
		}, "Nats-Msg-Id"},
		{"fetch reply field missing", func(d map[string]any) {
			delete(obj(obj(obj(obj(d["components"])["schemas"])["FetchResponse"])["properties"]), "version")
		}, "FetchResponse"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := loadAsyncAPI(t)
			tt.mutate(doc)
			errs := checkAsyncAPI(doc)
			require.NotEmpty(t, errs)
			require.Contains(t, strings.Join(errs, "\n"), tt.want)
		})
	}
}

func loadAsyncAPI(t *testing.T) map[string]any {
	t.Helper()
	b, err := os.ReadFile(asyncAPIPath)
	require.NoError(t, err)
	var doc map[string]any
	require.NoError(t, yaml.Unmarshal(b, &doc))
	return doc
}

// checkAsyncAPI returns every disagreement between doc and the code.
func checkAsyncAPI(doc map[string]any) []string {
	var errs []string
	fail := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }

	if v := doc["asyncapi"]; v != "3.0.0" {
		fail("asyncapi is %v, want 3.0.0", v)
	}

	// Every reference resolves: inside the document, or to a schema file
	// that package schemas embeds.
	walkRefs(doc, func(ref string) {
		if strings.HasPrefix(ref, "#") {
			if _, err := resolveRef(doc, ref); err != nil {
				fail("$ref %s: %v", ref, err)
			}
			return
		}
		file, ok := strings.CutPrefix(ref, "jsonschema/")
		if !ok {
			fail("$ref %s: not a file of schemas/jsonschema", ref)
			return
		}
		if _, err := fs.Stat(schemas.SchemaFiles(), file); err != nil {
			fail("$ref %s: %v", ref, err)
		}
	})

	// Addresses are what the subject functions build.
	channels := obj(doc["channels"])
	params := regexp.MustCompile(`\{([a-z]+)\}`)
	for _, name := range slices.Sorted(maps.Keys(channels)) {
		ch := obj(channels[name])
		addr, _ := ch["address"].(string)
		fn, _ := ch["x-go-subject"].(string)
		sub, ok := channelSubjects[fn]
		if !ok {
			fail("channel %s: x-go-subject %q is not a subject function of an agent's channel", name, fn)
			continue
		}
		var names, placeholders []string
		for _, m := range params.FindAllStringSubmatch(addr, -1) {
			names = append(names, m[1])
			placeholders = append(placeholders, m[0])
		}
		if len(names) != sub.params {
			fail("channel %s: address %q has %d parameters, %s takes %d", name, addr, len(names), fn, sub.params)
			continue
		}
		if want := sub.build(placeholders); addr != want {
			fail("channel %s: address %q, %s builds %q", name, addr, fn, want)
		}
		if names[0] != "tenant" {
			fail("channel %s: first parameter %q, want tenant", name, names[0])
		}
		declared := slices.Sorted(maps.Keys(obj(ch["parameters"])))
		if slices.Sort(names); !slices.Equal(declared, slices.Compact(names)) {
			fail("channel %s: parameters %v declared, address uses %v", name, declared, names)
		}
	}

	// Directions: what the agent sends, and what it receives (its
	// subscriptions and the replies to its requests).
	send, receive := map[string]bool{}, map[string]bool{}
	channelOf := func(op string, v any) string {
		ref, _ := obj(v)["$ref"].(string)
		ch, ok := strings.CutPrefix(ref, "#/channels/")
		if !ok || channels[ch] == nil {
			fail("operation %s: channel %q is not a channel of the document", op, ref)
			return ""
		}
		return ch
	}
	checkMessages := func(op, ch string, v any) {
		for _, m := range slice(v) {
			ref, _ := obj(m)["$ref"].(string)
			if !strings.HasPrefix(ref, "#/channels/"+ch+"/messages/") {
				fail("operation %s: message %q is not a message of channel %s", op, ref, ch)
			}
		}
	}
	operations := obj(doc["operations"])
	for _, name := range slices.Sorted(maps.Keys(operations)) {
		op := obj(operations[name])
		ch := channelOf(name, op["channel"])
		if ch == "" {
			continue
		}
		checkMessages(name, ch, op["messages"])
		switch op["action"] {
		case "send":
			send[ch] = true
		case "receive":
			receive[ch] = true
		default:
			fail("operation %s: action %v", name, op["action"])
		}
		if reply := obj(op["reply"]); reply != nil {
			if op["action"] != "send" {
				fail("operation %s: a reply to a receive operation: agents answer no request", name)
			}
			if rc := channelOf(name, reply["channel"]); rc != "" {
				checkMessages(name, rc, reply["messages"])
				receive[rc] = true
			}
		}
	}

	// Channels and actions are what the agents' permissions allow: each
	// publish permission is a channel the agent sends on, each subscribe
	// permission one it receives on, and nothing else.
	const tenant = "acme"
	perms := orchestrator.AgentPermissions(tenant)
	checkDirection := func(verb string, allow []string, dir, other map[string]bool) {
		covered := map[string]bool{}
		for _, p := range allow {
			var matched []string
			for _, name := range slices.Sorted(maps.Keys(channels)) {
				star, tail := wildcards(obj(channels[name])["address"], tenant)
				if p == star || p == tail {
					matched = append(matched, name)
				}
			}
			switch {
			case len(matched) != 1:
				fail("%s permission %s: channels %v, want exactly one", verb, p, matched)
			case !dir[matched[0]]:
				fail("%s permission %s: channel %s has no operation of that direction", verb, p, matched[0])
			default:
				covered[matched[0]] = true
			}
		}
		for ch := range dir {
			if !covered[ch] {
				fail("channel %s: the agent %ss on it, but no %s permission allows it", ch, verb, verb)
			}
			if other[ch] {
				fail("channel %s: both sent and received", ch)
			}
			// A concrete subject of the agent's tenant is allowed, one of
			// another tenant is not.
			for _, tn := range []string{tenant, "globex"} {
				subj := concrete(obj(channels[ch])["address"], tn)
				if allowed := anyMatch(allow, subj); allowed != (tn == tenant) {
					fail("channel %s: %s %s allowed: %v", ch, verb, subj, allowed)
				}
			}
		}
	}
	checkDirection("publish", perms.Publish.Allow, send, receive)
	checkDirection("subscribe", perms.Subscribe.Allow, receive, send)
	// With a per-agent identity, the same channels under the agent's own
	// instance name (and inbox) only.
	inst := agentauth.InstancePermissions(tenant, "planner-1")
	for _, dir := range []struct {
		verb  string
		chans map[string]bool
		allow []string
	}{{"publish", send, inst.Publish.Allow}, {"subscribe", receive, inst.Subscribe.Allow}} {
		for ch := range dir.chans {
			addr, _ := obj(channels[ch])["address"].(string)
			own := strings.NewReplacer("{instance}", "planner-1", "{inbox}", "planner-1.x1").Replace(addr)
			if !anyMatch(dir.allow, concrete(own, tenant)) {
				fail("channel %s: an agent with its own identity may not %s %s", ch, dir.verb, concrete(own, tenant))
			}
			other := strings.NewReplacer("{instance}", "planner-2", "{inbox}", "planner-2.x1").Replace(addr)
			if other != addr && anyMatch(dir.allow, concrete(other, tenant)) {
				fail("channel %s: an agent with its own identity may %s %s, another instance's", ch, dir.verb, concrete(other, tenant))
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(channels)) {
		if !send[name] && !receive[name] {
			fail("channel %s: no operation uses it", name)
		}
	}

	checkMessagesAgainstCode(doc, fail)
	return errs
}

// checkMessagesAgainstCode checks each message's payload: the CloudEvent
// envelope and data schema of its type, or the JSON fields of its Go type.
func checkMessagesAgainstCode(doc map[string]any, fail func(string, ...any)) {
	messages := obj(obj(doc["components"])["messages"])
	if got, want := slices.Sorted(maps.Keys(messages)), slices.Sorted(maps.Keys(wantMessages)); !slices.Equal(got, want) {
		fail("messages %v, the agent uses %v", got, want)
	}
	for name, want := range wantMessages {
		m := obj(messages[name])
		if m == nil {
			continue
		}
		headers, _ := resolveObj(doc, m["headers"])
		_, hasMsgID := obj(headers["properties"])[nats.MsgIdHdr]
		if hasMsgID != want.msgID {
			fail("message %s: %s header documented: %v, the agent sets it: %v", name, nats.MsgIdHdr, hasMsgID, want.msgID)
		}
		payload := obj(m["payload"])
		switch {
		case want.event != "":
			checkEventPayload(name, want.event, payload, fail)
		case want.goType != nil:
			schema, err := resolveObj(doc, payload)
			if err != nil {
				fail("message %s: payload: %v", name, err)
				continue
			}
			ref, _ := payload["$ref"].(string)
			got := slices.Sorted(maps.Keys(obj(schema["properties"])))
			fields, required := jsonFields(want.goType)
			if slices.Sort(fields); !slices.Equal(got, fields) {
				fail("message %s: payload %s has properties %v, %s has JSON fields %v", name, ref, got, want.goType, fields)
			}
			if !reflect.DeepEqual(slice(schema["required"]), required) {
				fail("message %s: payload %s requires %v, %s always encodes %v", name, ref, schema["required"], want.goType, required)
			}
		default:
			if s := obj(payload["schema"]); s["maxLength"] != uint64(0) {
				fail("message %s: the agent sends an empty body; payload %v", name, s)
			}
		}
	}
	codes := obj(obj(obj(obj(obj(doc["components"])["schemas"])["FetchResponse"])["properties"])["code"])["enum"]
	var got []string
	for _, c := range slice(codes) {
		got = append(got, fmt.Sprint(c))
	}
	slices.Sort(got)
	if want := []string{schemas.FetchInternal, schemas.FetchInvalid, schemas.FetchNotFound, schemas.FetchRevoked}; !slices.Equal(got, want) {
		fail("FetchResponse code enum %v, the fetch codes are %v", got, want)
	}
}

// checkEventPayload checks a CloudEvent payload: allOf the envelope's
// schema and {type: const, data: $ref}, where the data schema is the one
// package schemas gives for the type.
func checkEventPayload(name, event string, payload map[string]any, fail func(string, ...any)) {
	if f := payload["schemaFormat"]; f != "application/schema+json;version=draft-2020-12" {
		fail("message %s: schemaFormat %v, the schema files are draft 2020-12", name, f)
	}
	all := slice(obj(payload["schema"])["allOf"])
	if len(all) != 2 {
		fail("message %s: payload is not allOf [envelope, {type, data}]", name)
		return
	}
	if ref := obj(all[0])["$ref"]; ref != "jsonschema/"+schemas.CloudEventSchema {
		fail("message %s: envelope $ref %v, want jsonschema/%s", name, ref, schemas.CloudEventSchema)
	}
	props := obj(obj(all[1])["properties"])
	if typ := obj(props["type"])["const"]; typ != event {
		fail("message %s: type %v, the agent's is %s", name, typ, event)
	}
	file, ok := schemas.SchemaFor(event)
	if !ok {
		fail("message %s: no schema for type %s", name, event)
		return
	}
	if ref := obj(props["data"])["$ref"]; ref != "jsonschema/"+file {
		fail("message %s: data $ref %v, the schema of %s is jsonschema/%s", name, ref, event, file)
	}
	b, err := fs.ReadFile(schemas.SchemaFiles(), file)
	if err != nil {
		fail("message %s: %v", name, err)
		return
	}
	var s struct {
		ID          string `json:"$id"`
		Description string `json:"description"`
	}
	if err := json.Unmarshal(b, &s); err != nil || s.ID != schemas.SchemaBaseURI+file || !regexp.MustCompile(`\(type `+regexp.QuoteMeta(event)+`[,)]`).MatchString(s.Description) {
		fail("message %s: %s is not the schema of %s (id %q, error %v)", name, file, event, s.ID, err)
	}
}

// wildcards returns the permission-like forms of a channel address for
// tenant: every other parameter a '*', and the last one a '>'.
func wildcards(address any, tenant string) (star, tail string) {
	addr, _ := address.(string)
	addr = strings.ReplaceAll(addr, "{tenant}", tenant)
	re := regexp.MustCompile(`\{[a-z]+\}`)
	star = re.ReplaceAllString(addr, "*")
	if loc := re.FindAllStringIndex(addr, -1); len(loc) > 0 && loc[len(loc)-1][1] == len(addr) {
		last := loc[len(loc)-1]
		tail = re.ReplaceAllString(addr[:last[0]], "*") + ">"
	}
	return star, tail
}

// concrete returns a subject of the channel for tenant, the other
// parameters set to sample tokens.
func concrete(address any, tenant string) string {
	addr, _ := address.(string)
	addr = strings.ReplaceAll(addr, "{tenant}", tenant)
	return regexp.MustCompile(`\{[a-z]+\}`).ReplaceAllString(addr, "x1")
}

func anyMatch(patterns []string, subject string) bool {
	return slices.ContainsFunc(patterns, func(p string) bool { return subjectMatches(p, subject) })
}

// walkRefs calls fn with every $ref of v.
func walkRefs(v any, fn func(string)) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if s, ok := e.(string); ok && k == "$ref" {
				fn(s)
				continue
			}
			walkRefs(e, fn)
		}
	case []any:
		for _, e := range v {
			walkRefs(e, fn)
		}
	}
}

// resolveRef follows a local $ref ("#/a/b"), and the $refs it leads to.
func resolveRef(doc map[string]any, ref string) (any, error) {
	for range 10 {
		path, ok := strings.CutPrefix(ref, "#/")
		if !ok {
			return nil, fmt.Errorf("%s is not a local reference", ref)
		}
		var v any = doc
		for _, k := range strings.Split(path, "/") {
			m := obj(v)
			if m[k] == nil {
				return nil, fmt.Errorf("%s: no %q", ref, k)
			}
			v = m[k]
		}
		next, ok := obj(v)["$ref"].(string)
		if !ok || !strings.HasPrefix(next, "#") {
			return v, nil
		}
		ref = next
	}
	return nil, fmt.Errorf("%s: too many references", ref)
}

// resolveObj returns v, or what it refers to if it is a local $ref.
func resolveObj(doc map[string]any, v any) (map[string]any, error) {
	ref, ok := obj(v)["$ref"].(string)
	if !ok {
		return obj(v), nil
	}
	r, err := resolveRef(doc, ref)
	return obj(r), err
}

func obj(v any) map[string]any { m, _ := v.(map[string]any); return m }
func slice(v any) []any        { s, _ := v.([]any); return s }

func msgObj(doc map[string]any, name string) map[string]any {
	return obj(obj(obj(doc["components"])["messages"])[name])
}
