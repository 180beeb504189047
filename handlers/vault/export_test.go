package vault

// Logical is the narrow Vault API interface, for tests that put a wrapper
// in front of the real client.
type Logical = logical

// WrapAPI makes every Vault call of b go through wrap.
func WrapAPI(b *Backend, wrap func(ns string, lg Logical) Logical) {
	orig := b.api
	b.api = func(ns string) logical { return wrap(ns, orig(ns)) }
}
