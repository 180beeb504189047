package schemas

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// DecodeStrict decodes one JSON value into v, refusing unknown fields,
// trailing data and, for every name in required, a field that is missing
// or null. Every decode of stored state goes through it, so that an entry
// written by anyone but its owner (or by an older or newer rekey) is
// refused instead of read with defaults.
func DecodeStrict(data []byte, v any, required ...string) error {
	if len(required) > 0 {
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(data, &fields); err != nil {
			return fmt.Errorf("%w: not a JSON object", ErrMalformed)
		}
		for _, f := range required {
			if raw, ok := fields[f]; !ok || string(raw) == "null" {
				return fmt.Errorf("%w: field %q missing", ErrMalformed, f)
			}
		}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %s", ErrMalformed, strictError(err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: data after the JSON value", ErrMalformed)
	}
	return nil
}

// strictError describes a decoding error without quoting the data.
func strictError(err error) string {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		return fmt.Sprintf("field %q has the wrong type", typeErr.Field)
	case errors.As(err, &syntaxErr):
		return fmt.Sprintf("invalid JSON at offset %d", syntaxErr.Offset)
	case strings.HasPrefix(err.Error(), "json: unknown field"):
		return strings.TrimPrefix(err.Error(), "json: ")
	default:
		return "invalid JSON"
	}
}
