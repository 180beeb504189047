package schemas

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	fastjson "github.com/goccy/go-json"
)

// SpecVersion is the CloudEvents version rekey speaks.
const SpecVersion = "1.0"

// CloudEvents types, one per payload type below.
const (
	TypeRotationRequested     = "rekey.rotation.requested.v1"
	TypeRotationCompleted     = "rekey.rotation.completed.v1"
	TypeRotationFailed        = "rekey.rotation.failed.v1"
	TypeRevocationRequested   = "rekey.revocation.requested.v1"
	TypeRevocationStarted     = "rekey.revocation.started.v1"
	TypeRevocationCompleted   = "rekey.revocation.completed.v1"
	TypeTenantRestored        = "rekey.tenant.restored.v1"
	TypeInvalidation          = "rekey.invalidation.v1"
	TypeInvalidationAck       = "rekey.invalidation.ack.v1"
	TypeUsageReport           = "rekey.usage.report.v1"
	TypeAuditRecord           = "rekey.audit.record.v1"
	TypeAgentPresence         = "rekey.agent.presence.v1"
	TypeInvalidationConfirmed = "rekey.invalidation.confirmed.v1"
	TypeExternalChange        = "rekey.external.change.v1"
	TypeRevocationProgress    = "rekey.revocation.progress.v1"
	TypeLeakReport            = "rekey.leak.report.v1"
)

// ErrMalformed is returned (wrapped) when a message is not a valid envelope
// or its data does not match its type.
var ErrMalformed = errors.New("malformed event")

// Event is a CloudEvents 1.0 event in structured JSON mode. Its ID is a ULID
// and is also used as the Nats-Msg-Id header, so JetStream drops duplicates.
type Event struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Source          string          `json:"source"`
	Type            string          `json:"type"`
	Time            time.Time       `json:"time"`
	Subject         string          `json:"subject,omitempty"`
	DataContentType string          `json:"datacontenttype,omitempty"`
	Tenant          string          `json:"tenant"`
	Data            json.RawMessage `json:"data"`
}

// NewEvent builds an envelope around data with a fresh ULID and the current
// time. subject is "<tenant>/<secret>" or "<tenant>" for tenant-wide events.
func NewEvent(source, typ, tenant, subject string, data any) (Event, error) {
	raw, err := json.Marshal(data)
	if err != nil {
		return Event{}, fmt.Errorf("encode %s data: %w", typ, err)
	}
	return Event{
		SpecVersion:     SpecVersion,
		ID:              NewULID(),
		Source:          source,
		Type:            typ,
		Time:            time.Now().UTC(),
		Subject:         subject,
		DataContentType: "application/json",
		Tenant:          tenant,
		Data:            raw,
	}, nil
}

// WithID returns a copy of e with its ID replaced; use it for IDs derived
// from the input (a webhook fingerprint, a schedule tick) so that duplicates
// collapse in JetStream.
func (e Event) WithID(id string) Event {
	e.ID = id
	return e
}

// Validate checks the envelope's required attributes.
func (e *Event) Validate() error {
	switch {
	case e.SpecVersion != SpecVersion:
		return fmt.Errorf("specversion %q, want %q: %w", e.SpecVersion, SpecVersion, ErrMalformed)
	case e.ID == "":
		return fmt.Errorf("id is empty: %w", ErrMalformed)
	case e.Source == "":
		return fmt.Errorf("source is empty: %w", ErrMalformed)
	case e.Type == "":
		return fmt.Errorf("type is empty: %w", ErrMalformed)
	case len(e.Data) == 0:
		return fmt.Errorf("data is empty: %w", ErrMalformed)
	}
	if err := ValidateID("tenant", e.Tenant); err != nil {
		return fmt.Errorf("tenant: %w: %w", err, ErrMalformed)
	}
	return nil
}

// Decode parses a structured-mode CloudEvent and validates its envelope.
func Decode(b []byte) (Event, error) {
	var e Event
	if err := json.Unmarshal(b, &e); err != nil {
		return Event{}, fmt.Errorf("decode event: %v: %w", err, ErrMalformed)
	}
	if err := e.Validate(); err != nil {
		return Event{}, err
	}
	return e, nil
}

// DecodeData parses the event's data into v after checking its type.
func (e *Event) DecodeData(typ string, v any) error {
	if e.Type != typ {
		return fmt.Errorf("event %s has type %q, want %q: %w", e.ID, e.Type, typ, ErrMalformed)
	}
	if err := json.Unmarshal(e.Data, v); err != nil {
		return fmt.Errorf("decode %s data of event %s: %v: %w", typ, e.ID, err, ErrMalformed)
	}
	if val, ok := v.(interface{ Validate() error }); ok {
		if err := val.Validate(); err != nil {
			if !errors.Is(err, ErrMalformed) {
				err = fmt.Errorf("%w: %w", err, ErrMalformed)
			}
			return fmt.Errorf("event %s: %w", e.ID, err)
		}
	}
	return nil
}

// Encode returns the JSON form of the event.
func (e Event) Encode() ([]byte, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("encode event %s: %w", e.ID, err)
	}
	return b, nil
}

// ULIDs: 48 bits of milliseconds then 80 random bits, Crockford base32.
// Within one millisecond the random part is incremented, so IDs made by one
// process sort in creation order.
const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

var ulidState struct {
	sync.Mutex
	ms uint64
	hi uint16
	lo uint64
}

// NewULID returns a new, monotonic within this process, ULID string.
func NewULID() string {
	ms := uint64(time.Now().UnixMilli())
	ulidState.Lock()
	if ms <= ulidState.ms {
		ms = ulidState.ms
		ulidState.lo++
		if ulidState.lo == 0 {
			ulidState.hi++
		}
	} else {
		var b [10]byte
		if _, err := rand.Read(b[:]); err != nil {
			panic(fmt.Sprintf("crypto/rand: %v", err))
		}
		ulidState.ms = ms
		ulidState.hi = binary.BigEndian.Uint16(b[:2])
		ulidState.lo = binary.BigEndian.Uint64(b[2:])
	}
	hi, lo := ulidState.hi, ulidState.lo
	ulidState.Unlock()

	var id [16]byte
	id[0] = byte(ms >> 40)
	id[1] = byte(ms >> 32)
	id[2] = byte(ms >> 24)
	id[3] = byte(ms >> 16)
	id[4] = byte(ms >> 8)
	id[5] = byte(ms)
	binary.BigEndian.PutUint16(id[6:8], hi)
	binary.BigEndian.PutUint64(id[8:], lo)
	return encodeULID(id)
}

func encodeULID(id [16]byte) string {
	// 128 bits -> 26 characters; the first holds the top 3 bits.
	var out [26]byte
	var acc uint64
	var bits uint
	pos := 25
	for i := 15; i >= 0; i-- {
		acc |= uint64(id[i]) << bits
		bits += 8
		for bits >= 5 {
			out[pos] = crockford[acc&31]
			pos--
			acc >>= 5
			bits -= 5
		}
	}
	out[0] = crockford[acc&31]
	return string(out[:])
}

// DecodeAs parses a structured-mode CloudEvent of type typ and its data
// into v in a single pass (Decode then DecodeData reads the data twice),
// then validates the envelope and the data. It is for hot paths: agents
// decoding invalidations, fanout decoding acks. It uses goccy/go-json,
// about four times faster than encoding/json here and compatible with it
// (FuzzDecodeAsMatchesDecode holds it to Decode). The returned Event has
// no Data.
func DecodeAs[T any](b []byte, typ string, v *T) (Event, error) {
	var te typedEvent[*T]
	te.Data = v
	if err := fastjson.Unmarshal(b, &te); err != nil {
		return Event{}, fmt.Errorf("decode %s event: %v: %w", typ, err, ErrMalformed)
	}
	e := Event{SpecVersion: te.SpecVersion, ID: te.ID, Source: te.Source, Type: te.Type, Time: te.Time,
		Subject: te.Subject, DataContentType: te.DataContentType, Tenant: te.Tenant, Data: json.RawMessage("{}")}
	if err := e.Validate(); err != nil {
		return Event{}, err
	}
	e.Data = nil
	if e.Type != typ {
		return Event{}, fmt.Errorf("event %s has type %q, want %q: %w", e.ID, e.Type, typ, ErrMalformed)
	}
	if te.Data == nil {
		return Event{}, fmt.Errorf("event %s: data is empty: %w", e.ID, ErrMalformed)
	}
	if val, ok := any(v).(interface{ Validate() error }); ok {
		if err := val.Validate(); err != nil {
			return Event{}, fmt.Errorf("event %s: %w: %w", e.ID, err, ErrMalformed)
		}
	}
	return e, nil
}

// EncodeNew builds a new event around data (fresh ULID, current time) and
// encodes it in a single pass (NewEvent then Encode marshals the data
// twice), with goccy/go-json. For hot paths such as agents' acks. It
// returns the event id.
func EncodeNew[T any](source, typ, tenant, subject string, data T) (string, []byte, error) {
	te := typedEvent[T]{SpecVersion, NewULID(), source, typ, time.Now().UTC(), subject, "application/json", tenant, data}
	b, err := fastjson.Marshal(te)
	if err != nil {
		return "", nil, fmt.Errorf("encode %s event: %w", typ, err)
	}
	return te.ID, b, nil
}

// typedEvent is Event with typed data, for single-pass encoding and
// decoding on hot paths (DecodeAs, EncodeNew).
type typedEvent[T any] struct {
	SpecVersion     string    `json:"specversion"`
	ID              string    `json:"id"`
	Source          string    `json:"source"`
	Type            string    `json:"type"`
	Time            time.Time `json:"time"`
	Subject         string    `json:"subject,omitempty"`
	DataContentType string    `json:"datacontenttype,omitempty"`
	Tenant          string    `json:"tenant"`
	Data            T         `json:"data"`
}
