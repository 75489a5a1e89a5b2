package wasmbuild

// `go generate ./internal/wasmbuild` (or ./...) writes every guest module
// into the git-ignored wasm/build/. Tests do not need it: they call [Build].
//go:generate go run ./cmd/wasmguest -o ../../wasm/build ../../filters/ratelimit/guest ../../test/wasm/guests/...
