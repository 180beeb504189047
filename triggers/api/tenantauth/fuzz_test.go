package tenantauth_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/triggers/api"
	"github.com/rekey-dev/rekey/triggers/api/tenantauth"
)

// FuzzAuthenticate: whatever the bearer token, Authenticate does not
// panic, answers with one of its sentinels, never quotes the token, and
// lets in only what it was configured to.
func FuzzAuthenticate(f *testing.F) {
	f.Setenv(hsKeyEnv, hsKey)
	rekey, err := orchestrator.Parse([]byte(rekeyYAML))
	if err != nil {
		f.Fatal(err)
	}
	cfg, err := tenantauth.ParseConfig([]byte(tokensYAML()+"min_interval: 0s\njwt: {algorithm: HS256, hs256_key_env: "+hsKeyEnv+"}\n"), &rekey)
	if err != nil {
		f.Fatal(err)
	}
	svc, err := tenantauth.New(context.Background(), cfg, orchestrator.Deps{Rekey: &rekey, Metrics: orchestrator.NewMetrics(), Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		f.Fatal(err)
	}
	valid, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"tenant": "acme", "exp": time.Now().Add(time.Hour).Unix()}).
		SignedString([]byte(hsKey))
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{acmeToken, valid, valid[:len(valid)-2], "a.b.c", "eyJhbGciOiJub25lIn0.e30.", "", "Bearer", "x.y",
		"eyJhbGciOiJIUzI1NiJ9.eyJ0ZW5hbnQiOjF9.sig"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		r := httptest.NewRequest("GET", "/v1/tenants/acme/secrets", nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		p, err := svc.Authenticate(r)
		switch {
		case err == nil:
			if p.Kind != api.PrincipalTenant || p.Tenant == "" || p.TokenID == "" {
				t.Fatalf("incomplete principal %+v", p)
			}
			if strings.TrimSpace(tok) != acmeToken && strings.TrimSpace(tok) != globexToken && strings.Count(tok, ".") != 2 {
				t.Fatalf("let in a token that is neither configured nor a JWT")
			}
		case errors.Is(err, api.ErrUnknownToken), errors.Is(err, api.ErrInvalidToken):
			if len(tok) >= 8 && strings.Contains(err.Error(), tok) {
				t.Fatalf("error quotes the token: %v", err)
			}
		default:
			t.Fatalf("error wraps no sentinel: %v", err)
		}
	})
}
