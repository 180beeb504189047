package vault

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/rekey-dev/rekey/handlers"
	"github.com/rekey-dev/rekey/internal/retry"
)

// login gets a token (method token: from the environment, looked up for
// its TTL; method approle: by logging in) and sets it on the client.
func (b *Backend) login(ctx context.Context) error {
	var auth *api.Secret
	switch b.cfg.Auth.Method {
	case AuthToken:
		token := os.Getenv(b.cfg.Auth.TokenEnv)
		if token == "" {
			return fmt.Errorf("vault: login: environment variable %s (auth.token_env) is empty: %w", b.cfg.Auth.TokenEnv, handlers.ErrPermanent)
		}
		b.client.SetToken(token)
		sec, err := b.client.Auth().Token().LookupSelfWithContext(ctx)
		if err != nil {
			return fmt.Errorf("vault: login: %w", loginErr("token lookup-self", err))
		}
		ttl, err := sec.TokenTTL()
		if err != nil {
			return fmt.Errorf("vault: login: token ttl: %w", err)
		}
		renewable, _ := sec.TokenIsRenewable()
		auth = &api.Secret{Auth: &api.SecretAuth{ClientToken: token, Renewable: renewable, LeaseDuration: int(ttl.Seconds())}}
	case AuthAppRole:
		secretID := os.Getenv(b.cfg.Auth.SecretIDEnv)
		if secretID == "" {
			return fmt.Errorf("vault: login: environment variable %s (auth.secret_id_env) is empty: %w", b.cfg.Auth.SecretIDEnv, handlers.ErrPermanent)
		}
		c, err := b.client.Clone()
		if err != nil {
			return fmt.Errorf("vault: login: %w", err)
		}
		c.ClearToken() // a login needs none, and an expired one must not get in the way
		path := "auth/" + b.cfg.Auth.Mount + "/login"
		sec, err := c.Logical().WriteWithContext(ctx, path, map[string]any{"role_id": b.cfg.Auth.RoleID, "secret_id": secretID})
		if err != nil {
			return fmt.Errorf("vault: login: %w", loginErr(path, err))
		}
		if sec == nil || sec.Auth == nil || sec.Auth.ClientToken == "" {
			return fmt.Errorf("vault: login: %s returned no token", path)
		}
		b.client.SetToken(sec.Auth.ClientToken)
		auth = sec
	}
	b.mu.Lock()
	b.auth, b.needsLogin = auth, false
	b.mu.Unlock()
	b.log.InfoContext(ctx, "logged in to Vault", "method", b.cfg.Auth.Method,
		"ttl", time.Duration(auth.Auth.LeaseDuration)*time.Second, "renewable", auth.Auth.Renewable)
	return nil
}

// loginErr marks refused credentials as permanent: retrying the same token
// or secret id cannot help. Other failures (Vault unreachable) are
// temporary. Vault 1.14 answers a wrong AppRole secret id with a 500
// "invalid secret id", so that message counts as a refusal too.
func loginErr(op string, err error) error {
	var re *api.ResponseError
	if errors.As(err, &re) {
		refused := re.StatusCode == 400 || re.StatusCode == 403
		for _, e := range re.Errors {
			refused = refused || strings.Contains(e, "invalid secret id") || strings.Contains(e, "invalid role ID")
		}
		if refused {
			return fmt.Errorf("%s: credentials refused: %w: %w", op, err, handlers.ErrPermanent)
		}
	}
	return fmt.Errorf("%s: %w", op, err)
}

// Run keeps the token valid until ctx ends: it renews it with Vault's
// LifetimeWatcher and, when the token can no longer be renewed (max TTL
// reached, renewal refused, Vault restarted), logs in again, retrying with
// backoff while Vault cannot be reached. A token that never expires (ttl 0)
// needs nothing. Run returns nil when ctx ends.
func (b *Backend) Run(ctx context.Context) error {
	for {
		b.mu.Lock()
		auth, needsLogin := b.auth, b.needsLogin
		b.mu.Unlock()
		if needsLogin || auth == nil {
			if !b.loginUntilDone(ctx) {
				return nil
			}
			continue
		}
		if !auth.Auth.Renewable && auth.Auth.LeaseDuration == 0 {
			<-ctx.Done()
			return nil
		}
		w, err := b.client.NewLifetimeWatcher(&api.LifetimeWatcherInput{Secret: auth})
		if err != nil {
			return fmt.Errorf("vault: token watcher: %w", err)
		}
		go w.Start()
		reason, relogged := b.watch(ctx, w)
		w.Stop()
		if ctx.Err() != nil {
			return nil
		}
		if relogged {
			continue // watch the new token
		}
		b.log.InfoContext(ctx, "Vault token can no longer be renewed; logging in again", "reason", reason)
		b.mu.Lock()
		b.needsLogin = true
		b.mu.Unlock()
	}
}

// watch waits until the watcher gives up, a request logged in again, or
// ctx ends, and says why.
func (b *Backend) watch(ctx context.Context, w *api.LifetimeWatcher) (reason string, relogged bool) {
	for {
		select {
		case <-ctx.Done():
			return "stopped", false
		case <-b.relogged:
			return "", true
		case err := <-w.DoneCh():
			if err != nil {
				return err.Error(), false
			}
			return "end of its lifetime", false
		case r := <-w.RenewCh():
			ttl := 0
			if r != nil && r.Secret != nil && r.Secret.Auth != nil {
				ttl = r.Secret.Auth.LeaseDuration
			}
			b.log.DebugContext(ctx, "Vault token renewed", "ttl", time.Duration(ttl)*time.Second)
		}
	}
}

// loginUntilDone logs in, retrying with backoff; false when ctx ended.
func (b *Backend) loginUntilDone(ctx context.Context) bool {
	for n := 1; ; n++ {
		lctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
		err := b.login(lctx)
		cancel()
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		delay := retry.Outage.Delay(n)
		b.log.WarnContext(ctx, "Vault login failed; retrying", "method", b.cfg.Auth.Method, "retry_in", delay, "error", err)
		if !retry.Sleep(ctx, delay) {
			return false
		}
	}
}

// reauth is the Vault API of one namespace; a request refused with 403
// because the token died (expired early, revoked, Vault restored from a
// backup) logs in again and is retried once. A 403 with a valid token is a
// policy refusal and is returned as it is.
type reauth struct {
	b  *Backend
	ns string
}

func (r reauth) ReadWithContext(ctx context.Context, path string) (*api.Secret, error) {
	return r.do(ctx, func(lg logical) (*api.Secret, error) { return lg.ReadWithContext(ctx, path) })
}

func (r reauth) WriteWithContext(ctx context.Context, path string, data map[string]any) (*api.Secret, error) {
	return r.do(ctx, func(lg logical) (*api.Secret, error) { return lg.WriteWithContext(ctx, path, data) })
}

func (r reauth) JSONMergePatch(ctx context.Context, path string, data map[string]any) (*api.Secret, error) {
	return r.do(ctx, func(lg logical) (*api.Secret, error) { return lg.JSONMergePatch(ctx, path, data) })
}

func (r reauth) DeleteWithContext(ctx context.Context, path string) (*api.Secret, error) {
	return r.do(ctx, func(lg logical) (*api.Secret, error) { return lg.DeleteWithContext(ctx, path) })
}

func (r reauth) ListWithContext(ctx context.Context, path string) (*api.Secret, error) {
	return r.do(ctx, func(lg logical) (*api.Secret, error) { return lg.ListWithContext(ctx, path) })
}

func (r reauth) do(ctx context.Context, call func(logical) (*api.Secret, error)) (*api.Secret, error) {
	sent := r.b.client.Token()
	sec, err := call(r.b.api(r.ns))
	var re *api.ResponseError
	if err == nil || !errors.As(err, &re) || re.StatusCode != 403 || !r.b.reauthenticate(ctx, sent) {
		return sec, err
	}
	return call(r.b.api(r.ns))
}

// reauthenticate logs in again if the token that a refused request was
// sent with is dead, and reports whether to retry it (with a new token).
func (b *Backend) reauthenticate(ctx context.Context, sent string) bool {
	b.reauthMu.Lock()
	defer b.reauthMu.Unlock()
	if b.client.Token() != sent {
		return true // another request or Run logged in meanwhile
	}
	if _, err := b.client.Auth().Token().LookupSelfWithContext(ctx); err == nil {
		return false // the token is fine: the policy refused the request
	}
	if err := b.login(ctx); err != nil {
		b.log.WarnContext(ctx, "Vault refused a request and logging in again failed", "error", err)
		return false
	}
	b.log.InfoContext(ctx, "Vault token was no longer valid; logged in again")
	select {
	case b.relogged <- struct{}{}:
	default:
	}
	return true
}
