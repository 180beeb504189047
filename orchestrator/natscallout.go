package orchestrator

import (
	"fmt"
	"strings"
)

// CalloutUser is the NATS user of rekey's auth callout responder
// (orchestrator/agentauth.Responder) on an external NATS.
const CalloutUser = "rekey-callout"

// CalloutPasswordEnv holds CalloutUser's password in NATSCalloutConfigBlock.
const CalloutPasswordEnv = "REKEY_CALLOUT_NATS_PASSWORD"

// NATSCalloutConfigBlock prints, in nats-server configuration syntax, the
// authorization block of an external NATS on which agents log in with a
// workload identity through rekey's auth callout: rekeyd's users as in
// NATSConfigBlock, the responder's user (it may only receive
// authorization requests and answer them), and the auth_callout section
// with issuer, the public account key (A...) whose seed signs the
// responder's replies. Every user listed bypasses the callout; any other
// login is decided by the responder. Passwords come from environment
// variables, so the block holds no secret.
func NATSCalloutConfigBlock(tenants []string, issuer string) string {
	var b strings.Builder
	b.WriteString("# rekey users and auth callout for nats-server.conf; set the environment variables before starting nats-server.\n")
	b.WriteString("# Agents log in with their workload identity token as the connection token; rekey's responder\n")
	b.WriteString("# (user " + CalloutUser + ") verifies it and grants a user scoped to the agent's tenant and instance.\n")
	b.WriteString("authorization {\n  users = [\n")
	serviceUsersBlock(&b, tenants)
	fmt.Fprintf(&b, "    { user: %q, password: $%s,\n", CalloutUser, CalloutPasswordEnv)
	b.WriteString("      permissions: {\n        publish: { deny: [\">\"] }\n")
	fmt.Fprintf(&b, "        subscribe: { allow: [%q] }\n", "$SYS.REQ.USER.AUTH")
	b.WriteString("        allow_responses: true\n      } }\n  ]\n")
	auth := []string{RekeydUser}
	for _, r := range Roles {
		auth = append(auth, RoleUser(r))
	}
	auth = append(auth, CalloutUser)
	fmt.Fprintf(&b, "  auth_callout {\n    issuer: %q\n    auth_users: %s\n  }\n}\n", issuer, quoteList(auth))
	return b.String()
}
