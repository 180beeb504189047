package sidecar

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/rekey-dev/rekey/fanout/agent"
)

// A subset of Vault's HTTP API, read only:
//   - GET /v1/sys/health (no token, as in Vault);
//   - GET /v1/auth/token/lookup-self;
//   - GET /v1/sys/internal/ui/mounts/{path} (the vault CLI asks it which
//     KV version a mount is);
//   - GET /v1/{kv mount}/data/{path} and /v1/{kv mount}/metadata/{path};
//   - GET /v1/{database mount}/creds/{role} and static-creds/{role}.
//
// X-Vault-Token (or Authorization: Bearer) must be the sidecar-local
// token. Errors are {"errors": [...]}: 403 "permission denied" for a
// wrong token and for a revoked tenant, 404 {"errors": []} for anything
// that does not map to one of the tenant's secrets.

// VaultVersion is what sys/health reports.
const VaultVersion = "1.15.0+rekey-agent"

func vaultJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func vaultErr(w http.ResponseWriter, status int, msgs ...string) {
	if msgs == nil {
		msgs = []string{}
	}
	vaultJSON(w, status, map[string][]string{"errors": msgs})
}

func requestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// vaultEnvelope is Vault's response envelope.
type vaultEnvelope struct {
	RequestID     string `json:"request_id"`
	LeaseID       string `json:"lease_id"`
	Renewable     bool   `json:"renewable"`
	LeaseDuration int    `json:"lease_duration"`
	Data          any    `json:"data"`
	WrapInfo      any    `json:"wrap_info"`
	Warnings      any    `json:"warnings"`
	Auth          any    `json:"auth"`
}

// vaultReply is Vault's response envelope around data.
func vaultReply(data any, leaseID string, renewable bool, lease int) vaultEnvelope {
	return vaultEnvelope{RequestID: requestID(), LeaseID: leaseID, Renewable: renewable, LeaseDuration: lease, Data: data}
}

// kvData is the data of a KV v2 read.
type kvData struct {
	Data     map[string]string `json:"data"`
	Metadata kvVersionMeta     `json:"metadata"`
}

// kvVersionMeta is the metadata of one KV v2 version.
type kvVersionMeta struct {
	CreatedTime    string            `json:"created_time"`
	CustomMetadata map[string]string `json:"custom_metadata"`
	DeletionTime   string            `json:"deletion_time"`
	Destroyed      bool              `json:"destroyed"`
	Version        int               `json:"version"`
}

func (s *Server) vaultHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if forwarded(r) {
			vaultErr(w, http.StatusForbidden, "requests through a proxy (X-Forwarded-For) are refused")
			return
		}
		path, ok := strings.CutPrefix(r.URL.Path, "/v1/")
		if !ok {
			vaultErr(w, http.StatusNotFound)
			return
		}
		if path == "sys/health" && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
			s.vaultHealth(w)
			return
		}
		tok := r.Header.Get("X-Vault-Token")
		if b, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && tok == "" {
			tok = b
		}
		if !tokenEqual(tok, s.cfg.VaultToken) {
			vaultErr(w, http.StatusForbidden, "permission denied")
			return
		}
		if r.Method != http.MethodGet {
			vaultErr(w, http.StatusMethodNotAllowed, "rekey-agent serves reads only")
			return
		}
		kv, db := s.vaultKVPrefix, s.vaultDBPrefix
		switch {
		case path == "auth/token/lookup-self":
			vaultJSON(w, http.StatusOK, vaultReply(map[string]any{
				"accessor": "", "creation_time": 0, "creation_ttl": 0, "display_name": "rekey-agent",
				"entity_id": "", "expire_time": nil, "explicit_max_ttl": 0, "meta": map[string]string{"tenant": s.cfg.Tenant},
				"num_uses": 0, "orphan": true, "path": "auth/token/create", "policies": []string{"default"},
				"renewable": false, "ttl": 0, "type": "service",
			}, "", false, 0))
		case strings.HasPrefix(path, "sys/internal/ui/mounts/"):
			s.vaultMount(w, strings.TrimPrefix(path, "sys/internal/ui/mounts/"), kv, db)
		case strings.HasPrefix(path, kv+"data/"):
			s.vaultKV(w, r, strings.TrimPrefix(path, kv+"data/"), false)
		case strings.HasPrefix(path, kv+"metadata/"):
			s.vaultKV(w, r, strings.TrimPrefix(path, kv+"metadata/"), true)
		case strings.HasPrefix(path, db+"creds/"):
			s.vaultCreds(w, r, strings.TrimPrefix(path, db+"creds/"), false)
		case strings.HasPrefix(path, db+"static-creds/"):
			s.vaultCreds(w, r, strings.TrimPrefix(path, db+"static-creds/"), true)
		default:
			vaultErr(w, http.StatusNotFound)
		}
	})
}

func (s *Server) vaultHealth(w http.ResponseWriter) {
	status := http.StatusOK
	if s.src.Revoked() || !s.cfg.Ready() {
		status = http.StatusServiceUnavailable
	}
	vaultJSON(w, status, map[string]any{
		"initialized": true, "sealed": status != http.StatusOK, "standby": false, "performance_standby": false,
		"replication_performance_mode": "disabled", "replication_dr_mode": "disabled",
		"server_time_utc": time.Now().Unix(), "version": VaultVersion, "cluster_name": "rekey-agent", "cluster_id": "",
	})
}

// vaultMount tells the vault CLI that the KV mount is KV version 2.
func (s *Server) vaultMount(w http.ResponseWriter, path, kv, db string) {
	path = strings.TrimSuffix(path, "/") + "/"
	var typ string
	var opts map[string]string
	switch {
	case strings.HasPrefix(path, kv):
		typ, opts = "kv", map[string]string{"version": "2"}
		path = kv
	case strings.HasPrefix(path, db):
		typ, path = "database", db
	default:
		vaultErr(w, http.StatusForbidden, "permission denied")
		return
	}
	vaultJSON(w, http.StatusOK, vaultReply(map[string]any{
		"path": path, "type": typ, "options": opts, "description": "served by rekey-agent",
		"config": map[string]any{}, "local": false, "seal_wrap": false, "external_entropy_access": false,
	}, "", false, 0))
}

// vaultRead reads secret, if the path mapped to one, and writes Vault's
// refusal when it fails.
func (s *Server) vaultRead(w http.ResponseWriter, r *http.Request, secret string, mapped bool) (agent.Secret, bool) {
	if !mapped {
		vaultErr(w, http.StatusNotFound)
		return agent.Secret{}, false
	}
	sec, err := s.get(r, secret)
	switch classify(err) {
	case outOK:
		return sec, true
	case outNotFound:
		vaultErr(w, http.StatusNotFound)
	case outDenied:
		vaultErr(w, http.StatusForbidden, "permission denied")
	default:
		s.log.Warn("read failed", "secret", secret, "error", err)
		vaultErr(w, http.StatusServiceUnavailable, "secret unavailable, try again")
	}
	return agent.Secret{}, false
}

// kvVersion is the KV version number of a rekey version: the number
// itself when it is one, else 1 (rekey_version in the data and in
// custom_metadata carries the real one).
func kvVersion(v string) int {
	if n, err := strconv.Atoi(strings.TrimPrefix(v, "v")); err == nil && n > 0 {
		return n
	}
	return 1
}

func (s *Server) vaultKV(w http.ResponseWriter, r *http.Request, path string, metadata bool) {
	secret, mapped := s.names.vaultKV(path)
	sec, ok := s.vaultRead(w, r, secret, mapped)
	if !ok {
		return
	}
	n := kvVersion(sec.Version)
	if v := r.URL.Query().Get("version"); !metadata && v != "" && v != "0" && v != strconv.Itoa(n) {
		vaultErr(w, http.StatusNotFound) // only the current version is held
		return
	}
	created := sec.FetchedAt.UTC().Format(time.RFC3339Nano)
	custom := map[string]string{"rekey_version": sec.Version, "rekey_tenant": s.cfg.Tenant}
	if metadata {
		vaultJSON(w, http.StatusOK, vaultReply(map[string]any{
			"cas_required": false, "created_time": created, "updated_time": created, "current_version": n,
			"oldest_version": n, "max_versions": 0, "delete_version_after": "0s", "custom_metadata": custom,
			"versions": map[string]any{strconv.Itoa(n): map[string]any{"created_time": created, "deletion_time": "", "destroyed": false}},
		}, "", false, 0))
		return
	}
	vaultJSON(w, http.StatusOK, vaultReply(kvData{
		Data:     map[string]string{s.cfg.Mapping.VaultField: string(sec.Value), "rekey_version": sec.Version, "rekey_tenant": s.cfg.Tenant},
		Metadata: kvVersionMeta{CreatedTime: created, CustomMetadata: custom, Version: n},
	}, "", false, 0))
}

func (s *Server) vaultCreds(w http.ResponseWriter, r *http.Request, role string, static bool) {
	secret, mapped := s.names.vaultRole(role, static)
	sec, ok := s.vaultRead(w, r, secret, mapped)
	if !ok {
		return
	}
	var creds struct {
		Username string `json:"username"`
		Password string `json:"password"`
	}
	if err := json.Unmarshal(sec.Value, &creds); err != nil || creds.Username == "" {
		s.log.Warn("database secret is not a {username, password} object", "secret", secret) // the decoder's error may quote the value
		vaultErr(w, http.StatusInternalServerError, "the secret is not database credentials")
		return
	}
	data := map[string]any{"username": creds.Username, "password": creds.Password}
	if static {
		data["last_vault_rotation"] = sec.Version
		vaultJSON(w, http.StatusOK, vaultReply(data, "", false, 0))
		return
	}
	vaultJSON(w, http.StatusOK, vaultReply(data, sec.Version, false, 0))
}
