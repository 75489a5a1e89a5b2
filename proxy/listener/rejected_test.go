package listener

import (
	"crypto/tls"
	"io"
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/internal/testutil"
)

// TestRejected: a connection closed before a filter chain serves it is
// reported once to Rejected, with the reason; a served one is not.
func TestRejected(t *testing.T) {
	testutil.CheckGoroutines(t)
	cert, _ := selfSigned(t)
	tests := []struct {
		name          string
		cfg           Config
		send          string
		wantTLS       bool
		wantNoChain   bool
		wantErrSubstr string
	}{
		{
			name:          "TLS handshake failure",
			cfg:           Config{Codec: TCP, TLS: &tls.Config{Certificates: []tls.Certificate{cert}}},
			send:          "GET / HTTP/1.1\r\n\r\n",
			wantTLS:       true,
			wantErrSubstr: "tls:",
		},
		{
			name:          "no filter chain for the protocol",
			cfg:           Config{Codec: TCP},
			send:          "x",
			wantNoChain:   true,
			wantErrSubstr: "no filter chain serves TCP",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := make(chan Rejection, 2)
			cfg := tc.cfg
			cfg.Name = "rejecting"
			cfg.Rejected = func(r Rejection) { got <- r }
			l := start(t, cfg)
			before := time.Now()
			c := dial(t, l)
			if _, err := io.WriteString(c, tc.send); err != nil {
				t.Fatal(err)
			}
			_, _ = io.ReadAll(c)
			var r Rejection
			select {
			case r = <-got:
			case <-time.After(10 * time.Second):
				t.Fatal("Rejected was not called")
			}
			if r.TLSFailure != tc.wantTLS || r.NoFilterChain != tc.wantNoChain {
				t.Errorf("TLSFailure %v NoFilterChain %v, want %v %v", r.TLSFailure, r.NoFilterChain, tc.wantTLS, tc.wantNoChain)
			}
			if r.Err == nil || !strings.Contains(r.Err.Error(), tc.wantErrSubstr) {
				t.Errorf("Err = %v, want it to contain %q", r.Err, tc.wantErrSubstr)
			}
			if r.Conn.RemoteAddr.String() != c.LocalAddr().String() || r.Conn.LocalAddr.String() != c.RemoteAddr().String() {
				t.Errorf("Conn %v→%v, want %v→%v", r.Conn.RemoteAddr, r.Conn.LocalAddr, c.LocalAddr(), c.RemoteAddr())
			}
			if r.Start.Before(before) || r.Start.After(time.Now()) {
				t.Errorf("Start %v is not between the dial (%v) and the report", r.Start, before)
			}
			select {
			case r := <-got:
				t.Errorf("Rejected called twice: %+v", r)
			default:
			}
		})
	}

	t.Run("served connection", func(t *testing.T) {
		rejected := make(chan Rejection, 1)
		seenc := make(chan seen, 1)
		l := start(t, Config{Name: "serving", Codec: TCP, TCP: factory(1, seenc, nil), Rejected: func(r Rejection) { rejected <- r }})
		c := dial(t, l)
		if _, err := io.WriteString(c, "y"); err != nil {
			t.Fatal(err)
		}
		recv(t, seenc)
		if _, err := io.ReadFull(c, make([]byte, 2)); err != nil {
			t.Fatalf("read the filter's reply: %v", err)
		}
		c.Close()
		select {
		case r := <-rejected:
			t.Errorf("served connection reported rejected: %+v", r)
		case <-time.After(50 * time.Millisecond):
		}
	})
}
