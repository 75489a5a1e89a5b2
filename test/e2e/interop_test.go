package e2e

import (
	"context"
	"net"
	"os/exec"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
)

// Timeouts shared by the tests in this package.
const (
	// requestTimeout bounds one HTTP request or gRPC call.
	requestTimeout = 30 * time.Second
	// interopCaseTimeout bounds one interop client process.
	interopCaseTimeout = 30 * time.Second
)

// interopCases are the grpc-go interop cases the sidecar must pass (issue 2,
// acceptance 2).
var interopCases = []string{
	"empty_unary",
	"large_unary",
	"client_streaming",
	"server_streaming",
	"ping_pong",
	"empty_stream",
	"custom_metadata",
	"status_code_and_message",
	"special_status_message",
	"unimplemented_method",
	"unimplemented_service",
	"cancel_after_begin",
	"cancel_after_first_response",
	"timeout_on_sleeping_server",
}

// TestGRPCInterop runs the grpc-go interop client, one process per case,
// against the grpc-go interop server, directly and through meshd with an
// HTTP/2 upstream.
func TestGRPCInterop(t *testing.T) {
	testutil.CheckGoroutines(t)
	client := testutil.BuildGoBinary(t, "meshd.dev/meshd/test/e2e/internal/interopclient")
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			backend := testutil.StartGRPCInteropServer(t)
			addr, _ := front(t, m, backend.Addr, testutil.UpstreamHTTP2)
			host, port, err := net.SplitHostPort(addr)
			if err != nil {
				t.Fatal(err)
			}
			for _, tc := range interopCases {
				t.Run(tc, func(t *testing.T) {
					ctx, cancel := context.WithTimeout(context.Background(), interopCaseTimeout)
					defer cancel()
					cmd := exec.CommandContext(ctx, client,
						"--server_host="+host, "--server_port="+port, "--test_case="+tc,
						"--timeout="+(interopCaseTimeout-5*time.Second).String())
					cmd.WaitDelay = time.Second
					out, err := cmd.CombinedOutput()
					if ctx.Err() != nil {
						t.Fatalf("interop case %s: no result within %v\n%s", tc, interopCaseTimeout, out)
					}
					if err != nil {
						t.Fatalf("interop case %s against %s: %v\n%s", tc, addr, err, out)
					}
				})
			}
		})
	}
}
