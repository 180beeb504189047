package orchestrator

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// AdminTokenFile is the file, under the data dir, holding the generated
// admin token.
const AdminTokenFile = "admin.token"

// AdminToken returns the admin token: env if set, else the token in
// <dataDir>/admin.token, created with 32 random bytes (mode 0600) on first
// use.
func AdminToken(env, dataDir string) (string, error) {
	if env = strings.TrimSpace(env); env != "" {
		if len(env) < 16 {
			return "", fmt.Errorf("REKEY_ADMIN_TOKEN must be at least 16 characters")
		}
		return env, nil
	}
	path := filepath.Join(dataDir, AdminTokenFile)
	if b, err := os.ReadFile(path); err == nil {
		tok := strings.TrimSpace(string(b))
		if len(tok) < 16 {
			return "", fmt.Errorf("admin token file %s is too short", path)
		}
		return tok, nil
	} else if !os.IsNotExist(err) {
		return "", fmt.Errorf("read admin token: %w", err)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return "", fmt.Errorf("create data dir: %w", err)
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate admin token: %w", err)
	}
	tok := "rk_admin_" + hex.EncodeToString(b[:])
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("write admin token: %w", err)
	}
	if _, err := f.WriteString(tok + "\n"); err != nil {
		f.Close()
		return "", fmt.Errorf("write admin token: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("write admin token: %w", err)
	}
	return tok, nil
}

// TokenID is a short, non-reversible identifier of a token for audit
// records (the first 12 hex characters of its SHA-256).
func TokenID(token string) string {
	return "tok_" + hashHex(token)[:12]
}
