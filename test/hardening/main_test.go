// Package hardening is meshd's attack-resistance suite: h2spec against a
// sidecar's downstream listeners, HTTP/2 floods from raw-frame clients,
// slowloris and slow readers, leak checks after churn, QUIC attacks
// (spoofed Initial floods, stateless resets, stream and connection-ID
// limits) and the overload manager, each against a real `meshd sidecar`
// process; and chaos under load against a whole mesh of processes (control
// plane, sidecars, apps). Figures the tests log with the prefix FIGURES are
// recorded in docs/RELIABILITY.md.
package hardening

import (
	"os"
	"testing"

	"meshd.dev/meshd/internal/testutil"
)

func TestMain(m *testing.M) {
	if addr := os.Getenv(probeModeEnv); addr != "" {
		os.Exit(runProbeProcess(addr))
	}
	if addr := os.Getenv(appModeEnv); addr != "" {
		os.Exit(runAppProcess(addr))
	}
	os.Exit(testutil.Main(m))
}
