package h1

import (
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/stats"
)

// TestServerConnectionLimits: max_requests_per_connection and
// max_connection_duration end a keep-alive connection after a response
// carrying "Connection: close", and count it.
func TestServerConnectionLimits(t *testing.T) {
	tests := []struct {
		name      string
		cfg       ServerConfig
		requests  int           // requests sent on the connection
		pause     time.Duration // before the last request
		wantClose int           // the 1-based request whose response closes the connection
	}{
		{name: "max requests", cfg: ServerConfig{MaxRequestsPerConnection: 3}, requests: 3, wantClose: 3},
		{name: "max duration while idle", cfg: ServerConfig{MaxConnectionDuration: 100 * time.Millisecond}, requests: 1},
		{name: "no limits", requests: 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			cfg := tt.cfg
			cfg.MaxDurationReached, cfg.MaxRequestsReached = new(stats.Counter), new(stats.Counter)
			ts := startServer(t, cfg, echo)
			c, br := rawConn(t, ts.addr)
			for i := 1; i <= tt.requests; i++ {
				if _, err := fmt.Fprintf(c, "GET /%d HTTP/1.1\r\nHost: a\r\n\r\n", i); err != nil {
					t.Fatal(err)
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if got := resp.Close; got != (i == tt.wantClose) {
					t.Fatalf("request %d: Connection: close = %v, want %v", i, got, i == tt.wantClose)
				}
			}
			if tt.cfg.MaxConnectionDuration == 0 && tt.wantClose == 0 {
				return
			}
			// The server closes the connection: the next read sees EOF.
			if _, err := br.ReadByte(); err != io.EOF {
				t.Fatalf("read after the limit: %v, want EOF", err)
			}
			got := cfg.MaxRequestsReached.Value() + cfg.MaxDurationReached.Value()
			if got != 1 {
				t.Fatalf("limit counters = %d, want 1", got)
			}
		})
	}
}
