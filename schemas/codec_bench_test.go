package schemas_test

import (
	"testing"
	"time"

	"github.com/rekey-dev/rekey/schemas"
)

func BenchmarkDecodeInvalidation(b *testing.B) {
	ev, _ := schemas.NewEvent("rekeyd/fanout", schemas.TypeInvalidation, "acme", "acme/openai-key", schemas.Invalidation{
		Tenant: "acme", Secret: "openai-key", Kind: schemas.InvalidationRotated, Version: "42", Reason: "requested through the admin API",
		RequestID: schemas.NewULID(), PublishedAt: time.Now(),
	})
	data, _ := ev.Encode()
	b.ReportAllocs()
	for b.Loop() {
		e, err := schemas.Decode(data)
		if err != nil {
			b.Fatal(err)
		}
		var inv schemas.Invalidation
		if err := e.DecodeData(schemas.TypeInvalidation, &inv); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeAck(b *testing.B) {
	ack := schemas.InvalidationAck{Tenant: "acme", Secret: "openai-key", Agent: "planner-1", Version: "42", RequestID: schemas.NewULID(), ReceivedAt: time.Now(), DroppedAt: time.Now()}
	b.ReportAllocs()
	for b.Loop() {
		ev, err := schemas.NewEvent("rekey-agent/planner-1", schemas.TypeInvalidationAck, "acme", "acme/openai-key", ack)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := ev.Encode(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeAsInvalidation(b *testing.B) {
	ev, _ := schemas.NewEvent("rekeyd/fanout", schemas.TypeInvalidation, "acme", "acme/openai-key", schemas.Invalidation{
		Tenant: "acme", Secret: "openai-key", Kind: schemas.InvalidationRotated, Version: "42", Reason: "requested through the admin API",
		RequestID: schemas.NewULID(), PublishedAt: time.Now(),
	})
	data, _ := ev.Encode()
	b.ReportAllocs()
	for b.Loop() {
		var inv schemas.Invalidation
		if _, err := schemas.DecodeAs(data, schemas.TypeInvalidation, &inv); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeNewAck(b *testing.B) {
	ack := schemas.InvalidationAck{Tenant: "acme", Secret: "openai-key", Agent: "planner-1", Version: "42", RequestID: schemas.NewULID(), ReceivedAt: time.Now(), DroppedAt: time.Now()}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := schemas.EncodeNew("rekey-agent/planner-1", schemas.TypeInvalidationAck, "acme", "acme/openai-key", ack); err != nil {
			b.Fatal(err)
		}
	}
}
