//go:build !wasip1

package main

import "time"

// hostNow is the clock outside wasm (the SDK's proxytest emulator).
func hostNow() int64 { return time.Now().UnixNano() }

// hostString returns b as a string to pass to a host call. The SDK's
// emulator keeps the strings it is given, so here it is a copy.
func hostString(b []byte) string { return string(b) }
