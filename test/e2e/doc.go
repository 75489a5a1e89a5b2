// Package e2e holds meshd's end-to-end tests: each starts the real meshd
// binary (testutil.BuildMeshd, or $MESHD_BIN) in front of real peers on
// loopback and drives it with real clients. Where a test has a "direct"
// mode, the same test body runs with the client talking straight to the
// backend; that is the baseline the "sidecar" mode must match.
package e2e
