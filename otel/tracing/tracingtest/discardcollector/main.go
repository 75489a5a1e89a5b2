// Command discardcollector serves tracingtest's Discard OTLP/gRPC trace
// endpoint on a free 127.0.0.1 port in a process of its own, for
// benchmarks that measure the sending process's CPU alone. It prints
// "listening HOST:PORT" on stdout and exits when its stdin closes.
package main

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"

	"meshd.dev/meshd/otel/tracing/tracingtest"
)

func main() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		slog.Error("discardcollector: listen", "err", err)
		os.Exit(1)
	}
	d := tracingtest.NewDiscard(ln.Addr().String())
	srv := d.Server()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		srv.Stop()
	}()
	fmt.Printf("%s%s\n", tracingtest.DiscardAddrPrefix, d.Addr())
	if err := srv.Serve(ln); err != nil {
		slog.Error("discardcollector: serve", "err", err)
		os.Exit(1)
	}
}
