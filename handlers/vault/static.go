package vault

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rekey-dev/rekey/handlers"
)

// roleInfo is what rekey reads of a static role: never its password.
type roleInfo struct {
	username     string
	lastRotation time.Time
}

// readRole reads <db>/static-roles/<role>. A missing role is a
// configuration error (ErrPermanent).
func (b *Backend) readRole(ctx context.Context, lg logical, loc location) (roleInfo, error) {
	path := loc.dbMount + "/static-roles/" + loc.role
	sec, err := lg.ReadWithContext(ctx, path)
	if err != nil {
		if errors.Is(classify("", err), handlers.ErrNotFound) {
			return roleInfo{}, fmt.Errorf("static role %s does not exist: %w", path, handlers.ErrPermanent)
		}
		return roleInfo{}, classify("read "+path, err)
	}
	if sec == nil || sec.Data == nil {
		return roleInfo{}, fmt.Errorf("static role %s does not exist: %w", path, handlers.ErrPermanent)
	}
	r := roleInfo{username: str(sec.Data["username"])}
	if s := str(sec.Data[keyRotation]); s != "" {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return roleInfo{}, fmt.Errorf("static role %s: last_vault_rotation %q: %w", path, s, err)
		}
		r.lastRotation = t
	}
	return r, nil
}

// currentStatic is the version of the role's current password: the rekey
// version that rotated it, or vault-<time> when Vault rotated it itself.
func (b *Backend) currentStatic(ctx context.Context, lg logical, loc location) (handlers.Version, error) {
	role, err := b.readRole(ctx, lg, loc)
	if err != nil {
		return handlers.Version{}, err
	}
	if role.lastRotation.IsZero() {
		return handlers.Version{}, fmt.Errorf("static role %s/%s was never rotated: %w", loc.dbMount, loc.role, handlers.ErrNotFound)
	}
	rec, err := readKV(ctx, lg, loc.dataPath())
	if err != nil {
		return handlers.Version{}, err
	}
	if rec.data != nil && str(rec.data[keyRole]) == loc.role {
		if t, err := time.Parse(time.RFC3339Nano, str(rec.data[keyRotation])); err == nil && t.Equal(role.lastRotation) {
			return handlers.Version{ID: str(rec.data[keyVersion]), Token: str(rec.data[keyRequest]), CreatedAt: role.lastRotation}, nil
		}
	}
	return handlers.Version{ID: "vault-" + formatTime(role.lastRotation), CreatedAt: role.lastRotation}, nil
}

// finishStatic rotates the role unless it was rotated after Create (a
// Finish that crashed after rotate-role, or Vault's own schedule: either
// way the password changed after the request), then records the rotation
// in the KV record with check-and-set.
func (b *Backend) finishStatic(ctx context.Context, lg logical, loc location, ref handlers.SecretRef, id string, rec, intent kvEntry) (int, error) {
	var basedOn time.Time
	if s := str(intent.data[keyBasedOn]); s != "" {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return 0, fmt.Errorf("intent of version %s: %s %q: %w", id, keyBasedOn, s, handlers.ErrPermanent)
		}
		basedOn = t
	}
	role, err := b.readRole(ctx, lg, loc)
	if err != nil {
		return 0, err
	}
	if role.lastRotation.After(basedOn) {
		b.log.InfoContext(ctx, "static role was rotated after create; not rotating it again", "tenant", ref.Tenant, "secret", ref.Secret, "version", id, "role", loc.role)
	} else {
		path := loc.dbMount + "/rotate-role/" + loc.role
		if _, err := lg.WriteWithContext(ctx, path, nil); err != nil {
			return 0, classify("write "+path, err)
		}
		role, err = b.readRole(ctx, lg, loc)
		if err != nil {
			return 0, err
		}
		if !role.lastRotation.After(basedOn) {
			return 0, fmt.Errorf("rotate-role %s/%s returned but last_vault_rotation did not move", loc.dbMount, loc.role)
		}
	}
	data := map[string]any{
		keyVersion: id, keyRequest: str(intent.data[keyRequest]), keyTenant: ref.Tenant,
		keyKind: KindStaticRole, keyRole: loc.role, keyRotation: formatTime(role.lastRotation),
	}
	version, _, err := writeKV(ctx, lg, loc.dataPath(), data, rec.version)
	if err != nil {
		// The password is rotated already; a retried Finish sees that
		// last_vault_rotation moved and only writes this record.
		return 0, fmt.Errorf("record rotation of static role %s: %w", loc.role, err)
	}
	return version, nil
}

// StaticCredentials are a static role's current username and password.
type StaticCredentials struct {
	Username     string
	Password     string
	LastRotation time.Time
}

// StaticCredentials reads <db>/static-creds/<role> of a static-role secret.
// For tests and tools; agents read it with their own token.
func (b *Backend) StaticCredentials(ctx context.Context, ref handlers.SecretRef) (StaticCredentials, error) {
	loc, lg, err := b.resolve(ref)
	if err != nil {
		return StaticCredentials{}, fmt.Errorf("vault: static credentials %s: %w", ref, err)
	}
	if loc.kind != KindStaticRole {
		return StaticCredentials{}, fmt.Errorf("vault: static credentials %s: kind is %s: %w", ref, loc.kind, handlers.ErrPermanent)
	}
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	path := loc.dbMount + "/static-creds/" + loc.role
	sec, err := lg.ReadWithContext(ctx, path)
	if err != nil {
		return StaticCredentials{}, fmt.Errorf("vault: static credentials %s: %w", ref, classify("read "+path, err))
	}
	if sec == nil || sec.Data == nil {
		return StaticCredentials{}, fmt.Errorf("vault: static credentials %s: %s: %w", ref, path, handlers.ErrNotFound)
	}
	c := StaticCredentials{Username: str(sec.Data["username"]), Password: str(sec.Data["password"])}
	c.LastRotation, _ = time.Parse(time.RFC3339Nano, str(sec.Data[keyRotation]))
	return c, nil
}
