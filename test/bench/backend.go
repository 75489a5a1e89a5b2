package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
)

// The backend's HTTP endpoint and its body size.
const (
	// getPath is the h2c GET endpoint; it answers 200 with getBodySize bytes.
	getPath     = "/1k"
	getBodySize = 1024
	// backendReadyPrefix starts the one line the backend prints on stdout
	// once both listeners are bound: "BACKEND grpc=ADDR http=ADDR".
	backendReadyPrefix = "BACKEND "
	// backendStartTimeout bounds the wait for that line.
	backendStartTimeout = 15 * time.Second
	// backendStopTimeout bounds the backend's graceful stop and the parent's
	// wait for it to exit.
	backendStopTimeout = 5 * time.Second
)

// runBackend is the `backend` subcommand: a grpc-go server with the interop
// TestService and an h2c (HTTP/1.1 and HTTP/2 prior knowledge) server with
// GET /1k, each on its own 127.0.0.1 port. It prints their addresses on one
// stdout line and serves until SIGTERM/SIGINT or until its stdin is closed,
// which happens when the harness that started it exits, so a crashed harness
// leaves no backend behind.
func runBackend(stdin io.Reader, stdout io.Writer, logger *slog.Logger) error {
	glis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("backend: grpc listener: %w", err)
	}
	hlis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		glis.Close()
		return fmt.Errorf("backend: http listener: %w", err)
	}
	gs := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(gs, interop.NewTestServer())

	body := make([]byte, getBodySize)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+getPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		_, _ = w.Write(body)
	})
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	hs := &http.Server{Handler: mux, Protocols: &protocols, ReadHeaderTimeout: 10 * time.Second}

	errc := make(chan error, 2)
	go func() { errc <- fmt.Errorf("backend: grpc serve: %w", gs.Serve(glis)) }()
	go func() { errc <- fmt.Errorf("backend: http serve: %w", hs.Serve(hlis)) }()
	fmt.Fprintf(stdout, "%sgrpc=%s http=%s\n", backendReadyPrefix, glis.Addr(), hlis.Addr())

	stdinClosed := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, stdin)
		close(stdinClosed)
	}()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)

	var serveErr error
	select {
	case s := <-sigs:
		logger.Info("backend stopping", "signal", s.String())
	case <-stdinClosed:
		logger.Info("backend stopping", "reason", "stdin closed")
	case serveErr = <-errc:
	}
	ctx, cancel := context.WithTimeout(context.Background(), backendStopTimeout)
	defer cancel()
	_ = hs.Shutdown(ctx)
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-ctx.Done():
		gs.Stop()
	}
	return serveErr
}

// backendProc is a running backend child process.
type backendProc struct {
	// GRPCAddr and HTTPAddr are the bound listener addresses. Immutable.
	GRPCAddr, HTTPAddr string

	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{} // closed when cmd.Wait returns
}

// startBackend starts `self backend` and waits for its address line. The
// child inherits this process's CPU affinity.
func startBackend(self string, stderr io.Writer) (*backendProc, error) {
	cmd := exec.Command(self, "backend")
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("backend: stdin pipe: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("backend: stdout pipe: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("backend: start %s: %w", self, err)
	}
	b := &backendProc{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	go func() { _ = cmd.Wait(); close(b.done) }()

	timer := time.NewTimer(backendStartTimeout)
	defer timer.Stop()
	select {
	case line, ok := <-lines:
		if ok {
			if g, h, err := parseBackendLine(line); err == nil {
				b.GRPCAddr, b.HTTPAddr = g, h
				return b, nil
			} else {
				b.Stop()
				return nil, err
			}
		}
		b.Stop()
		return nil, errors.New("backend: exited before printing its addresses")
	case <-timer.C:
		b.Stop()
		return nil, fmt.Errorf("backend: no address line within %v", backendStartTimeout)
	}
}

// parseBackendLine parses "BACKEND grpc=ADDR http=ADDR".
func parseBackendLine(line string) (grpcAddr, httpAddr string, err error) {
	rest, ok := strings.CutPrefix(line, backendReadyPrefix)
	if !ok {
		return "", "", fmt.Errorf("backend: unexpected first line %q", line)
	}
	for _, f := range strings.Fields(rest) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "grpc":
			grpcAddr = v
		case "http":
			httpAddr = v
		}
	}
	if grpcAddr == "" || httpAddr == "" {
		return "", "", fmt.Errorf("backend: address line %q lacks grpc= or http=", line)
	}
	return grpcAddr, httpAddr, nil
}

// PID returns the backend's process id.
func (b *backendProc) PID() int { return b.cmd.Process.Pid }

// Stop closes the backend's stdin, which makes it stop gracefully, and kills
// it if it has not exited within backendStopTimeout.
func (b *backendProc) Stop() {
	_ = b.stdin.Close()
	timer := time.NewTimer(backendStopTimeout)
	defer timer.Stop()
	select {
	case <-b.done:
	case <-timer.C:
		_ = b.cmd.Process.Kill()
		<-b.done
	}
}
