package eventbridge

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	ebapi "github.com/aws/aws-sdk-go-v2/service/eventbridge"
	ebtypes "github.com/aws/aws-sdk-go-v2/service/eventbridge/types"
	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/internal/testutil"
	"github.com/rekey-dev/rekey/orchestrator"
	"github.com/rekey-dev/rekey/schemas"
)

// failingBus answers PutEvents with the failed entries it is given, in
// turn, then with success. kumo never reports a failed entry (see
// kumotest), so the publisher's retry is tested against this fake.
type failingBus struct {
	mu    sync.Mutex
	fail  []string // error codes of the next calls' entry
	calls []ebtypes.PutEventsRequestEntry
}

func (f *failingBus) PutEvents(_ context.Context, in *ebapi.PutEventsInput, _ ...func(*ebapi.Options)) (*ebapi.PutEventsOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, in.Entries...)
	if len(f.fail) > 0 {
		code := f.fail[0]
		f.fail = f.fail[1:]
		return &ebapi.PutEventsOutput{FailedEntryCount: 1, Entries: []ebtypes.PutEventsResultEntry{
			{ErrorCode: aws.String(code), ErrorMessage: aws.String("try again")},
		}}, nil
	}
	return &ebapi.PutEventsOutput{Entries: []ebtypes.PutEventsResultEntry{{EventId: aws.String("eb-1")}}}, nil
}

func (f *failingBus) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls)
}

// TestPublisherRetriesFailedEntries: an event whose entry PutEvents
// reports as failed is nak'd and sent again until it goes through, then
// acked; an entry refused for good is terminated, not retried.
func TestPublisherRetriesFailedEntries(t *testing.T) {
	srv := testutil.StartNATS(t, -1, "")
	log := slog.New(slog.DiscardHandler)
	ctx := context.Background()
	bus, err := orchestrator.Connect(ctx, srv.ClientURL(), "publisher-test", orchestrator.NATSConfig{}, log)
	require.NoError(t, err)
	t.Cleanup(bus.Close)
	require.NoError(t, bus.EnsureStreams(ctx))

	fake := &failingBus{fail: []string{"ThrottlingException", "InternalFailure", "MalformedDetail"}}
	cfg := Config{}.withDefaults()
	p := &Publisher{cfg: cfg, eb: fake, bus: bus, log: log, started: make(chan struct{})}
	p.events, err = orchestrator.Register(orchestrator.NewMetrics(), newEventsCounter())
	require.NoError(t, err)
	testutil.Run(t, p)
	<-p.Started()

	publish := func(tenant string) {
		_, err := bus.PublishEvent(ctx, schemas.EventsSubject(tenant, schemas.KindRevocationCompleted), "test",
			schemas.TypeRevocationCompleted, tenant, tenant, schemas.RevocationCompleted{Tenant: tenant, RequestID: "r-" + tenant})
		require.NoError(t, err)
	}
	publish("acme")
	// Throttled, then an internal failure, then through: three calls.
	require.Eventually(t, func() bool { return fake.count() == 3 }, 20*time.Second, 50*time.Millisecond)
	require.Equal(t, "rekey revocation completed", aws.ToString(fake.calls[2].DetailType))
	require.Equal(t, "rekey", aws.ToString(fake.calls[2].Source))
	require.Equal(t, "default", aws.ToString(fake.calls[2].EventBusName))
	require.JSONEq(t, aws.ToString(fake.calls[0].Detail), aws.ToString(fake.calls[2].Detail))

	// Refused for good: one call, terminated.
	publish("globex")
	require.Eventually(t, func() bool { return fake.count() == 4 }, 10*time.Second, 50*time.Millisecond)
	c, err := bus.JS.Consumer(ctx, schemas.StreamEvents, PublisherDurable)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		info, err := c.Info(ctx)
		require.NoError(t, err)
		return info.NumAckPending == 0 && info.NumRedelivered == 0 && info.AckFloor.Stream == 2
	}, 10*time.Second, 50*time.Millisecond)
	time.Sleep(300 * time.Millisecond)
	require.Equal(t, 4, fake.count(), "an entry refused for good was sent again")
}
