package vault

import (
	"fmt"
	"slices"
	"strings"
)

// Policy returns the HCL policy for the agents of tenant: read on the live
// path of each of the tenant's kv secrets (not on their staging entries),
// on the credentials of its static roles and of its dynamic roles (names
// starting with its role prefix), and renewal of leases. Nothing of
// another tenant matches, because the configuration check refuses
// templates under which two tenants' paths or role prefixes meet.
//
// With namespace_template set, install the policy in the tenant's
// namespace (paths are relative to it). rekeyctl vault-policy <tenant>
// prints it.
func (c Config) Policy(tenant string) string {
	c = c.Defaults()
	var rules []string
	rule := func(path string, caps ...string) {
		rules = append(rules, fmt.Sprintf("path %q {\n  capabilities = [%s]\n}\n", path, quoteAll(caps)))
	}
	for _, ref := range c.Secrets {
		if ref.Tenant != tenant {
			continue
		}
		loc, err := c.locate(ref)
		if err != nil {
			continue // refused by Validate at start
		}
		switch loc.kind {
		case KindKV:
			rule(loc.dataPath(), "read")
			rule(loc.metadataPath(), "read")
		case KindStaticRole:
			rule(loc.dbMount+"/static-creds/"+loc.role, "read")
		}
	}
	rule(c.fill(c.DatabaseMount, tenant, "")+"/creds/"+c.rolePrefix(tenant)+"*", "read")
	rule("sys/leases/renew", "update")
	slices.Sort(rules)
	rules = slices.Compact(rules)
	head := fmt.Sprintf("# rekey: Vault policy for the agents of tenant %q: read-only, own paths only.\n", tenant)
	if ns := c.namespace(tenant); ns != "" {
		head += fmt.Sprintf("# Install it in namespace %q.\n", ns)
	}
	return head + strings.Join(rules, "\n")
}

// RekeyPolicy returns the HCL policy that rekey itself needs for the
// configured secrets and tenants: write the live path and the staging
// entries of each kv secret and the record of each static role, rotate
// the static roles, and list and revoke the leases of every tenant's
// dynamic roles (revoke-prefix and revoke-force need sudo).
func (c Config) RekeyPolicy() string {
	c = c.Defaults()
	var rules []string
	rule := func(path string, caps ...string) {
		rules = append(rules, fmt.Sprintf("path %q {\n  capabilities = [%s]\n}\n", path, quoteAll(caps)))
	}
	for _, ref := range c.Secrets {
		loc, err := c.locate(ref)
		if err != nil {
			continue
		}
		rule(loc.dataPath(), "create", "read", "update")
		rule(loc.metadataPath(), "read", "patch")
		rule(loc.stagedData("*"), "create", "read", "update")
		rule(loc.stagedList(), "list")
		rule(loc.stagedMetadata("*"), "read", "list", "delete")
		if loc.kind == KindStaticRole {
			rule(loc.dbMount+"/static-roles/"+loc.role, "read")
			rule(loc.dbMount+"/rotate-role/"+loc.role, "update")
		}
	}
	tenants := slices.Clone(c.Tenants)
	for _, ref := range c.Secrets {
		tenants = append(tenants, ref.Tenant)
	}
	slices.Sort(tenants)
	for _, t := range slices.Compact(tenants) {
		db := c.fill(c.DatabaseMount, t, "")
		rule(db+"/roles", "list")
		rule("sys/leases/lookup/"+db+"/creds/"+c.rolePrefix(t)+"*", "list", "sudo")
		rule("sys/leases/revoke-prefix/"+db+"/creds/"+c.rolePrefix(t)+"*", "update", "sudo")
		rule("sys/leases/revoke-force/"+db+"/creds/"+c.rolePrefix(t)+"*", "update", "sudo")
	}
	slices.Sort(rules)
	rules = slices.Compact(rules)
	head := "# rekey: Vault policy for rekey itself.\n"
	if c.NamespaceTemplate != "" {
		head += "# With namespace_template, install the rules of each tenant in its namespace.\n"
	}
	return head + strings.Join(rules, "\n")
}

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}
