// Package testutil holds what meshd's multi-process tests share: a goroutine
// leak check, building and running the meshd binary against a bootstrap,
// stub upstreams (the grpc-go interop server and an HTTP/1.1 + h2c echo
// server), and a bootstrap template that puts one sidecar listener in front
// of one backend.
//
// Every helper binds 127.0.0.1 port 0, takes a testing.TB, and registers its
// own teardown with t.Cleanup, so a test that returns (or fails) leaves no
// process, listener or goroutine behind.
package testutil
