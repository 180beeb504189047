package importrules

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path"
	"slices"
	"strings"
	"testing"
)

// module is rekey's module path; packages outside it are not ours.
const module = "github.com/rekey-dev/rekey"

// The three groups that meet only on subjects defined in schemas.
var groups = []string{"triggers", "handlers", "fanout"}

// schemasAllowed are the packages outside the standard library that
// schemas may import, each with its reason. schemas is what agents and
// third-party programs import, so it stays light.
var schemasAllowed = map[string]string{
	"github.com/goccy/go-json": "the fast path of schemas.DecodeAs (envelope.go), which agents' ack and " +
		"invalidation decoding uses on hot paths; FuzzDecodeAsMatchesDecode holds it to encoding/json",
}

// backendAllowed are the rekey packages a backend (handlers/<name>) may
// import besides handlers, schemas and its own subpackages, each with its
// reason. orchestrator is not among them: a backend reads rekey's config
// through handlers.RekeyConfig.
var backendAllowed = map[string]string{
	module + "/orchestrator/configkit": "strict YAML decoding of the backend's section and FieldError; a leaf",
}

// serverLeaves are rekey packages any server-side package may import (not
// the agent, which stays light), each with its reason; they import the
// standard library and serverLeafImports only, which the rules check.
var serverLeaves = map[string]string{
	module + "/internal/retry":    "backoff delays, Sleep(ctx), default timeouts, shared by every retry loop",
	module + "/internal/agentreq": "agents' request/reply subjects served per tenant, replying only to the tenant's inboxes (fetch, resync)",
}

// serverLeafImports are what a server-side leaf may import besides the
// standard library.
var serverLeafImports = []string{"github.com/nats-io/nats.go", module + "/schemas"}

// binaries must not link the test framework (nor anything built on it).
var binaries = []string{module + "/cmd/rekeyd", module + "/cmd/rekeyctl", module + "/cmd/rekey-agent"}

// pkg is what the rules read of `go list -json`.
type pkg struct {
	ImportPath   string
	Standard     bool
	Imports      []string
	TestImports  []string
	XTestImports []string
	Deps         []string
}

// TestImportRules lists every package of the module with its dependencies
// and checks the rules of DESIGN.md; each failure names the importing
// package, the import and the rule.
func TestImportRules(t *testing.T) {
	pkgs, err := goList(module + "/...")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := pkgs[module+"/cmd/rekeyd"]; !ok {
		t.Fatalf("go list %s/... did not list %s/cmd/rekeyd: not run inside rekey's module?", module, module)
	}
	for _, v := range check(pkgs) {
		t.Error(v)
	}
}

// TestImportRulesCatch feeds check the violations this test was written
// against, so that it is known to fail when one comes back.
func TestImportRulesCatch(t *testing.T) {
	std := func(p string) *pkg { return &pkg{ImportPath: p, Standard: true} }
	own := func(p string, imports ...string) *pkg {
		full := func(s string) string {
			if strings.Contains(strings.SplitN(s, "/", 2)[0], ".") || s == "testing" {
				return s
			}
			return module + "/" + s
		}
		q := &pkg{ImportPath: full(p)}
		for _, i := range imports {
			q.Imports = append(q.Imports, full(i))
		}
		return q
	}
	pkgs := map[string]*pkg{}
	for _, p := range []*pkg{
		std("testing"), std("fmt"),
		{ImportPath: "github.com/goccy/go-json"}, {ImportPath: "github.com/goccy/go-yaml"},
		own("schemas", "fmt", "github.com/goccy/go-json", "github.com/goccy/go-yaml"),
		own("orchestrator", "schemas"),
		own("orchestrator/configkit"),
		own("internal/testutil", "testing"),
		own("internal/bench", "internal/testutil"),
		own("triggers/api", "orchestrator"),
		own("triggers/api/tenantauth", "triggers/api"),
		own("triggers/siem", "triggers/api/tenantauth"),
		own("handlers", "orchestrator"),
		own("handlers/vault", "handlers", "orchestrator", "orchestrator/configkit"),
		own("fanout", "handlers"),
		own("cmd/rekeyd", "internal/bench"),
	} {
		pkgs[p.ImportPath] = p
	}
	pkgs[module+"/cmd/rekeyd"].Deps = []string{module + "/internal/bench", module + "/internal/testutil", "testing"}
	got := strings.Join(check(pkgs), "\n")
	for _, want := range []string{
		"schemas imports github.com/goccy/go-yaml",
		"triggers/siem imports triggers/api/tenantauth",
		"handlers/vault imports orchestrator:",
		"fanout imports handlers",
		"internal/bench imports internal/testutil",
		"cmd/rekeyd links testing (internal/testutil imports it)",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("check did not report %q; it reported:\n%s", want, got)
		}
	}
	for _, allowed := range []string{"github.com/goccy/go-json", "triggers/api/tenantauth imports triggers/api", "imports orchestrator/configkit", "handlers imports orchestrator"} {
		if strings.Contains(got, allowed) {
			t.Errorf("check reported an allowed import (%s):\n%s", allowed, got)
		}
	}
}

// goList runs `go list -deps -json` on patterns and returns the packages
// by import path.
func goList(patterns ...string) (map[string]*pkg, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("go", append([]string{"list", "-deps", "-json"}, patterns...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go list -deps -json %s: %w\n%s", strings.Join(patterns, " "), err, stderr.String())
	}
	pkgs := map[string]*pkg{}
	dec := json.NewDecoder(&stdout)
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			return pkgs, nil
		} else if err != nil {
			return nil, fmt.Errorf("go list output: %w", err)
		}
		pkgs[p.ImportPath] = &p
	}
}

// check returns one line per broken rule, sorted.
func check(pkgs map[string]*pkg) []string {
	var out []string
	fail := func(from, imp, rule string) {
		out = append(out, fmt.Sprintf("%s imports %s: %s", rel(from), rel(imp), rule))
	}
	for _, p := range pkgs {
		from, ok := ours(p.ImportPath)
		if !ok {
			continue
		}
		tests := slices.Concat(p.TestImports, p.XTestImports)
		for _, imp := range p.Imports {
			to, ours := ours(imp)
			switch {
			case from == "schemas" && !ours && !isStd(pkgs, imp):
				if _, ok := schemasAllowed[imp]; !ok {
					fail(p.ImportPath, imp, "schemas imports the standard library only (DESIGN.md), besides schemasAllowed")
				}
			case serverLeaves[p.ImportPath] != "" && !isStd(pkgs, imp) && !slices.Contains(serverLeafImports, imp):
				fail(p.ImportPath, imp, "a server-side leaf imports the standard library and serverLeafImports only")
			case !ours:
				continue
			case serverLeaves[module+"/"+to] != "" && !under(from, "fanout/agent"):
				continue
			case isKit(to) && !isKit(from):
				fail(p.ImportPath, imp, "test kits (internal/testutil, packages named *test) are for tests only; "+
					"a program's code uses a helper that does not import testing (e.g. internal/natsrun)")
			case crossGroup(from, to):
				fail(p.ImportPath, imp, "triggers, handlers and fanout never import each other; they meet on subjects defined in schemas (DESIGN.md)")
			case otherKind(from, to):
				fail(p.ImportPath, imp, "a trigger kind does not import another; share through a leaf package (e.g. orchestrator/apiauth)")
			case isBackend(from) && !backendMay(from, to):
				fail(p.ImportPath, imp, "a backend (handlers/<name>) imports handlers and schemas only (DESIGN.md), besides backendAllowed")
			case under(from, "orchestrator") && !under(to, "orchestrator") && to != "schemas":
				fail(p.ImportPath, imp, "orchestrator imports schemas only of rekey: cmd/ builds the components and hands them to Run")
			case under(from, "fanout/agent") && !under(to, "fanout/agent") && to != "schemas":
				fail(p.ImportPath, imp, "the agent imports schemas only of rekey, so that embedding it costs nothing of the server side")
			}
		}
		for _, imp := range tests {
			to, ours := ours(imp)
			if ours && crossGroup(from, to) && !isKit(to) {
				fail(p.ImportPath, imp, "(in tests) triggers, handlers and fanout import each other's test kits only")
			}
		}
	}
	for _, bin := range binaries {
		p, ok := pkgs[bin]
		if !ok {
			continue
		}
		for _, dep := range p.Deps {
			if d := pkgs[dep]; dep == "testing" || (d != nil && isKitPath(dep)) {
				out = append(out, fmt.Sprintf("%s links %s (%s): rekeyd and rekeyctl do not link the test framework",
					rel(bin), rel(dep), strings.Join(importersOf(pkgs, p.Deps, dep), ", ")))
			}
		}
	}
	slices.Sort(out)
	return out
}

// importersOf names the packages among deps that import dep directly.
func importersOf(pkgs map[string]*pkg, deps []string, dep string) []string {
	var out []string
	for _, d := range deps {
		if p := pkgs[d]; p != nil && slices.Contains(p.Imports, dep) {
			out = append(out, rel(d)+" imports it")
		}
	}
	return out
}

// ours returns the path of a rekey package relative to the module.
func ours(importPath string) (string, bool) {
	if importPath == module {
		return "", true
	}
	return strings.CutPrefix(importPath, module+"/")
}

func rel(importPath string) string {
	if r, ok := ours(importPath); ok {
		return r
	}
	return importPath
}

func isStd(pkgs map[string]*pkg, importPath string) bool {
	if p := pkgs[importPath]; p != nil {
		return p.Standard
	}
	return !strings.Contains(strings.SplitN(importPath, "/", 2)[0], ".")
}

// under reports whether rel is dir or inside it.
func under(rel, dir string) bool { return rel == dir || strings.HasPrefix(rel, dir+"/") }

func group(rel string) string {
	for _, g := range groups {
		if under(rel, g) {
			return g
		}
	}
	return ""
}

func crossGroup(from, to string) bool {
	gf, gt := group(from), group(to)
	return gf != "" && gt != "" && gf != gt
}

// kind is the trigger kind of a package under triggers/, "" otherwise.
func kind(rel string) string {
	if !under(rel, "triggers") || rel == "triggers" {
		return ""
	}
	return strings.Split(rel, "/")[1]
}

func otherKind(from, to string) bool {
	kf, kt := kind(from), kind(to)
	return kf != "" && kt != "" && kf != kt
}

// isKit reports whether a rekey package is a test kit: internal/testutil,
// or a package whose name ends in "test" (vaulttest, backendtest ...).
func isKit(rel string) bool {
	return under(rel, "internal/testutil") || strings.HasSuffix(path.Base(rel), "test")
}

func isKitPath(importPath string) bool {
	r, ok := ours(importPath)
	return ok && isKit(r)
}

// isBackend reports whether rel is a backend package, handlers/<name> or
// below, test kits aside.
func isBackend(rel string) bool {
	return under(rel, "handlers") && rel != "handlers" && !isKit(rel)
}

func backendMay(from, to string) bool {
	own := strings.Join(strings.Split(from, "/")[:2], "/")
	if to == "handlers" || to == "schemas" || under(to, own) {
		return true
	}
	_, ok := backendAllowed[module+"/"+to]
	return ok
}
