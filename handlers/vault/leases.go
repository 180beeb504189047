package vault

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/schemas"
)

// RevokeTenant revokes every lease of the tenant's dynamic database roles
// (the roles of its database mount whose names start with its prefix) with
// sys/leases/revoke-prefix/<db>/creds/<role>, and returns when Vault holds
// no lease of them any more, i.e. every database user is dropped (at most
// revoke_timeout when ctx has no deadline). It returns how many leases were
// revoked. Tenants without roles there revoke nothing.
func (b *Backend) RevokeTenant(ctx context.Context, tenant string) (int, error) {
	return b.revokeTenant(ctx, tenant, "revoke-prefix")
}

// ForceRevokeTenant is RevokeTenant with sys/leases/revoke-force: Vault
// deletes the lease entries even when the database refuses to drop the
// users. A last resort, for a database that is gone for good: users it
// could not drop stay valid in the database, unknown to Vault, and must
// be removed by hand.
func (b *Backend) ForceRevokeTenant(ctx context.Context, tenant string) (int, error) {
	return b.revokeTenant(ctx, tenant, "revoke-force")
}

func (b *Backend) revokeTenant(ctx context.Context, tenant, endpoint string) (int, error) {
	if err := schemas.ValidateID("tenant", tenant); err != nil {
		return 0, fmt.Errorf("vault: revoke tenant %s: %w: %w", tenant, err, handlers.ErrPermanent)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, b.cfg.RevokeTimeout)
		defer cancel()
	}
	begin := time.Now()
	lg := b.logical(b.cfg.namespace(tenant))
	mount := b.cfg.fill(b.cfg.DatabaseMount, tenant, "")
	prefix := b.cfg.rolePrefix(tenant)

	sec, err := lg.ListWithContext(ctx, mount+"/roles")
	if err != nil {
		if errors.Is(classify("", err), handlers.ErrNotFound) {
			return 0, nil // no database mount
		}
		return 0, fmt.Errorf("vault: revoke tenant %s: %w", tenant, classify("list "+mount+"/roles", err))
	}
	// Vault revokes the leases under one prefix one after another; the
	// roles are revoked in parallel.
	var (
		mu            sync.Mutex
		total, nroles int
		errs          []error
		wg            sync.WaitGroup
		sem           = make(chan struct{}, 4)
	)
	for _, role := range listKeys(sec) {
		if !strings.HasPrefix(role, prefix) || strings.Contains(role, "/") {
			continue
		}
		nroles++
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			n, err := revokeRole(ctx, lg, mount+"/creds/"+role, endpoint)
			mu.Lock()
			defer mu.Unlock()
			total += n
			if err != nil {
				errs = append(errs, err)
			}
		}()
	}
	wg.Wait()
	d := time.Since(begin)
	if err := errors.Join(errs...); err != nil {
		b.log.ErrorContext(ctx, "tenant lease revocation incomplete", "tenant", tenant, "endpoint", endpoint, "roles", nroles, "leases", total, "duration", d, "error", err)
		return total, fmt.Errorf("vault: revoke tenant %s: %w", tenant, err)
	}
	b.log.InfoContext(ctx, "revoked tenant leases", "tenant", tenant, "endpoint", endpoint, "roles", nroles, "leases", total, "duration", d)
	return total, nil
}

// revokeRole counts the leases under credsPrefix, revokes them and waits
// until Vault has no lease left there. revoke-prefix runs with sync=false:
// Vault marks every lease expired at once and its revocation workers drop
// the database users in parallel, and finish even if rekey stops waiting;
// a lease entry disappears only once its user is dropped, so an empty list
// means done. revoke-force has no async mode and returns when done.
func revokeRole(ctx context.Context, lg logical, credsPrefix, endpoint string) (int, error) {
	count := func() (int, error) {
		leases, err := lg.ListWithContext(ctx, "sys/leases/lookup/"+credsPrefix)
		if err != nil && !errors.Is(classify("", err), handlers.ErrNotFound) {
			return 0, classify("list leases of "+credsPrefix, err)
		}
		return len(listKeys(leases)), nil
	}
	n, err := count()
	if err != nil {
		return 0, err
	}
	var body map[string]any
	if endpoint == "revoke-prefix" {
		body = map[string]any{"sync": false}
	}
	if _, err := lg.WriteWithContext(ctx, "sys/leases/"+endpoint+"/"+credsPrefix, body); err != nil {
		return 0, classify(endpoint+" "+credsPrefix, err)
	}
	delay := 20 * time.Millisecond
	for {
		left, err := count()
		if err != nil {
			return n - left, err
		}
		if left == 0 {
			return n, nil
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return n - left, fmt.Errorf("%d of %d leases under %s not revoked yet (Vault keeps revoking them): %w", left, n, credsPrefix, ctx.Err())
		case <-t.C:
		}
		delay = min(2*delay, 500*time.Millisecond)
	}
}
