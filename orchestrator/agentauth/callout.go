package agentauth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// ResponderConfig tunes a Responder.
type ResponderConfig struct {
	// Account is where the agents' users are placed: on a server without
	// operator (configuration accounts), the account of auth_callout
	// ("$G", nats-server's global account, by default).
	Account string
	// Cut, if set, refuses the agents of every tenant for which it returns
	// true (a revoked tenant: the kill switch).
	Cut func(tenant string) bool
	// Logger; refusals are logged with their reason, never the token.
	Logger *slog.Logger
}

// Responder answers nats-server's auth callout
// (server.AuthCalloutSubject, "$SYS.REQ.USER.AUTH") on an external NATS:
// for each connection that is not one of auth_callout's auth_users, the
// server sends a signed authorization request holding the client's
// connect options; the Responder verifies the token presented as the
// connection token with the Verifier, and replies with a user JWT signed
// by the issuer account key, carrying InstancePermissions and expiring
// with the token (the server closes the connection then), or with an
// error. The requests must not be encrypted (no xkey in auth_callout).
type Responder struct {
	nc      *nats.Conn
	v       *Verifier
	issuer  nkeys.KeyPair
	account string
	cut     func(string) bool
	log     *slog.Logger
	refused atomic.Int64
}

// Refused is how many requests were dropped because their reply subject
// was not one of the server's own response inboxes.
func (r *Responder) Refused() int64 { return r.refused.Load() }

// NewResponder builds a Responder that answers on nc (a connection of an
// auth_users user, e.g. orchestrator.CalloutUser) with users signed by
// issuer, the account key pair whose public key is auth_callout's issuer.
func NewResponder(nc *nats.Conn, v *Verifier, issuer nkeys.KeyPair, cfg ResponderConfig) (*Responder, error) {
	pub, err := issuer.PublicKey()
	if err != nil || !nkeys.IsValidPublicAccountKey(pub) {
		return nil, errors.New("auth callout: the issuer must be an account key pair (seed starting with SA)")
	}
	if cfg.Account == "" {
		cfg.Account = server.DEFAULT_GLOBAL_ACCOUNT
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Responder{nc: nc, v: v, issuer: issuer, account: cfg.Account, cut: cfg.Cut,
		log: cfg.Logger.With("component", "agentauth-callout")}, nil
}

// Run answers authorization requests until ctx ends.
func (r *Responder) Run(ctx context.Context) error {
	sub, err := r.nc.Subscribe(server.AuthCalloutSubject, r.handle)
	if err != nil {
		return fmt.Errorf("auth callout: subscribe: %w", err)
	}
	if err := r.nc.FlushTimeout(5 * time.Second); err != nil && ctx.Err() == nil {
		_ = sub.Unsubscribe()
		return fmt.Errorf("auth callout: subscribe: %w", err)
	}
	<-ctx.Done()
	_ = sub.Unsubscribe()
	return nil
}

func (r *Responder) handle(m *nats.Msg) {
	// nats-server sends its requests with a reply in its own response
	// inboxes ($SYS._INBOX.); anything else was published by a client
	// that chose where the signed answer would go. The callout user's
	// permissions (no publish, allow_responses) bound it too.
	if !strings.HasPrefix(m.Reply, server.InboxPrefix) {
		r.refused.Add(1)
		r.log.Warn("auth callout request refused: reply subject is not the server's inbox", "reply", m.Reply[:min(len(m.Reply), 200)])
		return
	}
	reply, err := r.Respond(context.Background(), m.Data)
	if err != nil {
		r.log.Warn("auth callout request not answered", "error", err)
		return
	}
	if err := m.Respond(reply); err != nil {
		r.log.Warn("auth callout reply not sent", "error", err)
	}
}

// Respond answers one authorization request (the JWT nats-server sends):
// a signed authorization response granting the agent's user, or refusing
// with a reason. It returns an error only for a request it cannot answer.
func (r *Responder) Respond(ctx context.Context, request []byte) ([]byte, error) {
	req, err := jwt.DecodeAuthorizationRequestClaims(string(request))
	if err != nil {
		return nil, fmt.Errorf("decode authorization request (an xkey-encrypted request is not supported): %w", err)
	}
	if !nkeys.IsValidPublicUserKey(req.UserNkey) || req.Server.ID == "" {
		return nil, errors.New("authorization request without user nkey or server id")
	}
	resp := jwt.NewAuthorizationResponseClaims(req.UserNkey)
	resp.Audience = req.Server.ID
	user, err := r.grant(ctx, req)
	if err != nil {
		r.log.Info("agent login refused", "reason", err, "client_host", req.ClientInformation.Host)
		resp.Error = err.Error()
	} else {
		resp.Jwt = user
	}
	out, err := resp.Encode(r.issuer)
	if err != nil {
		return nil, fmt.Errorf("sign authorization response: %w", err)
	}
	return []byte(out), nil
}

// grant verifies the request's token and returns the signed user JWT.
func (r *Responder) grant(ctx context.Context, req *jwt.AuthorizationRequestClaims) (string, error) {
	if req.ConnectOptions.Token == "" {
		return "", refused("no token: present the workload identity as the connection token")
	}
	ctx, cancel := context.WithTimeout(ctx, loginTimeout)
	defer cancel()
	id, err := r.v.Verify(ctx, req.ConnectOptions.Token)
	if err != nil {
		return "", err
	}
	if r.cut != nil && r.cut(id.Tenant) {
		return "", refused("tenant %s is cut off (revoked)", id.Tenant)
	}
	uc := jwt.NewUserClaims(req.UserNkey)
	uc.Name = id.Username()
	uc.Audience = r.account
	uc.Expires = id.Expires.Unix()
	p := InstancePermissions(id.Tenant, id.Instance)
	uc.Pub.Allow.Add(p.Publish.Allow...)
	uc.Sub.Allow.Add(p.Subscribe.Allow...)
	s, err := uc.Encode(r.issuer)
	if err != nil {
		return "", fmt.Errorf("sign user: %w", err)
	}
	r.log.Debug("agent logged in", "tenant", id.Tenant, "instance", id.Instance, "tool", id.Tool, "sub", id.Subject, "expires", id.Expires)
	return s, nil
}

// LoadIssuer reads the account nkey seed (SA..., raw or as written by
// nsc/nk with its decoration) that signs auth callout answers.
func LoadIssuer(path string) (nkeys.KeyPair, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("callout issuer seed: %w", err)
	}
	kp, err := nkeys.ParseDecoratedNKey(b)
	if err != nil {
		return nil, fmt.Errorf("callout issuer seed %s: %w", path, err)
	}
	if _, err := kp.Seed(); err != nil {
		return nil, fmt.Errorf("callout issuer seed %s: not a seed", path)
	}
	if pub, err := kp.PublicKey(); err != nil || !nkeys.IsValidPublicAccountKey(pub) {
		return nil, fmt.Errorf("callout issuer seed %s: not an account seed (SA...)", path)
	}
	return kp, nil
}
