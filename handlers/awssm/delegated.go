package awssm

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/schemas"
)

// recentPerSecret is how many recent external changes are kept per secret
// for a Finish that starts after its rotation's event arrived.
const recentPerSecret = 8

// changes passes external changes (Notify) to the Finish calls waiting
// for a delegated rotation, and remembers the last few per secret.
type changes struct {
	mu       sync.Mutex
	watchers map[string]map[chan schemas.ExternalChange]struct{}
	recent   map[string][]received
}

type received struct {
	change schemas.ExternalChange
	at     time.Time
}

func newChanges() *changes {
	return &changes{watchers: map[string]map[chan schemas.ExternalChange]struct{}{}, recent: map[string][]received{}}
}

// Notify tells the backend about a change to a secret that Secrets
// Manager's own event source saw (RotationSucceeded, RotationFailed...).
// The daemon calls it for every external_change event; a delegated Finish
// of the same tenant and secret wakes up: a failed outcome fails it with
// the provider's error message, any other makes it describe the secret at
// once. Changes of another backend are ignored. Notify never blocks.
func (b *Backend) Notify(ch schemas.ExternalChange) {
	if ch.Backend != "" && ch.Backend != Name {
		return
	}
	key := ch.Tenant + "/" + ch.Secret
	now := time.Now()
	c := b.changes
	c.mu.Lock()
	defer c.mu.Unlock()
	kept := slices.DeleteFunc(c.recent[key], func(r received) bool { return now.Sub(r.at) > b.cfg.DelegatedTimeout })
	kept = append(kept, received{change: ch, at: now})
	if len(kept) > recentPerSecret {
		kept = kept[len(kept)-recentPerSecret:]
	}
	c.recent[key] = kept
	for w := range c.watchers[key] {
		select {
		case w <- ch:
		default: // the watcher has changes to read already; it describes the secret anyway
		}
	}
}

// watch returns a channel of the changes to key, the changes received
// since since, and a function to stop watching.
func (c *changes) watch(key string, since time.Time) (<-chan schemas.ExternalChange, []schemas.ExternalChange, func()) {
	w := make(chan schemas.ExternalChange, recentPerSecret)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.watchers[key] == nil {
		c.watchers[key] = map[chan schemas.ExternalChange]struct{}{}
	}
	c.watchers[key][w] = struct{}{}
	var past []schemas.ExternalChange
	for _, r := range c.recent[key] {
		if !r.at.Before(since) {
			past = append(past, r.change)
		}
	}
	return w, past, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		delete(c.watchers[key], w)
		if len(c.watchers[key]) == 0 {
			delete(c.watchers, key)
		}
	}
}

// ErrRotationFailed is wrapped by the error of a delegated Finish whose
// rotation Secrets Manager reported as failed (a RotationFailed event). It
// is temporary: the rotator rolls back and retries.
var ErrRotationFailed = errors.New("rotation by Secrets Manager failed")

// failure returns the error of a failed change that concerns version id.
func failure(ch schemas.ExternalChange, id string) error {
	if ch.Outcome != schemas.ExternalFailed || (ch.VersionID != "" && ch.VersionID != id) {
		return nil
	}
	msg := ch.Error
	if msg == "" {
		msg = "no error message"
	}
	return fmt.Errorf("%w (%s, event %s): %s", ErrRotationFailed, ch.Event, ch.EventID, msg)
}

// waitRotation waits until v is AWSCURRENT (success), a failure of the
// rotation is notified, delegated_timeout passes or ctx ends. It describes
// the secret at once, every poll_interval and after every notified change.
func (b *Backend) waitRotation(ctx context.Context, loc location, ref handlers.SecretRef, v handlers.Version) error {
	since := v.CreatedAt
	if since.IsZero() {
		since = time.Now()
	}
	changes, past, stop := b.changes.watch(ref.String(), since)
	defer stop()
	for _, ch := range past {
		if err := failure(ch, v.ID); err != nil {
			return err
		}
	}
	timeout := time.NewTimer(b.cfg.DelegatedTimeout)
	defer timeout.Stop()
	tick := time.NewTicker(b.cfg.PollInterval)
	defer tick.Stop()
	for {
		done, err := b.rotationDone(ctx, loc, ref, v)
		switch {
		case done:
			return nil
		case errors.Is(err, handlers.ErrPermanent), errors.Is(err, handlers.ErrNotFound):
			return err
		case err != nil:
			// An outage or throttling: keep waiting; the timeout bounds it.
			b.log.WarnContext(ctx, "could not describe the secret while waiting for its rotation", "tenant", ref.Tenant, "secret", ref.Secret, "version", v.ID, "error", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the rotation by Secrets Manager: %w", ctx.Err())
		case <-timeout.C:
			return fmt.Errorf("the rotation by Secrets Manager did not finish within %s (delegated_timeout)", b.cfg.DelegatedTimeout)
		case ch := <-changes:
			if err := failure(ch, v.ID); err != nil {
				return err
			}
		case <-tick.C:
		}
	}
}

// rotationDone reports whether v is AWSCURRENT, and then takes a left
// AWSPENDING off it.
func (b *Backend) rotationDone(ctx context.Context, loc location, ref handlers.SecretRef, v handlers.Version) (bool, error) {
	snap, err := b.describe(ctx, loc)
	if err != nil {
		return false, err
	}
	labels := snap.stages[v.ID]
	if !slices.Contains(labels, StageCurrent) {
		return false, nil
	}
	b.log.InfoContext(ctx, "rotation by Secrets Manager finished", "tenant", ref.Tenant, "secret", ref.Secret, "secret_id", loc.name, "version", v.ID, "request_id", v.Token)
	if slices.Contains(labels, StagePending) {
		if err := b.checkTenant(snap, ref); err != nil {
			// Promoted by Secrets Manager; rekey writes nothing.
			b.log.WarnContext(ctx, "AWSPENDING left on the promoted version", "tenant", ref.Tenant, "secret", ref.Secret, "version", v.ID, "error", err)
			return true, nil
		}
		b.unstageLogged(ctx, loc, ref, v.ID, labels)
	}
	return true, nil
}
