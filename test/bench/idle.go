package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http2"
)

// Idle connection limits.
const (
	// idleDialers is how many idle connections are set up concurrently.
	idleDialers = 64
	// idleHandshakeTimeout bounds one idle connection's dial and SETTINGS
	// exchange.
	idleHandshakeTimeout = 10 * time.Second
	// idleConnSettle is how long the harness waits after the last idle
	// connection is up before it reads the proxies' RSS.
	idleConnSettle = time.Second
)

// wantNoFile is the RLIMIT_NOFILE the harness asks for: the idle scenario's
// connections on both ends plus the peers' upstream side, with room.
const wantNoFile = 65536

// raiseNoFile raises this process's RLIMIT_NOFILE to wantNoFile (soft and
// hard; allowed as root), or else the soft limit to the hard one, and
// returns the new soft limit. Children started later inherit it: h2load
// needs one descriptor per connection, and HAProxy derives its own limit
// from maxconn and fails to start when it cannot get it.
func raiseNoFile() (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("getrlimit NOFILE: %w", err)
	}
	if lim.Max < wantNoFile {
		want := syscall.Rlimit{Cur: wantNoFile, Max: wantNoFile}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err == nil {
			return want.Cur, nil
		}
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("setrlimit NOFILE %d: %w", lim.Max, err)
	}
	return lim.Cur, nil
}

// idleConns are open HTTP/2 connections that finished the connection
// preface and SETTINGS exchange and then send nothing more.
type idleConns struct {
	conns []net.Conn
}

// openIdle opens n HTTP/2 (prior knowledge) connections to addr: each sends
// the client preface and an empty SETTINGS frame, waits for the server's
// SETTINGS, acknowledges it, and then stays idle (frames the server sends
// later stay unread in the socket buffer). On error every connection opened
// so far is closed.
func openIdle(ctx context.Context, addr string, n int) (*idleConns, error) {
	ic := &idleConns{conns: make([]net.Conn, 0, n)}
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
		next     = make(chan struct{})
	)
	for range min(idleDialers, n) {
		wg.Go(func() {
			for range next {
				c, err := idleHandshake(ctx, addr)
				mu.Lock()
				if err != nil {
					if firstErr == nil {
						firstErr = err
					}
				} else {
					ic.conns = append(ic.conns, c)
				}
				mu.Unlock()
			}
		})
	}
	for range n {
		mu.Lock()
		failed := firstErr != nil
		mu.Unlock()
		if failed || ctx.Err() != nil {
			break
		}
		next <- struct{}{}
	}
	close(next)
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	if firstErr != nil {
		ic.Close()
		return nil, fmt.Errorf("idle connection %d of %d to %s: %w", len(ic.conns)+1, n, addr, firstErr)
	}
	return ic, nil
}

// idleHandshake dials addr and completes the HTTP/2 preface and SETTINGS
// exchange.
func idleHandshake(ctx context.Context, addr string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, idleHandshakeTimeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	deadline, _ := ctx.Deadline()
	_ = c.SetDeadline(deadline)
	if err := settingsExchange(c); err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// settingsExchange writes the client preface and an empty SETTINGS frame on
// rw, reads frames until the server's SETTINGS (not an ACK), and
// acknowledges it.
func settingsExchange(rw io.ReadWriter) error {
	if _, err := io.WriteString(rw, http2.ClientPreface); err != nil {
		return fmt.Errorf("preface: %w", err)
	}
	fr := http2.NewFramer(rw, rw)
	if err := fr.WriteSettings(); err != nil {
		return fmt.Errorf("SETTINGS: %w", err)
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return fmt.Errorf("waiting for the server's SETTINGS: %w", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				continue
			}
			if err := fr.WriteSettingsAck(); err != nil {
				return fmt.Errorf("SETTINGS ACK: %w", err)
			}
			return nil
		case *http2.GoAwayFrame:
			return fmt.Errorf("GOAWAY %v before SETTINGS", f.ErrCode)
		}
	}
}

// Len returns the number of open connections.
func (ic *idleConns) Len() int { return len(ic.conns) }

// Close closes every connection.
func (ic *idleConns) Close() error {
	var errs []error
	for _, c := range ic.conns {
		errs = append(errs, c.Close())
	}
	ic.conns = nil
	return errors.Join(errs...)
}
