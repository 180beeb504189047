package sidecar_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/rekey-dev/rekey/fanout/sidecar"
)

func TestConfigValidate(t *testing.T) {
	ok := sidecar.Config{Tenant: "acme", Listen: "127.0.0.1:7421", Token: rekeyToken}
	require.NoError(t, ok.Validate())
	for _, c := range []struct {
		name string
		edit func(*sidecar.Config)
		want string
	}{
		{"bad tenant", func(c *sidecar.Config) { c.Tenant = "Acme" }, "tenant"},
		{"all interfaces", func(c *sidecar.Config) { c.Listen = "0.0.0.0:7421" }, "listen: address \"0.0.0.0:7421\": only loopback"},
		{"no host", func(c *sidecar.Config) { c.Listen = ":7421" }, "only loopback"},
		{"a host name", func(c *sidecar.Config) { c.VaultListen = "example.com:8200"; c.VaultToken = vaultToken }, "vault-listen"},
		{"relative socket", func(c *sidecar.Config) { c.AWSAPIListen = "unix:rekey.sock" }, "absolute path"},
		{"short token", func(c *sidecar.Config) { c.Token = "short" }, "token: required"},
		{"aws agent without token", func(c *sidecar.Config) { c.AWSAgentListen = "127.0.0.1:2773" }, "aws-agent token"},
		{"aws api without key", func(c *sidecar.Config) { c.AWSAPIListen = "[::1]:4566"; c.AWSAccessKeyID = accessKeyID }, "secret access key"},
		{"template without secret", func(c *sidecar.Config) { c.Mapping.AWSNameTemplate = "/tenants/{tenant}" }, "must contain {secret} once"},
		{"secret twice", func(c *sidecar.Config) { c.Mapping.VaultPathTemplate = "{secret}/{secret}" }, "must contain {secret} once"},
		{"unknown placeholder", func(c *sidecar.Config) { c.Mapping.AWSNameTemplate = "/{env}/{secret}" }, "unknown placeholder"},
		{"bad region", func(c *sidecar.Config) { c.Mapping.AWSRegion = "US East" }, "aws_region"},
		{"bad account", func(c *sidecar.Config) { c.Mapping.AWSAccount = "12" }, "aws_account"},
		{"bad secret id", func(c *sidecar.Config) { c.Mapping.AWSNames = map[string]string{"Bad Id": "x"} }, "aws_names"},
		{"bad served id", func(c *sidecar.Config) { c.Mapping.Secrets = []string{"a.b"} }, "secrets"},
		{"role with slash", func(c *sidecar.Config) { c.Mapping.VaultStaticRoles = map[string]string{"db": "a/b"} }, "vault_static_roles[db]"},
		{"static and dynamic", func(c *sidecar.Config) {
			c.Mapping.VaultStaticRoles = map[string]string{"db": "r"}
			c.Mapping.VaultDynamicRoles = map[string]string{"db": "r"}
		}, "both static and dynamic"},
		{"bad field", func(c *sidecar.Config) { c.Mapping.VaultField = "a b" }, "vault_field"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := ok
			c.edit(&cfg)
			err := cfg.Validate()
			require.Error(t, err)
			require.Contains(t, err.Error(), c.want)
		})
	}
}
