package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"golang.org/x/sync/errgroup"
)

// Component is a long-running part of rekey. Run returns nil when ctx ends
// and cleans up before returning.
type Component interface {
	Run(ctx context.Context) error
}

// Named pairs a component with the name used in logs and errors.
type Named struct {
	Name      string
	Component Component
}

// RunAll runs every component until ctx ends or one of them fails; a
// failure cancels the others. It returns once all have returned.
func RunAll(ctx context.Context, log *slog.Logger, comps ...Named) error {
	g, ctx := errgroup.WithContext(ctx)
	for _, c := range comps {
		g.Go(func() error {
			log.Debug("component starting", "component", c.Name)
			err := c.Component.Run(ctx)
			if err != nil && !errors.Is(err, context.Canceled) {
				return fmt.Errorf("%s: %w", c.Name, err)
			}
			log.Debug("component stopped", "component", c.Name)
			return nil
		})
	}
	return g.Wait()
}
