package api_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/triggers/api"
)

// otherRoutes are the routes rekeyd serves that other packages register:
// orchestrator.HTTPServer (checked below against its mux) and the SIEM
// webhook of triggers/siem (siem.Route; triggers do not import each other).
var otherRoutes = []string{
	"GET /healthz",
	"GET /readyz",
	"GET /metrics",
	"POST /v1/hooks/{source}",
}

type openAPIDoc struct {
	OpenAPI    string                                `json:"openapi"`
	Info       map[string]any                        `json:"info"`
	Paths      map[string]map[string]json.RawMessage `json:"paths"`
	Components struct {
		Schemas map[string]struct {
			Properties map[string]any `json:"properties"`
		} `json:"schemas"`
	} `json:"components"`
}

func loadDoc(t *testing.T) openAPIDoc {
	t.Helper()
	var doc openAPIDoc
	require.NoError(t, json.Unmarshal(api.OpenAPI(), &doc), "openapi.json is not JSON")
	return doc
}

// docRoutes are the document's operations as mux patterns ("GET /path").
func docRoutes(doc openAPIDoc) []string {
	var out []string
	for path, item := range doc.Paths {
		for method := range item {
			switch method {
			case "get", "put", "post", "delete", "patch", "head", "options", "trace":
				out = append(out, strings.ToUpper(method)+" "+path)
			}
		}
	}
	slices.Sort(out)
	return out
}

func TestOpenAPIDocument(t *testing.T) {
	doc := loadDoc(t)
	require.True(t, strings.HasPrefix(doc.OpenAPI, "3."), "openapi %q is not 3.x", doc.OpenAPI)
	require.NotEmpty(t, doc.Info["title"])
	require.NotEmpty(t, doc.Info["version"])

	// Every $ref points at something that exists.
	var whole map[string]any
	require.NoError(t, json.Unmarshal(api.OpenAPI(), &whole))
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if ref, ok := v["$ref"].(string); ok {
				var node any = whole
				for _, part := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
					m, ok := node.(map[string]any)
					require.True(t, ok, "dangling $ref %s", ref)
					node, ok = m[part]
					require.True(t, ok, "dangling $ref %s", ref)
				}
			}
			for _, x := range v {
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(whole)

	// Every operation documents its responses, and the SIEM webhook the
	// ones triggers/siem documents.
	for path, item := range doc.Paths {
		for method, raw := range item {
			if method == "parameters" {
				continue
			}
			var op struct {
				OperationID string                     `json:"operationId"`
				Responses   map[string]json.RawMessage `json:"responses"`
			}
			require.NoError(t, json.Unmarshal(raw, &op))
			require.NotEmpty(t, op.OperationID, "%s %s", method, path)
			require.NotEmpty(t, op.Responses, "%s %s", method, path)
			if path == "/v1/hooks/{source}" {
				for _, code := range []string{"202", "400", "401", "404", "413", "422", "429"} {
					require.Contains(t, op.Responses, code, "POST /v1/hooks/{source} lacks %s", code)
				}
			}
		}
	}

	// Served without a token.
	e := newEnv(t, orchestrator.NATSConfig{}, nil)
	req, err := http.NewRequest("GET", e.url+"/openapi.json", nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	var served map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&served))
	require.Equal(t, whole["openapi"], served["openapi"])
}

// TestOpenAPIRoutes: every route the server registers is in the document,
// and every operation of the document is a route the server serves.
func TestOpenAPIRoutes(t *testing.T) {
	e := newEnv(t, orchestrator.NATSConfig{}, nil)
	registered := append(e.api.Routes(), otherRoutes...)
	slices.Sort(registered)
	require.Equal(t, registered, docRoutes(loadDoc(t)))

	// The routes of orchestrator.HTTPServer are really its own, and every
	// documented route of these packages reaches its handler.
	srv, err := orchestrator.NewHTTPServer(orchestrator.HTTPConfig{Addr: "127.0.0.1:0"}, orchestrator.NewMetrics(), nil, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	stopped, stop := context.WithCancel(context.Background())
	stop()
	t.Cleanup(func() { require.NoError(t, srv.Run(stopped)) }) // closes its listener
	for _, route := range otherRoutes {
		if strings.Contains(route, "/v1/hooks/") {
			continue
		}
		method, path, _ := strings.Cut(route, " ")
		_, pattern := srv.Mux.Handler(httptest.NewRequest(method, path, nil))
		require.Equal(t, route, pattern)
	}
	for _, route := range e.api.Routes() {
		method, path, _ := strings.Cut(route, " ")
		path = strings.NewReplacer("{tenant}", "acme", "{secret}", "openai-key").Replace(path)
		_, pattern := e.mux.Handler(httptest.NewRequest(method, path, nil))
		require.Equal(t, route, pattern)
	}
}

// TestOpenAPISchemas: the documented reply schemas have exactly the JSON
// fields of the Go types the API encodes.
func TestOpenAPISchemas(t *testing.T) {
	doc := loadDoc(t)
	for name, v := range map[string]any{
		"Accepted":           api.Accepted{},
		"SecretStatus":       api.SecretStatus{},
		"SecretList":         api.SecretList{},
		"TenantStatus":       api.TenantStatus{},
		"LastRotation":       api.LastRotation{},
		"InvalidationStatus": api.InvalidationStatus{},
	} {
		var fields []string
		typ := reflect.TypeOf(v)
		for i := range typ.NumField() {
			tag, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
			if tag != "" && tag != "-" {
				fields = append(fields, tag)
			}
		}
		var documented []string
		for f := range doc.Components.Schemas[name].Properties {
			documented = append(documented, f)
		}
		slices.Sort(fields)
		slices.Sort(documented)
		require.Equal(t, fields, documented, "schema %s", name)
	}
}
