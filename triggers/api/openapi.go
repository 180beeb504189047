package api

import (
	"bytes"
	_ "embed"
	"net/http"
)

//go:embed openapi.json
var openAPI []byte

// OpenAPI returns the OpenAPI 3 document of rekeyd's whole HTTP API: these
// routes, the SIEM webhook (triggers/siem), /healthz, /readyz and
// /metrics. A test checks it against the routes the server registers.
func OpenAPI() []byte { return bytes.Clone(openAPI) }

// serveOpenAPI serves GET /openapi.json; it needs no token.
func serveOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, _ = w.Write(openAPI)
}
