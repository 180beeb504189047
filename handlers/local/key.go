package local

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// maxKeyFile bounds what LoadOrCreateKey reads: a key file is one base64 line.
const maxKeyFile = 1024

// ParseKey decodes a base64 (standard alphabet, padded or not) AES-256 key.
// Its errors never show the input.
func ParseKey(b64 string) ([]byte, error) {
	s := strings.TrimSpace(b64)
	enc := base64.StdEncoding
	if !strings.HasSuffix(s, "=") {
		enc = base64.RawStdEncoding
	}
	key, err := enc.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("key is not base64: %w", err)
	}
	if len(key) != KeySize {
		clear(key)
		return nil, fmt.Errorf("key is %d bytes, want %d", len(key), KeySize)
	}
	return key, nil
}

// LoadOrCreateKey reads the base64 key in path or, when the file does not
// exist, creates it with a new random key: mode 0600, in a parent directory
// created 0700. A key file that group or others may access, or that does not
// hold a 32-byte key, is refused.
func LoadOrCreateKey(path string) ([]byte, error) {
	key, err := readKeyFile(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}

	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("local: create key directory %s: %w", dir, err)
	}
	key = make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("local: create key file %s: random: %w", path, err)
	}
	data := []byte(base64.StdEncoding.EncodeToString(key) + "\n")
	defer clear(data)

	err = createExclusive(dir, path, data)
	if errors.Is(err, fs.ErrExist) {
		// Another process created it first: use theirs.
		clear(key)
		return readKeyFile(path)
	}
	if err != nil {
		clear(key)
		return nil, fmt.Errorf("local: create key file %s: %w", path, err)
	}
	return key, nil
}

// createExclusive writes data to a temporary file in dir and links it to
// path, so that no reader ever sees a partly written key. It returns an error
// wrapping fs.ErrExist if path already exists.
func createExclusive(dir, path string, data []byte) error {
	tmp, err := os.CreateTemp(dir, ".rekey-key-*") // mode 0600
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil && runtime.GOOS != "windows" {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	err = os.Link(tmp.Name(), path)
	if err == nil || errors.Is(err, fs.ErrExist) {
		return err
	}
	// No hard links on this file system: fall back to an exclusive create.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// readKeyFile reads and checks an existing key file. A missing file is an
// error wrapping fs.ErrNotExist.
func readKeyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("local: open key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("local: key file %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("local: key file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 && runtime.GOOS != "windows" {
		return nil, fmt.Errorf("local: key file %s has mode %04o: group and others must have no access (chmod 600 %s)", path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	defer clear(data)
	if err != nil {
		return nil, fmt.Errorf("local: read key file %s: %w", path, err)
	}
	if len(data) > maxKeyFile {
		return nil, fmt.Errorf("local: key file %s is larger than %d bytes", path, maxKeyFile)
	}
	key, err := ParseKey(string(data))
	if err != nil {
		return nil, fmt.Errorf("local: key file %s: %w", path, err)
	}
	return key, nil
}
