package hardening

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// slowHCM gives the slow-client tests short, distinct timeouts.
const slowHCM = `request_headers_timeout: 1s
stream_idle_timeout: 2s
common_http_protocol_options: { idle_timeout: 3s }`

// Timeouts of slowHCM and the slack a loaded machine gets.
const (
	headersTimeout = time.Second
	streamIdle     = 2 * time.Second
	connIdle       = 3 * time.Second
	cutSlack       = 3 * time.Second
)

// TestSlowClients: slowloris (a header section dribbled a byte every
// 200 ms), idle connections and clients that never read are cut by
// request_headers_timeout, idle_timeout and stream_idle_timeout, over
// HTTP/1.1 and HTTP/2, and counted.
func TestSlowClients(t *testing.T) {
	m := startSidecar(t, sidecarParams{HCM: slowHCM, ConnBufferLimit: 1 << 20})
	h2req := func(c *rawConn, path string) []byte {
		var b strings.Builder
		fr := http2.NewFramer(&b, nil)
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: c.block(getPath(path)...), EndStream: true, EndHeaders: true})
		return []byte(b.String())
	}
	tests := []struct {
		name string
		// run drives the client and returns how the server ended it.
		run func(t *testing.T) (cutAfter time.Duration, how string)
		// want is the timeout that must cut it.
		want time.Duration
		stat string
	}{
		{
			name: "HTTP/1.1 headers dribbled (slowloris)",
			run: func(t *testing.T) (time.Duration, string) {
				nc := dial(t, m.plain)
				return dribble(nc, []byte("GET / HTTP/1.1\r\nHost: hardening\r\nX-Slow: "+strings.Repeat("s", 100)+"\r\n\r\n"))
			},
			want: headersTimeout,
		},
		{
			name: "HTTP/2 header block dribbled (slowloris)",
			run: func(t *testing.T) (time.Duration, string) {
				c := dialRaw(t, m.plain, nil)
				return dribble(c.nc, h2req(c, "/"))
			},
			want: headersTimeout,
			stat: "http.plain.downstream_rq_header_timeout",
		},
		{
			name: "HTTP/2 over TLS header block dribbled (slowloris)",
			run: func(t *testing.T) (time.Duration, string) {
				c := dialRaw(t, m.tlsAddr, m.tlsConfig(t, "h2"))
				return dribble(c.nc, h2req(c, "/"))
			},
			want: headersTimeout,
			stat: "http.tls.downstream_rq_header_timeout",
		},
		{
			name: "HTTP/1.1 idle keep-alive connection",
			run: func(t *testing.T) (time.Duration, string) {
				nc := dial(t, m.plain)
				br := bufio.NewReader(nc)
				if _, err := nc.Write([]byte("GET / HTTP/1.1\r\nHost: hardening\r\n\r\n")); err != nil {
					t.Fatal(err)
				}
				if err := readHTTP1Response(br); err != nil {
					t.Fatal(err)
				}
				return waitCut(nc, br)
			},
			want: connIdle,
		},
		{
			name: "HTTP/2 idle connection",
			run: func(t *testing.T) (time.Duration, string) {
				c := dialRaw(t, m.plain, nil)
				start := time.Now()
				o := c.readUntilEnd(connIdle+cutSlack+time.Second, nil)
				return time.Since(start), fmt.Sprintf("GOAWAY %v %v %q, closed %v", o.goAway, o.goAwayCode, o.debug, o.closed)
			},
			want: connIdle,
			stat: "http.plain.downstream_cx_idle_timeout",
		},
		{
			name: "HTTP/1.1 client never reads its 64 MiB response",
			run: func(t *testing.T) (time.Duration, string) {
				nc := dial(t, m.plain)
				stat0 := m.stat(t, "http.plain.downstream_rq_idle_timeout")
				if _, err := nc.Write([]byte("GET /big?size=67108864 HTTP/1.1\r\nHost: hardening\r\n\r\n")); err != nil {
					t.Fatal(err)
				}
				// The cut is when the sidecar counts the stream idle
				// timeout; then what the kernel buffered drains and the
				// connection ends short of the body.
				start := time.Now()
				for m.stat(t, "http.plain.downstream_rq_idle_timeout") == stat0 && time.Since(start) < streamIdle+cutSlack+time.Second {
					time.Sleep(50 * time.Millisecond)
				}
				cut := time.Since(start)
				n, err := io.Copy(io.Discard, deadlineReader{nc, 5 * time.Second})
				if n >= 64<<20 {
					return cut, "the whole response arrived"
				}
				return cut, fmt.Sprintf("connection ended after %d of %d bytes (%v)", n, 64<<20, errOrEOF(err))
			},
			want: streamIdle,
			stat: "http.plain.downstream_rq_idle_timeout",
		},
		{
			name: "HTTP/2 client never opens its window",
			run: func(t *testing.T) (time.Duration, string) {
				c := dialRaw(t, m.plain, nil, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
				if err := c.request(1, "/big?size=67108864", true); err != nil {
					t.Fatal(err)
				}
				start := time.Now()
				o := c.readUntilEnd(streamIdle+cutSlack+time.Second, func(o *outcome) bool { return len(o.rst) > 0 })
				return time.Since(start), fmt.Sprintf("RST_STREAM %v, GOAWAY %v", o.rst, o.goAway)
			},
			want: streamIdle,
			stat: "http.plain.downstream_rq_idle_timeout",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stat0 int64
			if tt.stat != "" {
				stat0 = m.stat(t, tt.stat)
			}
			before := sampleProc(t, m.sc.PID())
			after, how := tt.run(t)
			t.Logf("FIGURES %s: ended after %v (%s); sidecar RSS %d MiB -> %d MiB", tt.name, after.Round(10*time.Millisecond), how,
				before.rss>>20, sampleProc(t, m.sc.PID()).rss>>20)
			if after < tt.want*8/10 || after > tt.want+cutSlack {
				t.Errorf("ended after %v (%s), want about %v", after, how, tt.want)
			}
			if strings.Contains(how, "whole response") || strings.Contains(how, "GOAWAY false NO_ERROR \"\", closed false") {
				t.Errorf("not cut: %s", how)
			}
			if tt.stat != "" && m.stat(t, tt.stat) <= stat0 {
				t.Errorf("%s did not increase", tt.stat)
			}
		})
	}
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, frameTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	return nc
}

// dribble writes msg a byte every 200 ms (at most 60 s) and returns when
// the server ends the connection (a failed write, or EOF from a reader
// started alongside), with the time since the first byte.
func dribble(nc net.Conn, msg []byte) (time.Duration, string) {
	start := time.Now()
	readEnd := make(chan string, 1)
	go func() {
		_ = nc.SetReadDeadline(time.Now().Add(60 * time.Second))
		n, err := io.Copy(io.Discard, nc)
		readEnd <- fmt.Sprintf("read %d bytes, then %v", n, errOrEOF(err))
	}()
	for i := 0; i < len(msg) && time.Since(start) < 60*time.Second; i++ {
		if _, err := nc.Write(msg[i : i+1]); err != nil {
			return time.Since(start), "write failed: " + err.Error()
		}
		select {
		case how := <-readEnd:
			return time.Since(start), how
		case <-time.After(200 * time.Millisecond):
		}
	}
	return time.Since(start), "the whole message was accepted"
}

func errOrEOF(err error) string {
	if err == nil {
		return "EOF"
	}
	return err.Error()
}

// waitCut reads until the connection ends (at most 60 s).
func waitCut(nc net.Conn, br *bufio.Reader) (time.Duration, string) {
	start := time.Now()
	_ = nc.SetReadDeadline(time.Now().Add(60 * time.Second))
	n, err := io.Copy(io.Discard, br)
	return time.Since(start), fmt.Sprintf("read %d bytes, then %v", n, errOrEOF(err))
}

// readHTTP1Response reads one response with a Content-Length body.
func readHTTP1Response(br *bufio.Reader) error {
	cl := -1
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return err
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			break
		}
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, "content-length") {
			_, _ = fmt.Sscan(strings.TrimSpace(v), &cl)
		}
	}
	if cl < 0 {
		return errors.New("response without content-length")
	}
	_, err := io.CopyN(io.Discard, br, int64(cl))
	return err
}

// deadlineReader reads with a fresh deadline per Read.
type deadlineReader struct {
	nc net.Conn
	d  time.Duration
}

func (r deadlineReader) Read(p []byte) (int, error) {
	_ = r.nc.SetReadDeadline(time.Now().Add(r.d))
	return r.nc.Read(p)
}
