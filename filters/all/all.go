// Package all links every built-in HTTP filter into the binary: importing
// it registers them with package filters. The router is registered by
// package filters itself.
package all

import (
	_ "meshd.dev/meshd/filters/localratelimit" // envoy.filters.http.local_ratelimit
	_ "meshd.dev/meshd/filters/rbac"           // envoy.filters.http.rbac
	_ "meshd.dev/meshd/filters/wasm"           // envoy.filters.http.wasm
)
