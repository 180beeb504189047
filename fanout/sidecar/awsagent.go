package sidecar

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
)

// The AWS Secrets Manager Agent protocol, as AWS's agent
// (github.com/aws/aws-secretsmanager-agent) speaks it:
//   - GET /ping answers "healthy" without a token;
//   - a request with X-Forwarded-For is refused (400 "Forwarded");
//   - the SSRF token must be in X-Aws-Parameters-Secrets-Token or
//     X-Vault-Token (403 "Bad Token");
//   - only GET (405 "Not allowed");
//   - GET /secretsmanager/get?secretId=...&versionId=&versionStage=&refreshNow=
//     and GET /v1/{secretId}?versionId=&versionStage=&refreshNow=;
//     an unknown parameter is 400;
//   - the reply is GetSecretValue's JSON; errors are
//     {"__type": "...", "message": "..."} with Secrets Manager's status.
//
// refreshNow is accepted and changes nothing: the cache is kept current by
// rekey's invalidations, not by a TTL.

var awsAgentTokenHeaders = []string{"X-Aws-Parameters-Secrets-Token", "X-Vault-Token"}

const awsAgentPathPrefix = "/v1/"

func plain(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(msg))
}

// awsAgentParam reports whether a query parameter is accepted (secretId
// only by /secretsmanager/get).
func awsAgentParam(k string, byQuery bool) bool {
	switch k {
	case "versionId", "versionStage", "refreshNow":
		return true
	case "secretId":
		return byQuery
	}
	return false
}

func (s *Server) awsAgentHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ping" {
			plain(w, http.StatusOK, "healthy")
			return
		}
		if len(r.Header.Values("X-Forwarded-For")) > 0 || forwarded(r) {
			plain(w, http.StatusBadRequest, "Forwarded")
			return
		}
		authed := false
		for _, h := range awsAgentTokenHeaders {
			for _, v := range r.Header.Values(h) {
				authed = authed || tokenEqual(v, s.cfg.AWSAgentToken)
			}
		}
		if !authed {
			plain(w, http.StatusForbidden, "Bad Token")
			return
		}
		if r.Method != http.MethodGet {
			plain(w, http.StatusMethodNotAllowed, "Not allowed")
			return
		}
		q, err := url.ParseQuery(r.URL.RawQuery)
		if err != nil {
			plain(w, http.StatusBadRequest, "bad query")
			return
		}
		var secretID string
		byQuery := false
		switch {
		case r.URL.Path == "/secretsmanager/get":
			byQuery = true
			secretID = q.Get("secretId")
		case strings.HasPrefix(r.URL.Path, awsAgentPathPrefix):
			secretID = r.URL.Path[len(awsAgentPathPrefix):]
		default:
			plain(w, http.StatusNotFound, "Not found")
			return
		}
		for k := range q {
			if !awsAgentParam(k, byQuery) {
				plain(w, http.StatusBadRequest, "unknown parameter: "+clip(k))
				return
			}
		}
		if rn := q.Get("refreshNow"); rn != "" {
			switch strings.ToLower(rn) {
			case "true", "1", "false", "0":
			default:
				plain(w, http.StatusBadRequest, "invalid refreshNow value")
				return
			}
		}
		if secretID == "" {
			plain(w, http.StatusBadRequest, "missing parameter secretId")
			return
		}
		out, aerr := s.awsRead(r, secretID, q.Get("versionId"), q.Get("versionStage"))
		w.Header().Set("Content-Type", "application/json")
		if aerr != nil {
			w.WriteHeader(aerr.status)
			_ = json.NewEncoder(w).Encode(map[string]string{"__type": aerr.typ, "message": aerr.msg})
			return
		}
		_ = json.NewEncoder(w).Encode(out)
	})
}
