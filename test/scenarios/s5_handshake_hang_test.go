package scenarios

// S5: TLS handshake hang. The upstream accepts TCP and never answers the
// TLS ClientHello. meshd's connect_timeout covers the handshake, the router
// fails the request over to the other endpoint (or answers 503 when there
// is none), consecutive_local_origin_failure ejects the hung endpoint, and
// the sidecar keeps no connection, fd or goroutine for it.
//
// Numeric assertions: every call succeeds; at most s5EjectAfter calls pay
// the connect_timeout before the hung endpoint is ejected; every TCP
// connection meshd opened to the hung endpoint is closed by meshd; sidecar
// fds and goroutines return to their baseline (± s5FDSlack / s5GoroutineSlack)
// once the client has gone. TestS5HandshakeHangTiming adds the time bound:
// each call finishes within connect_timeout + s5Tolerance of the baseline
// call latency, failed over or 503.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"meshd.dev/meshd/internal/testutil"
)

const (
	s5ConnectTimeout = 500 * time.Millisecond
	// s5EjectAfter is consecutive_local_origin_failure.
	s5EjectAfter = 3
	// s5Calls is how many sequential calls each test makes.
	s5Calls = 20
	// s5Tolerance is the scheduling slack a call may take beyond
	// connect_timeout plus the baseline latency.
	s5Tolerance = 300 * time.Millisecond
	s5FDSlack   = 2
	// s5GoroutineSlack covers the reader/writer of the pooled good
	// connection and timers that come and go.
	s5GoroutineSlack = 8
)

// hangListener accepts TCP connections and never writes a byte: a TLS
// handshake against it hangs. It counts accepted connections and those the
// peer closed.
type hangListener struct {
	ln       net.Listener
	accepted atomic.Int64
	closed   atomic.Int64
	mu       sync.Mutex
	conns    []net.Conn
	wg       sync.WaitGroup
}

func startHangListener(t *testing.T) *hangListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &hangListener{ln: ln}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.accepted.Add(1)
			h.mu.Lock()
			h.conns = append(h.conns, c)
			h.mu.Unlock()
			h.wg.Add(1)
			go func() {
				defer h.wg.Done()
				buf := make([]byte, 4096)
				for {
					if _, err := c.Read(buf); err != nil {
						h.closed.Add(1)
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		h.mu.Lock()
		for _, c := range h.conns {
			c.Close()
		}
		h.mu.Unlock()
		h.wg.Wait()
	})
	return h
}

func (h *hangListener) Addr() string { return h.ln.Addr().String() }

// s5ServerTLS returns a server TLS config with a fresh self-signed
// certificate for 127.0.0.1.
func s5ServerTLS(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(5),
		Subject:      pkix.Name{CommonName: "s5-backend"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		MinVersion:   tls.VersionTLS12,
	}
}

// s5Bootstrap is a TLS cluster over endpoints with the S5 outlier
// detection and a connect-failure retry policy.
func s5Bootstrap(endpoints ...string) scenarioBootstrap {
	return scenarioBootstrap{
		Endpoints:      endpoints,
		ConnectTimeout: s5ConnectTimeout,
		RouteTimeout:   5 * time.Second,
		Retry:          &retryPolicy{RetryOn: "connect-failure", NumRetries: 2},
		OutlierDetection: map[string]any{
			"split_external_local_origin_errors": true,
			"consecutive_local_origin_failure":   s5EjectAfter,
			"max_ejection_percent":               50,
			"interval":                           "1s",
			"base_ejection_time":                 "60s",
		},
		ClusterExtra: map[string]any{
			"transport_socket": map[string]any{
				"name": "envoy.transport_sockets.tls",
				"typed_config": map[string]any{
					// No validation_context: like Envoy, meshd does not
					// verify the upstream's self-signed certificate.
					"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
				},
			},
		},
	}
}

// s5Call makes one EmptyCall through the sidecar and returns its duration
// and error.
func s5Call(client grpc_testing.TestServiceClient) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	start := time.Now()
	_, err := client.EmptyCall(ctx, &grpc_testing.Empty{})
	return time.Since(start), err
}

func TestS5HandshakeHang(t *testing.T) {
	hang := startHangListener(t)
	good := startGRPCBackend(t, backendConfig{Options: []grpc.ServerOption{grpc.Creds(credentials.NewTLS(s5ServerTLS(t)))}})
	sc := startScenarioSidecar(t, s5Bootstrap(hang.Addr(), good.Addr))
	baseFDs, baseG := sc.fds(t), sc.goroutines(t)

	cc, err := grpc.NewClient(sc.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	client := grpc_testing.NewTestServiceClient(cc)
	slow := 0
	for i := range s5Calls {
		d, err := s5Call(client)
		if err != nil {
			t.Fatalf("call %d failed after %v: %v (the router should fail over to %s)", i, d, err, good.Addr)
		}
		if d >= s5ConnectTimeout {
			slow++
		}
	}
	cc.Close()
	if slow > s5EjectAfter {
		t.Errorf("%d calls took connect_timeout or longer; after %d local-origin failures the hung endpoint should have been ejected", slow, s5EjectAfter)
	}
	if got := good.Started(); got != s5Calls {
		t.Errorf("good endpoint served %d calls, want all %d", got, s5Calls)
	}
	if v := sc.clusterStat(t, "outlier_detection.ejections_enforced_consecutive_local_origin_failure"); v < 1 {
		t.Errorf("ejections_enforced_consecutive_local_origin_failure = %d, want >= 1", v)
	}
	if v := sc.clusterStat(t, "outlier_detection.ejections_active"); v != 1 {
		t.Errorf("ejections_active = %d, want 1 (the hung endpoint)", v)
	}
	if v := sc.clusterStat(t, "upstream_cx_connect_timeout"); v < 1 {
		t.Errorf("upstream_cx_connect_timeout = %d, want >= 1", v)
	}
	clusters := sc.Admin(t, http.MethodGet, "/clusters")
	flagLine := testutil.BackendCluster + "::" + hang.Addr() + "::health_flags::"
	if !strings.Contains(clusters, flagLine) || strings.Contains(clusters, flagLine+"healthy\n") {
		t.Errorf("/clusters does not show %s as unhealthy:\n%s", hang.Addr(), clusters)
	}
	if hang.accepted.Load() == 0 {
		t.Fatal("the sidecar never connected to the hung endpoint; the scenario did not happen")
	}
	waitFor(t, settleTimeout, "sidecar closes every connection to the hung endpoint", func() (bool, string) {
		a, c := hang.accepted.Load(), hang.closed.Load()
		return a == c, "accepted " + itoa(a) + ", closed by meshd " + itoa(c)
	})
	waitFor(t, settleTimeout, "sidecar fds and goroutines back to baseline", func() (bool, string) {
		f, g := sc.fds(t), sc.goroutines(t)
		return f <= baseFDs+s5FDSlack && g <= baseG+s5GoroutineSlack,
			"fds " + itoa(int64(f)) + " (baseline " + itoa(int64(baseFDs)) + "), goroutines " + itoa(int64(g)) + " (baseline " + itoa(int64(baseG)) + ")"
	})
}

// TestS5HandshakeHangTiming bounds how long a call waits on a hung
// endpoint: failed over, or answered 503 (gRPC UNAVAILABLE) when the hung
// endpoint is the only one, within connect_timeout + s5Tolerance of the
// median latency of calls to a good endpoint measured in the same test.
func TestS5HandshakeHangTiming(t *testing.T) {
	timing(t)
	hang := startHangListener(t)
	good := startGRPCBackend(t, backendConfig{Options: []grpc.ServerOption{grpc.Creds(credentials.NewTLS(s5ServerTLS(t)))}})

	base := startScenarioSidecar(t, s5Bootstrap(good.Addr))
	baseline := medianCall(t, dialGRPC(t, base.Addr), s5Calls)
	bound := baseline + s5ConnectTimeout + s5Tolerance

	t.Run("failover", func(t *testing.T) {
		sc := startScenarioSidecar(t, s5Bootstrap(hang.Addr(), good.Addr))
		client := dialGRPC(t, sc.Addr)
		for i := range s5Calls {
			d, err := s5Call(client)
			if err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
			if d > bound {
				t.Errorf("call %d took %v, want <= %v (baseline %v + connect_timeout %v + tolerance %v)", i, d, bound, baseline, s5ConnectTimeout, s5Tolerance)
			}
		}
	})
	t.Run("only hung endpoint: 503", func(t *testing.T) {
		sc := startScenarioSidecar(t, s5Bootstrap(hang.Addr()))
		client := dialGRPC(t, sc.Addr)
		for i := range 3 {
			d, err := s5Call(client)
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("call %d: %v, want UNAVAILABLE (503)", i, err)
			}
			// connect-failure retries (num_retries 2) may each wait out
			// connect_timeout unless meshd's dial back-off fails them
			// fast.
			if lim := baseline + 3*s5ConnectTimeout + s5Tolerance; d > lim {
				t.Errorf("call %d took %v, want <= %v", i, d, lim)
			}
		}
	})
}

// medianCall returns the median latency of n sequential successful calls.
func medianCall(t *testing.T, client grpc_testing.TestServiceClient, n int) time.Duration {
	t.Helper()
	ds := make([]time.Duration, 0, n)
	for i := range n {
		d, err := s5Call(client)
		if err != nil {
			t.Fatalf("baseline call %d: %v", i, err)
		}
		ds = append(ds, d)
	}
	slices.Sort(ds)
	return ds[len(ds)/2]
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
