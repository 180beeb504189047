package awssm

// API is the narrow Secrets Manager interface, for tests that put a
// wrapper in front of the real client.
type API = secretsManagerAPI

// Limiter paces calls.
type Limiter = limiter

// WrapAPI makes every Secrets Manager call of b go through wrap.
func WrapAPI(b *Backend, wrap func(API) API) { b.api = wrap(b.api) }

// SetLimiters replaces b's write and rotate limiters.
func SetLimiters(b *Backend, write, rotate Limiter) { b.writeLimit, b.rotateLimit = write, rotate }
