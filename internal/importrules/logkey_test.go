package importrules

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// slogErrKey finds a slog attribute that names an error "err" (a call
// may span lines, so the pair is what is matched): the project's key for
// errors is "error" (one key, so that queries over the logs find every
// error).
var slogErrKey = regexp.MustCompile(`"err",\s*[A-Za-z_.]*[eE]rr\b`)

// TestLogKeyForErrors: no program code logs an error under "err".
func TestLogKeyForErrors(t *testing.T) {
	root := filepath.Join("..", "..")
	var bad []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != root && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, line := range strings.Split(string(b), "\n") {
			if slogErrKey.MatchString(line) {
				bad = append(bad, path+":"+strconv.Itoa(i+1))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bad {
		t.Errorf(`%s: log errors under the key "error", not "err"`, b)
	}
	if !slogErrKey.MatchString(`log.Warn("x", "err", err)`) || !slogErrKey.MatchString(`"id", id, "err", cerr)`) ||
		slogErrKey.MatchString(`log.Warn("x", "error", err)`) {
		t.Fatal("the pattern does not catch what it should")
	}
}
