// Package configkit decodes rekey's YAML configuration strictly and names
// the wrong field in its errors: the FieldError that every Validate returns
// and DecodeSection, which trigger and backend packages use on their own
// section. It is a leaf (standard library and goccy/go-yaml), so backend
// packages (handlers/<name>) decode their section without importing
// orchestrator, which re-exports these names.
package configkit

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
)

// FieldError names the configuration field that is wrong.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// FieldErrorf returns a *FieldError; trigger and backend packages use it in
// their Validate so that DecodeSection can prefix the field.
func FieldErrorf(field, format string, args ...any) error {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// Unmarshal strictly decodes src into v, durations written as Go
// durations (500ms, 30s, 2m, 1h). A duration that does not parse is a
// *FieldError naming its field; other errors describe the position without
// quoting the source (a line could hold an inline credential).
func Unmarshal(src []byte, v any) error {
	err := yaml.UnmarshalWithOptions(src, v, yaml.Strict(), yaml.CustomUnmarshaler[time.Duration](parseDuration))
	var bd *badDuration
	if errors.As(err, &bd) {
		return FieldErrorf(yamlPathOf(src, bd.value), "%q is not a duration (use 500ms, 30s, 2m, 1h)", bd.value)
	}
	if err != nil {
		return errors.New(describeYAMLError(src, err))
	}
	return nil
}

// DecodeSection strictly decodes one raw section of the configuration (a
// trigger's or a backend's) into v and validates it. Errors name the field
// with prefix, e.g. "triggers.siem.sources.prod.auth.hmac.secret". An empty
// section decodes nothing and only validates v's defaults.
func DecodeSection(prefix string, raw []byte, v interface{ Validate() error }) error {
	if len(raw) > 0 {
		if err := Unmarshal(raw, v); err != nil {
			if fe := (*FieldError)(nil); errors.As(err, &fe) {
				return &FieldError{Field: prefix + "." + fe.Field, Reason: fe.Reason}
			}
			return fmt.Errorf("%s: %w", prefix, err)
		}
	}
	if err := v.Validate(); err != nil {
		return prefixFields(prefix, err)
	}
	return nil
}

// prefixFields puts prefix in front of the field of every FieldError in err.
func prefixFields(prefix string, err error) error {
	var errs []error
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		errs = joined.Unwrap()
	} else {
		errs = []error{err}
	}
	out := make([]error, 0, len(errs))
	for _, e := range errs {
		var fe *FieldError
		if errors.As(e, &fe) {
			out = append(out, &FieldError{Field: prefix + "." + fe.Field, Reason: fe.Reason})
			continue
		}
		out = append(out, fmt.Errorf("%s: %w", prefix, e))
	}
	return errors.Join(out...)
}

type badDuration struct{ value string }

func (e *badDuration) Error() string { return fmt.Sprintf("%q is not a duration", e.value) }

func parseDuration(d *time.Duration, b []byte) error {
	v, err := time.ParseDuration(strings.Trim(strings.TrimSpace(string(b)), `"'`))
	if err != nil {
		return &badDuration{value: strings.TrimSpace(string(b))}
	}
	*d = v
	return nil
}

// yamlPathOf returns the dotted path of the first scalar equal to value,
// so that a decode error can name its field.
func yamlPathOf(src []byte, value string) string {
	f, err := parser.ParseBytes(src, 0)
	if err != nil {
		return "(unknown field)"
	}
	v := &pathFinder{value: value}
	for _, doc := range f.Docs {
		ast.Walk(v, doc)
	}
	if v.path == "" {
		return "(unknown field)"
	}
	return strings.TrimPrefix(v.path, "$.")
}

type pathFinder struct{ value, path string }

func (p *pathFinder) Visit(n ast.Node) ast.Visitor {
	if p.path != "" {
		return nil
	}
	if sn, ok := n.(ast.ScalarNode); ok && fmt.Sprint(sn.GetValue()) == p.value {
		p.path = n.GetPath()
	}
	return p
}

// describeYAMLError formats a decode error without quoting the source (a
// line could hold an inline credential) and names the field at the error's
// position when it can.
func describeYAMLError(src []byte, err error) string {
	msg := yaml.FormatError(err, false, false)
	var line, col int
	if _, serr := fmt.Sscanf(msg, "[%d:%d]", &line, &col); serr != nil {
		return msg
	}
	f, perr := parser.ParseBytes(src, 0)
	if perr != nil {
		return msg
	}
	v := &positionFinder{line: line, col: col}
	for _, doc := range f.Docs {
		ast.Walk(v, doc)
	}
	if v.path == "" {
		return msg
	}
	return strings.TrimPrefix(v.path, "$.") + ": " + msg
}

type positionFinder struct {
	line, col int
	path      string
}

func (p *positionFinder) Visit(n ast.Node) ast.Visitor {
	if p.path != "" {
		return nil
	}
	if tk := n.GetToken(); tk != nil && tk.Position.Line == p.line && tk.Position.Column == p.col {
		p.path = n.GetPath()
		return nil
	}
	return p
}
