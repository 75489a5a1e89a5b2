// Command interopclient runs one grpc-go interop test case against a
// plaintext server, as google.golang.org/grpc/interop/client does, with the
// same flags (--server_host, --server_port, --test_case) and the same
// interop.Do* checks. It exists because the upstream client binary links
// ALTS, xDS, RLS and OAuth credential code the e2e tests neither need nor
// want in go.mod.
//
// The Do* functions end the process through grpclog.Fatal on any mismatch,
// so the exit status is the verdict: 0 means the case passed.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
)

// cases maps each supported --test_case name to its interop check.
var cases = map[string]func(ctx context.Context, cc *grpc.ClientConn){
	"empty_unary":                 func(ctx context.Context, cc *grpc.ClientConn) { interop.DoEmptyUnaryCall(ctx, tc(cc)) },
	"large_unary":                 func(ctx context.Context, cc *grpc.ClientConn) { interop.DoLargeUnaryCall(ctx, tc(cc)) },
	"client_streaming":            func(ctx context.Context, cc *grpc.ClientConn) { interop.DoClientStreaming(ctx, tc(cc)) },
	"server_streaming":            func(ctx context.Context, cc *grpc.ClientConn) { interop.DoServerStreaming(ctx, tc(cc)) },
	"ping_pong":                   func(ctx context.Context, cc *grpc.ClientConn) { interop.DoPingPong(ctx, tc(cc)) },
	"empty_stream":                func(ctx context.Context, cc *grpc.ClientConn) { interop.DoEmptyStream(ctx, tc(cc)) },
	"custom_metadata":             func(ctx context.Context, cc *grpc.ClientConn) { interop.DoCustomMetadata(ctx, tc(cc)) },
	"status_code_and_message":     func(ctx context.Context, cc *grpc.ClientConn) { interop.DoStatusCodeAndMessage(ctx, tc(cc)) },
	"special_status_message":      func(ctx context.Context, cc *grpc.ClientConn) { interop.DoSpecialStatusMessage(ctx, tc(cc)) },
	"unimplemented_method":        func(ctx context.Context, cc *grpc.ClientConn) { interop.DoUnimplementedMethod(ctx, cc) },
	"cancel_after_begin":          func(ctx context.Context, cc *grpc.ClientConn) { interop.DoCancelAfterBegin(ctx, tc(cc)) },
	"cancel_after_first_response": func(ctx context.Context, cc *grpc.ClientConn) { interop.DoCancelAfterFirstResponse(ctx, tc(cc)) },
	"timeout_on_sleeping_server":  func(ctx context.Context, cc *grpc.ClientConn) { interop.DoTimeoutOnSleepingServer(ctx, tc(cc)) },
	"unimplemented_service": func(ctx context.Context, cc *grpc.ClientConn) {
		interop.DoUnimplementedService(ctx, testgrpc.NewUnimplementedServiceClient(cc))
	},
}

func tc(cc *grpc.ClientConn) testgrpc.TestServiceClient { return testgrpc.NewTestServiceClient(cc) }

func main() {
	host := flag.String("server_host", "127.0.0.1", "the server host name")
	port := flag.Int("server_port", 0, "the server port number")
	testCase := flag.String("test_case", "", "the test case to run")
	timeout := flag.Duration("timeout", 30*time.Second, "bound on the whole case")
	flag.Parse()

	run, ok := cases[*testCase]
	if !ok {
		fmt.Fprintf(os.Stderr, "interopclient: --test_case %q: unknown case\n", *testCase)
		os.Exit(2)
	}
	if *port <= 0 || *port > 65535 {
		fmt.Fprintf(os.Stderr, "interopclient: --server_port %d: must be in [1, 65535]\n", *port)
		os.Exit(2)
	}
	target := net.JoinHostPort(*host, strconv.Itoa(*port))
	cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintf(os.Stderr, "interopclient: dialing %s: %v\n", target, err)
		os.Exit(1)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	run(ctx, cc)
	fmt.Printf("interopclient: %s passed against %s\n", *testCase, target)
}
