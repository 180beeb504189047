module github.com/rekey-dev/rekey/fanout/agent

go 1.26.8

require (
	github.com/nats-io/nats.go v1.55.0
	github.com/rekey-dev/rekey/schemas v0.0.0
	golang.org/x/sync v0.25.0
)

require (
	github.com/goccy/go-json v0.12.0 // indirect
	github.com/klauspost/compress v1.20.0 // indirect
	github.com/nats-io/nkeys v0.4.16 // indirect
	github.com/nats-io/nuid v1.0.1 // indirect
	golang.org/x/crypto v0.57.0 // indirect
	golang.org/x/sys v0.48.0 // indirect
)

replace github.com/rekey-dev/rekey/schemas => ../../schemas
