package orchestrator

import (
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/rekey-dev/rekey/schemas"
)

// Role is one of rekeyd's NATS connections. Each connects as its own user
// whose permissions hold only the subjects, streams and buckets that role
// needs, so that a component tricked into publishing somewhere (a reply
// subject, a subject built from input) cannot reach what another role
// owns: the fetch server, which answers agents, may publish to the
// tenants' agent inboxes and nothing else.
type Role string

// rekeyd's roles.
const (
	// RoleWorkers: the rotation and revocation workers and the backends.
	RoleWorkers Role = "workers"
	// RoleFanout: invalidations, agents' acks and presence, confirmations.
	RoleFanout Role = "fanout"
	// RoleFetch: the servers that answer agents' requests: the local
	// backend's fetch server and the resync server.
	RoleFetch Role = "fetch"
	// RoleAPI: the HTTP API and the triggers (cron, usage, siem, awsevents).
	RoleAPI Role = "api"
)

// Roles lists every role, in the order rekeyd connects them.
var Roles = []Role{RoleWorkers, RoleFanout, RoleFetch, RoleAPI}

// RoleUser is the NATS user of a role.
func RoleUser(r Role) string { return RekeydUser + "-" + string(r) }

// RoleInboxPrefix is where a role's replies (JetStream API answers,
// consumer deliveries) come. It starts "_INBOX__", which no tenant's
// agent inbox (schemas.AgentInboxPrefix) can: tenant IDs never start
// with '_'.
func RoleInboxPrefix(r Role) string { return "_INBOX__rekeyd_" + string(r) }

// grants is what one role may touch, from which its NATS permissions are
// built.
type grants struct {
	publish   []string // core subjects, stream subjects included
	subscribe []string
	consume   []string // streams whose consumers it creates and reads
	read      []string // streams it reads single messages of
	info      []string // streams whose info (size, counts) it reads
	buckets   map[string]bucketAccess
}

type bucketAccess int

const (
	bucketRead  bucketAccess = iota // get, watch, list keys
	bucketWrite                     // and put, create, update, delete
	bucketOwn                       // and create or update the bucket itself
)

// Buckets outside orchestrator that roles use. They are named here, not
// imported, because orchestrator imports no component; a test checks that
// the names agree.
const (
	bucketLocal       = "rekey_local"
	bucketSelfService = "rekey_selfservice"
	bucketCron        = "rekey_cron"
	bucketUsage       = "rekey_usage"
	bucketSIEMDedup   = "rekey_siem_dedup"
	bucketIdempotency = "rekey_idempotency"
	bucketAWSDedup    = "rekey_awsevents_dedup"
	bucketLeak        = "rekey_leak"
)

// RoleBuckets lists the buckets each role may use, for the test that
// compares them with the components' own constants.
func RoleBuckets() map[Role][]string {
	out := map[Role][]string{}
	for _, r := range Roles {
		g := roleGrants(r, nil)
		for b := range g.buckets {
			out[r] = append(out[r], b)
		}
		slices.Sort(out[r])
	}
	return out
}

func roleGrants(r Role, tenants []string) grants {
	switch r {
	case RoleWorkers:
		return grants{
			publish: []string{
				schemas.SubjectEventsAll, schemas.SubjectAuditAll,
			},
			// Delegated AWS rotations end on an external_change event.
			subscribe: []string{schemas.EventsSubject("*", schemas.KindExternalChange)},
			consume:   []string{schemas.StreamRotate, schemas.StreamRevoke},
			read:      []string{schemas.StreamRotate, schemas.StreamRevoke},
			buckets: map[string]bucketAccess{
				BucketStatus: bucketOwn, BucketTenants: bucketOwn, BucketLocks: bucketOwn,
				BucketFailures: bucketOwn, bucketLocal: bucketOwn,
			},
		}
	case RoleFanout:
		return grants{
			publish: []string{
				schemas.SubjectInvalidateAll, schemas.SubjectAuditAll,
				schemas.EventsSubject("*", schemas.KindInvalidationConfirmed),
			},
			subscribe: []string{
				schemas.SubjectAckAll, schemas.SubjectPresenceAll, schemas.SubjectInvalidateAll,
				schemas.EventsSubject("*", schemas.KindInvalidationConfirmed),
			},
			consume: []string{schemas.StreamEvents},
			read:    []string{schemas.StreamInvalidate, schemas.StreamEvents},
			buckets: map[string]bucketAccess{
				BucketLeases: bucketOwn, BucketTenants: bucketRead, BucketStatus: bucketRead,
			},
		}
	case RoleFetch:
		g := grants{
			// Fetches and resyncs (the last invalidation of a subject).
			subscribe: []string{schemas.SubjectFetchAll, schemas.SubjectResyncAll},
			read:      []string{schemas.StreamInvalidate},
			buckets:   map[string]bucketAccess{bucketLocal: bucketRead, BucketTenants: bucketRead},
		}
		for _, t := range tenants {
			g.publish = append(g.publish, schemas.AgentInboxPrefix(t)+".>")
		}
		return g
	case RoleAPI:
		g := grants{
			publish: []string{
				schemas.SubjectRotateAll, schemas.SubjectRevokeAll, schemas.SubjectAuditAll,
				// awsevents: external_change events of AWS-side rotations.
				schemas.EventsSubject("*", schemas.KindExternalChange),
				// leak: a canary fetched by an instance not allowed.
				schemas.SubjectLeakAll,
			},
			consume: []string{schemas.StreamEvents},
			read:    []string{schemas.StreamRotate, schemas.StreamRevoke, schemas.StreamEvents},
			// The storage monitor reads every stream's size.
			info: []string{schemas.StreamRotate, schemas.StreamRevoke,
				schemas.StreamInvalidate, schemas.StreamEvents, schemas.StreamAudit},
			buckets: map[string]bucketAccess{
				BucketStatus: bucketRead, BucketTenants: bucketRead, BucketLocks: bucketRead,
				bucketLocal: bucketRead, BucketLeases: bucketOwn,
				bucketSelfService: bucketOwn, bucketCron: bucketOwn, bucketUsage: bucketOwn,
				bucketSIEMDedup: bucketOwn, bucketIdempotency: bucketOwn, bucketAWSDedup: bucketOwn,
				bucketLeak: bucketOwn,
			},
		}
		// The use-count trigger: each tenant's use-report stream; the
		// leak trigger: each tenant's leak-report stream.
		for _, t := range tenants {
			g.consume = append(g.consume, schemas.UsageStream(t), schemas.LeakStream(t))
		}
		return g
	}
	return grants{}
}

// RolePermissions are the NATS permissions of a role's user. tenants are
// the configured tenants (the fetch server may publish to their agents'
// inboxes only).
func RolePermissions(r Role, tenants []string) *server.Permissions {
	g := roleGrants(r, tenants)
	pub := append([]string{"$JS.API.INFO"}, g.publish...)
	sub := append([]string{RoleInboxPrefix(r) + ".>"}, g.subscribe...)
	streamRead := func(s string) {
		pub = append(pub, "$JS.API.STREAM.INFO."+s, "$JS.API.STREAM.MSG.GET."+s,
			"$JS.API.DIRECT.GET."+s, "$JS.API.DIRECT.GET."+s+".>")
	}
	streamConsume := func(s string) {
		pub = append(pub, "$JS.API.STREAM.INFO."+s,
			"$JS.API.CONSUMER.CREATE."+s, "$JS.API.CONSUMER.CREATE."+s+".>",
			"$JS.API.CONSUMER.DURABLE.CREATE."+s+".*",
			"$JS.API.CONSUMER.INFO."+s+".*", "$JS.API.CONSUMER.MSG.NEXT."+s+".*",
			"$JS.API.CONSUMER.DELETE."+s+".*", "$JS.ACK."+s+".>")
	}
	for _, s := range g.read {
		streamRead(s)
	}
	for _, s := range g.consume {
		streamConsume(s)
	}
	for _, s := range g.info {
		pub = append(pub, "$JS.API.STREAM.INFO."+s)
	}
	for _, b := range sortedKeys(g.buckets) {
		s := "KV_" + b
		streamRead(s)
		streamConsume(s) // watches and key listings are ordered consumers
		if g.buckets[b] >= bucketWrite {
			pub = append(pub, "$KV."+b+".>")
		}
		if g.buckets[b] >= bucketOwn {
			pub = append(pub, "$JS.API.STREAM.CREATE."+s, "$JS.API.STREAM.UPDATE."+s)
		}
	}
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: dedupe(pub)},
		Subscribe: &server.SubjectPermission{Allow: dedupe(sub)},
	}
}

// dedupe drops repeats, keeping the first of each.
func dedupe(list []string) []string {
	seen := make(map[string]bool, len(list))
	return slices.DeleteFunc(list, func(s string) bool {
		dup := seen[s]
		seen[s] = true
		return dup
	})
}

// RolePasswordEnv is the environment variable from which rekeyd reads a
// role's password on an external NATS (see NATSConfigBlock).
func RolePasswordEnv(r Role) string {
	return "REKEYD_" + strings.ToUpper(string(r)) + "_NATS_PASSWORD"
}

func permissionBlock(b *strings.Builder, p *server.Permissions) {
	fmt.Fprintf(b, "      permissions: {\n")
	fmt.Fprintf(b, "        publish: { allow: %s }\n", quoteList(p.Publish.Allow))
	fmt.Fprintf(b, "        subscribe: { allow: %s }\n      } }\n", quoteList(p.Subscribe.Allow))
}
