package agentauth

import (
	"context"
	"log/slog"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// JWKS is an issuer's key set read over HTTP and cached, as the Verifier
// reads it: a token naming a key id not in the cache makes it read the
// document again at most once per minRefresh, it is read again anyway
// after an hour, and a failed read keeps the keys read before. Other
// verifiers of signed tokens (the SIEM trigger's Entra ID webhooks) use
// it instead of a fetcher of their own.
type JWKS struct{ j *jwksKeys }

// NewJWKS reads url (checked with orchestrator.CheckJWKSURL by the
// caller's config) at the first Keys call; caFile, if set, is the PEM CA
// bundle its certificate must chain to.
func NewJWKS(url, caFile string, minRefresh time.Duration, log *slog.Logger) (*JWKS, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	j, err := newJWKSKeys(url, caFile, minRefresh, log)
	if err != nil {
		return nil, err
	}
	return &JWKS{j: j}, nil
}

// Keys returns the keys that may have signed a token whose header names
// key id kid (every key when kid is empty).
func (k *JWKS) Keys(ctx context.Context, kid string) ([]jose.JSONWebKey, error) {
	return k.j.candidates(ctx, kid)
}

// Fetches is how many times the document was read.
func (k *JWKS) Fetches() int64 { return k.j.fetches.Load() }
