// Command agent-sample is a program that embeds rekey's agent, in a module
// of its own, as an outside program would. It is built by .ci/agent-deps.sh,
// which fails if the module graph it needs holds anything of rekey's server
// side: embedding the agent requires nats.go and what the agent itself
// needs, nothing else.
//
// Usage: agent-sample -nats nats://127.0.0.1:4222 -tenant acme db-password
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"

	"github.com/nats-io/nats.go"

	"github.com/rekey-dev/rekey/fanout/agent"
)

func main() {
	url := flag.String("nats", nats.DefaultURL, "NATS URL")
	tenant := flag.String("tenant", "", "tenant whose secret is read")
	flag.Parse()
	if err := run(*url, *tenant, flag.Arg(0)); err != nil {
		fmt.Fprintln(os.Stderr, "agent-sample:", err)
		os.Exit(1)
	}
}

func run(url, tenant, secret string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	nc, err := nats.Connect(url)
	if err != nil {
		return fmt.Errorf("connect to NATS: %w", err)
	}
	defer nc.Close()
	a, err := agent.New(nc, nil, agent.Config{Tenant: tenant})
	if err != nil {
		return err
	}
	if err := a.Start(ctx); err != nil {
		return err
	}
	defer a.Close()
	s, err := a.Get(ctx, secret)
	if err != nil {
		return err
	}
	// Secret's String leaves the value out.
	fmt.Println(s)
	return nil
}
