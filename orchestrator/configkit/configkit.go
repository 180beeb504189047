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
	"iter"
	"reflect"
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
		return FieldErrorf(badDurationPath(src, reflect.TypeOf(v), bd.value), "%q is not a duration (use 500ms, 30s, 2m, 1h)", bd.value)
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

// badDurationPath returns the dotted path of the field of src that failed
// to decode as a duration with the text value: the first scalar, in the
// order of the document, whose destination in t is a time.Duration and
// that does not parse. The decoder's error does not say where it was (a
// custom unmarshaler's error carries no token), and the text alone could
// name another field holding the same text.
func badDurationPath(src []byte, t reflect.Type, value string) string {
	f, err := parser.ParseBytes(src, 0)
	if err != nil {
		return "(unknown field)"
	}
	var first ast.Node // a bad duration with another text, if none has value
	for _, doc := range f.Docs {
		for n := range badDurations(doc.Body, t) {
			if strings.TrimSpace(n.String()) == value {
				return strings.TrimPrefix(n.GetPath(), "$.")
			}
			if first == nil {
				first = n
			}
		}
	}
	if first == nil {
		return "(unknown field)"
	}
	return strings.TrimPrefix(first.GetPath(), "$.")
}

var durationType = reflect.TypeFor[time.Duration]()

// badDurations yields the scalars under n that decode into a
// time.Duration of t and do not parse, in the order of the document.
func badDurations(n ast.Node, t reflect.Type) iter.Seq[ast.Node] {
	return func(yield func(ast.Node) bool) { walkBadDurations(n, t, yield) }
}

func walkBadDurations(n ast.Node, t reflect.Type, yield func(ast.Node) bool) bool {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch n := n.(type) {
	case *ast.AnchorNode:
		return walkBadDurations(n.Value, t, yield)
	case *ast.TagNode:
		return walkBadDurations(n.Value, t, yield)
	case *ast.MappingNode:
		for _, mv := range n.Values {
			if !walkBadDurations(mv, t, yield) {
				return false
			}
		}
	case *ast.MappingValueNode:
		if ft, ok := fieldType(t, n.Key); ok {
			return walkBadDurations(n.Value, ft, yield)
		}
	case *ast.AliasNode:
		// its anchor, earlier in the document, was looked at
	case *ast.SequenceNode:
		if t.Kind() == reflect.Slice || t.Kind() == reflect.Array {
			for _, e := range n.Values {
				if !walkBadDurations(e, t.Elem(), yield) {
					return false
				}
			}
		}
	case ast.ScalarNode:
		var d time.Duration
		if t == durationType && parseDuration(&d, []byte(n.String())) != nil {
			return yield(n)
		}
	}
	return true
}

// fieldType is the type a YAML key decodes into within t: a map's values,
// or the struct field named by its yaml tag (else its lower-cased name).
func fieldType(t reflect.Type, key ast.MapKeyNode) (reflect.Type, bool) {
	switch t.Kind() {
	case reflect.Map:
		return t.Elem(), true
	case reflect.Struct:
		k, ok := key.(ast.ScalarNode)
		if !ok {
			return nil, false
		}
		name := fmt.Sprint(k.GetValue())
		for i := range t.NumField() {
			f := t.Field(i)
			tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if tag == "" {
				tag = strings.ToLower(f.Name)
			}
			if tag == name && f.IsExported() {
				return f.Type, true
			}
		}
	}
	return nil, false
}

// describeYAMLError formats a decode error without quoting the source (a
// line could hold an inline credential) and names the field at the error's
// position when it can.
func describeYAMLError(src []byte, err error) string {
	msg := yaml.FormatError(err, false, false)
	var yerr yaml.Error
	if !errors.As(err, &yerr) || yerr.GetToken() == nil {
		return msg
	}
	pos := yerr.GetToken().Position
	f, perr := parser.ParseBytes(src, 0)
	if perr != nil {
		return msg
	}
	v := &positionFinder{line: pos.Line, col: pos.Column}
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
