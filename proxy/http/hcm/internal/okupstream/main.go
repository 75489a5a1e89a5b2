// Command okupstream serves meshd's HTTP/2 server (h2c, default settings)
// on a free 127.0.0.1 port and answers every request with 200 and body
// "ok" after reading its body, as the connection manager's tests' in-process
// upstream does. Benchmarks run it in a process of their own so that their
// CPU figures (getrusage of the test process) count the proxy's work and
// none of the upstream's. It prints "listening HOST:PORT" on stdout and
// exits when its stdin closes.
package main

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"

	"meshd.dev/meshd/proxy/http/h2"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// AddrPrefix starts the line announcing the address.
const AddrPrefix = "listening "

func main() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		slog.Error("okupstream: listen", "err", err)
		os.Exit(1)
	}
	handler := stream.HandlerFunc(func(s stream.ServerStream) {
		_, _ = io.Copy(io.Discard, s)
		if err := s.WriteHeader(&stream.Response{Status: 200, Header: header.Make(0), ContentLength: -1}, false); err != nil {
			return
		}
		if _, err := io.WriteString(s, "ok"); err != nil {
			return
		}
		_ = s.CloseWrite()
	})
	var (
		mu     sync.Mutex
		conns  []*h2.ServerConn
		closed bool
		wg     sync.WaitGroup
	)
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		ln.Close()
		mu.Lock()
		closed = true
		for _, sc := range conns {
			sc.Close()
		}
		mu.Unlock()
	}()
	fmt.Printf("%s%s\n", AddrPrefix, ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			break
		}
		sc := h2.NewServerConn(c, &h2.ServerConfig{}, handler, stream.ConnInfo{LocalAddr: c.LocalAddr(), RemoteAddr: c.RemoteAddr(), Proto: "HTTP/2"})
		mu.Lock()
		conns = append(conns, sc)
		if closed {
			sc.Close()
		}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = sc.Serve()
		}()
	}
	wg.Wait()
}
