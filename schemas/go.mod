module github.com/rekey-dev/rekey/schemas

go 1.26.8

require github.com/goccy/go-json v0.12.0
