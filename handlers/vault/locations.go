package vault

// KVLocation is where a kind kv secret lives in Vault, as the backend
// fills its templates: the KV v2 mount (no slashes around it) and the
// path under <mount>/data/, in Namespace ("" without namespaces).
type KVLocation struct {
	Tenant, Secret, Namespace, Mount, Path string
}

// KVLocations returns the location of every kind kv secret of c.Secrets
// (ParseConfig fills them), for the Vault events trigger, which maps
// the paths Vault's events name back to tenant/secret with them (a
// trigger does not import the backend: the daemon hands them over).
// Static roles are left out: only rekey writes their KV record.
func (c Config) KVLocations() ([]KVLocation, error) {
	c = c.Defaults()
	out := make([]KVLocation, 0, len(c.Secrets))
	for _, ref := range c.Secrets {
		loc, err := c.locate(ref)
		if err != nil {
			return nil, err
		}
		if loc.kind != KindKV {
			continue
		}
		out = append(out, KVLocation{Tenant: ref.Tenant, Secret: ref.Secret, Namespace: loc.namespace, Mount: loc.mount, Path: loc.path})
	}
	return out, nil
}

// StagedSegment is the path segment under a secret's path where rekey
// stages versions: writes below it are rekey's own.
const StagedSegment = stagedSegment

// Keys rekey records in a secret's custom_metadata when it promotes a
// version: the rekey version id and the KV version it wrote. A KV version
// whose data carries rekey_version and that custom_metadata names (or that
// custom_metadata does not name yet, the bookkeeping following the write)
// is rekey's own write.
const (
	KeyVersion   = keyVersion
	KeyKVVersion = "rekey_kv_version"
)
