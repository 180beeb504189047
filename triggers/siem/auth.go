package siem

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// SignHMAC returns the hex HMAC-SHA256 of body with secret: the signature
// a sender puts (after its prefix, e.g. "sha256=" or "v1=") in the
// signature header of a source without a timestamp header.
func SignHMAC(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// SignHMACTimestamp returns the hex HMAC-SHA256 of "<timestamp>:<body>",
// Grafana's signature when a timestamp header is configured.
func SignHMACTimestamp(secret []byte, timestamp string, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(timestamp))
	m.Write([]byte{':'})
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// errUnauthorized is the reason a request failed authentication. Its
// message never contains a credential or a signature.
type errUnauthorized struct{ reason string }

func (e *errUnauthorized) Error() string { return e.reason }

func unauthorized(reason string) error { return &errUnauthorized{reason: reason} }

// authenticator checks one request. needsBody says whether check needs the
// raw body (HMAC); bearer and basic are checked before the body is read.
type authenticator interface {
	check(r *http.Request, body []byte, now time.Time) error
	needsBody() bool
	// challenge is the WWW-Authenticate value of a 401, or "".
	challenge() string
}

// maxSignatures bounds the comma-separated signatures tried per request.
const maxSignatures = 8

type hmacAuth struct {
	secret          []byte
	header          string
	prefix          string
	base64          bool
	timestampHeader string
	maxSkew         time.Duration
}

func (a *hmacAuth) needsBody() bool   { return true }
func (a *hmacAuth) challenge() string { return "" }

func (a *hmacAuth) check(r *http.Request, body []byte, now time.Time) error {
	sigs := r.Header.Get(a.header)
	if sigs == "" {
		return unauthorized("missing " + a.header + " header")
	}
	m := hmac.New(sha256.New, a.secret)
	if a.timestampHeader != "" {
		ts := strings.TrimSpace(r.Header.Get(a.timestampHeader))
		if ts == "" {
			return unauthorized("missing " + a.timestampHeader + " header")
		}
		sec, err := strconv.ParseInt(ts, 10, 64)
		if err != nil || sec <= 0 {
			return unauthorized(a.timestampHeader + " is not a Unix time")
		}
		if sec > 1e12 { // milliseconds
			sec /= 1000
		}
		if d := now.Sub(time.Unix(sec, 0)); d > a.maxSkew || d < -a.maxSkew {
			return unauthorized(a.timestampHeader + " is more than " + a.maxSkew.String() + " away from now")
		}
		m.Write([]byte(ts))
		m.Write([]byte{':'})
	}
	m.Write(body)
	want := m.Sum(nil)

	ok := 0
	for i, s := range strings.Split(sigs, ",") {
		if i == maxSignatures {
			break
		}
		s, found := strings.CutPrefix(strings.TrimSpace(s), a.prefix)
		if !found {
			continue
		}
		var got []byte
		var err error
		if a.base64 {
			got, err = base64.StdEncoding.DecodeString(s)
		} else {
			got, err = hex.DecodeString(s)
		}
		if err != nil {
			continue
		}
		ok |= subtle.ConstantTimeCompare(got, want)
	}
	if ok != 1 {
		return unauthorized("invalid signature in " + a.header)
	}
	return nil
}

type bearerAuth struct{ digest [32]byte }

func (a *bearerAuth) needsBody() bool   { return false }
func (a *bearerAuth) challenge() string { return `Bearer realm="rekey"` }

func (a *bearerAuth) check(r *http.Request, _ []byte, _ time.Time) error {
	h := r.Header.Get("Authorization")
	if h == "" {
		return unauthorized("missing Authorization: Bearer <token>")
	}
	scheme, tok, _ := strings.Cut(h, " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return unauthorized("Authorization must be a Bearer token")
	}
	// Compare digests so the time taken does not depend on the length.
	got := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	if subtle.ConstantTimeCompare(got[:], a.digest[:]) != 1 {
		return unauthorized("invalid bearer token")
	}
	return nil
}

type basicAuth struct{ user, pass [32]byte }

func (a *basicAuth) needsBody() bool   { return false }
func (a *basicAuth) challenge() string { return `Basic realm="rekey", charset="UTF-8"` }

func (a *basicAuth) check(r *http.Request, _ []byte, _ time.Time) error {
	u, p, ok := r.BasicAuth()
	if !ok {
		return unauthorized("missing Authorization: Basic credentials")
	}
	gu, gp := sha256.Sum256([]byte(u)), sha256.Sum256([]byte(p))
	if subtle.ConstantTimeCompare(gu[:], a.user[:])&subtle.ConstantTimeCompare(gp[:], a.pass[:]) != 1 {
		return unauthorized("invalid username or password")
	}
	return nil
}

// newAuthenticator resolves the secrets (from the config or the
// environment) of a validated AuthConfig. field is the source's field
// prefix, for errors.
func newAuthenticator(field, format string, c AuthConfig) (authenticator, error) {
	switch {
	case c.HMAC != nil:
		h := c.HMAC.withDefaults(format)
		s, err := resolveSecret(field+".auth.hmac.secret_env", h.Secret, h.SecretEnv)
		if err != nil {
			return nil, err
		}
		return &hmacAuth{
			secret: []byte(s), header: h.Header, prefix: *h.Prefix, base64: h.Encoding == "base64",
			timestampHeader: h.TimestampHeader, maxSkew: h.MaxSkew,
		}, nil
	case c.Bearer != nil:
		s, err := resolveSecret(field+".auth.bearer.token_env", c.Bearer.Token, c.Bearer.TokenEnv)
		if err != nil {
			return nil, err
		}
		return &bearerAuth{digest: sha256.Sum256([]byte(s))}, nil
	case c.Basic != nil:
		s, err := resolveSecret(field+".auth.basic.password_env", c.Basic.Password, c.Basic.PasswordEnv)
		if err != nil {
			return nil, err
		}
		return &basicAuth{user: sha256.Sum256([]byte(c.Basic.Username)), pass: sha256.Sum256([]byte(s))}, nil
	case c.URLSecret != nil:
		return newURLSecretAuth(field, c.URLSecret)
	case c.EntraID != nil:
		return newEntraAuth(field, *c.EntraID)
	}
	return nil, errors.New(field + ".auth: no method")
}
