package hardening

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/qlog"
	"github.com/quic-go/quic-go/qlogwriter"

	"meshd.dev/meshd/internal/testutil"
)

// quicMesh is a sidecar with one HTTP/3 listener ("h3") in front of the
// suite's backend.
type quicMesh struct {
	sc      *testutil.Sidecar
	addr    string // the listener's UDP address
	certDir string
}

// startQUICSidecar starts a sidecar with testutil.H3Bootstrap's HTTP/3
// listener in front of be: p's certificate and backend are filled in (the
// example certificate, be), and its idle and handshake timeouts default to
// 30 s and 5 s.
func startQUICSidecar(t *testing.T, be *backend, p testutil.H3BootstrapParams) *quicMesh {
	t.Helper()
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	certDir := filepath.Join(root, "examples", "certs")
	p.CertFile, p.KeyFile = filepath.Join(certDir, "server.pem"), filepath.Join(certDir, "server-key.pem")
	p.BackendAddr = be.addr
	if p.IdleTimeout == 0 {
		p.IdleTimeout = 30 * time.Second
	}
	if p.HandshakeTimeout == 0 {
		p.HandshakeTimeout = 5 * time.Second
	}
	sc := testutil.StartSidecar(t, testutil.MustH3Bootstrap(t, p))
	return &quicMesh{sc: sc, addr: sc.ListenerAddr(t, testutil.H3ListenerName), certDir: certDir}
}

// quicStat is the sum of the sidecar's stats named *.suffix (the QUIC
// listener's scope carries its address).
func (m *quicMesh) quicStat(t *testing.T, suffix string) int64 {
	t.Helper()
	n, err := m.quicStatErr(suffix)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// quicStatErr is quicStat for goroutines other than the test's.
func (m *quicMesh) quicStatErr(suffix string) (int64, error) {
	st, err := testutil.FetchStats(m.sc.AdminAddr)
	if err != nil {
		return 0, err
	}
	var n int64
	for name, v := range st {
		if strings.HasSuffix(name, "."+suffix) {
			n += v
		}
	}
	return n, nil
}

// goroutines is the sidecar's goroutine count from GET /memory.
func (m *quicMesh) goroutines(t *testing.T) int {
	t.Helper()
	n, err := m.goroutinesErr()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// goroutinesErr is goroutines for goroutines other than the test's.
func (m *quicMesh) goroutinesErr() (int, error) {
	code, body, err := m.sc.AdminRequest(http.MethodGet, "/memory")
	if err != nil {
		return 0, err
	}
	var mem memory
	if err := json.Unmarshal([]byte(body), &mem); code != http.StatusOK || err != nil {
		return 0, fmt.Errorf("GET /memory: status %d, %v", code, err)
	}
	return mem.Goroutines, nil
}

// tlsConfig trusts the example CA for the listener's certificate.
func (m *quicMesh) tlsConfig(t *testing.T) *tls.Config {
	return (&mesh{certDir: m.certDir}).tlsConfig(t, http3.NextProtoH3)
}

// waitStat polls a QUIC stat until ok accepts it or d passes, and returns
// the last value.
func (m *quicMesh) waitStat(t *testing.T, suffix string, d time.Duration, ok func(int64) bool) int64 {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		v := m.quicStat(t, suffix)
		if ok(v) || time.Now().After(deadline) {
			return v
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// h3Get runs one GET / on a new HTTP/3 connection (a fresh transport, so
// every request is a handshake) and closes it.
func (m *quicMesh) h3Get(tc *tls.Config) error {
	tr := &http3.Transport{TLSClientConfig: tc, QUICConfig: &quic.Config{HandshakeIdleTimeout: 5 * time.Second}}
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+m.addr+"/", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// spoofedSource is one attacker address: a UDP socket that sends Initials
// and never answers, counting what the sidecar sends back.
type spoofedSource struct {
	conn      *net.UDPConn
	sent      int
	received  int
	byType    map[string]int // datagrams received by first packet type
	sendError error
}

// packetType names a datagram's first packet by its header.
func packetType(b []byte) string {
	switch {
	case len(b) == 0:
		return "empty"
	case b[0]&0x80 == 0:
		return "1-RTT"
	case len(b) >= 5 && b[1]|b[2]|b[3]|b[4] == 0:
		return "version negotiation"
	}
	return [...]string{longInitial: "Initial", long0RTT: "0-RTT", longHandshake: "Handshake", longRetry: "Retry"}[(b[0]>>4)&3]
}

// floodResult sums up one Initial flood.
type floodResult struct {
	sources, answered, retried, handshaked int
	maxRatio                               float64
	worst                                  *spoofedSource
}

// initialFlood sends initialsPerSource hand-built Initials from each of n
// sources (paced in batches so the loopback socket buffer does not drop
// them), then reads everything the sidecar sends them for observe.
func initialFlood(t *testing.T, addr string, n, initialsPerSource int, observe time.Duration) floodResult {
	t.Helper()
	dst, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srcs := make([]*spoofedSource, n)
	for i := range srcs {
		// Spread the sources over 127.0.0.2-127.0.0.201 (all loopback on
		// Linux), so the sidecar sees distinct IP addresses.
		ip := net.IPv4(127, 0, 0, byte(2+i%200))
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip})
		if err != nil {
			c, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		}
		if err != nil {
			t.Fatalf("source %d: %v", i, err)
		}
		t.Cleanup(func() { _ = c.Close() })
		srcs[i] = &spoofedSource{conn: c, byType: map[string]int{}}
	}
	var wg sync.WaitGroup
	end := time.Now().Add(observe)
	for _, s := range srcs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 2048)
			_ = s.conn.SetReadDeadline(end)
			for {
				k, _, err := s.conn.ReadFromUDP(buf)
				if err != nil {
					return
				}
				s.received += k
				s.byType[packetType(buf[:k])]++
			}
		}()
	}
	const batch = 50
	for i, s := range srcs {
		for range initialsPerSource {
			pkt, err := initialPacket()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.conn.WriteToUDP(pkt, dst); err != nil {
				s.sendError = err
				continue
			}
			s.sent += len(pkt)
		}
		if i%batch == batch-1 {
			time.Sleep(20 * time.Millisecond)
		}
	}
	wg.Wait()
	r := floodResult{sources: n}
	for _, s := range srcs {
		if s.sendError != nil {
			t.Fatalf("sending from %v: %v", s.conn.LocalAddr(), s.sendError)
		}
		if s.received == 0 {
			continue
		}
		r.answered++
		if s.byType["Retry"] > 0 {
			r.retried++
		}
		if s.byType["Initial"]+s.byType["Handshake"] > 0 {
			r.handshaked++
		}
		if ratio := float64(s.received) / float64(s.sent); ratio > r.maxRatio {
			r.maxRatio, r.worst = ratio, s
		}
	}
	return r
}

// TestQUICInitialFlood is issue 11's QUIC item 1: spoofed Initials from
// 300 addresses (50 under -race) that never answer (hand-built v1
// Initials with a real ClientHello, one 1200-byte datagram each). For
// every source the sidecar sends at most 3x the bytes it received (RFC
// 9000 section 8.1); the connection state it creates is counted
// (quic.conn_state_*) and released after crypto_handshake_timeout; with
// retry always it answers with Retry only and creates no state; under
// load it creates state for at most the threshold per second and answers
// the rest with Retry. A well-behaved HTTP/3 client, one new connection
// per request, gets every response during the flood.
func TestQUICInitialFlood(t *testing.T) {
	const (
		handshakeTimeout = 2 * time.Second
		observe          = handshakeTimeout + time.Second
	)
	sources, threshold := 300, int64(40)
	if raceEnabled {
		// A race-built sidecar handshakes several times slower: 300
		// handshakes at once starve it (and the probe) of CPU.
		sources, threshold = 50, 10
	}
	be := startBackend(t)
	for _, tc := range []struct {
		name  string
		retry string
	}{
		{"retry never", "never"},
		{"retry always", "always"},
		{"retry under load", "under_load"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := startQUICSidecar(t, be, testutil.H3BootstrapParams{Retry: tc.retry, RetryThreshold: int(threshold), HandshakeTimeout: handshakeTimeout})
			tlsCfg := m.tlsConfig(t)
			if err := m.h3Get(tlsCfg); err != nil {
				t.Fatalf("HTTP/3 request before the flood: %v", err)
			}
			m.waitStat(t, "quic.conn_state_active", 5*time.Second, func(v int64) bool { return v == 0 })
			g0 := m.goroutines(t)
			created0, retry0 := m.quicStat(t, "quic.conn_state_created"), m.quicStat(t, "quic.retry_required")
			dropped0 := m.quicStat(t, "quic.amplification_dropped")

			// The well-behaved client: a new connection per request for
			// as long as the flood is observed.
			type probeResult struct {
				ok   int
				errs []error
				lat  []time.Duration
			}
			probeDone := make(chan probeResult, 1)
			stop := make(chan struct{})
			go func() {
				var r probeResult
				for i := 0; i < 200; i++ {
					select {
					case <-stop:
						probeDone <- r
						return
					default:
					}
					start := time.Now()
					if err := m.h3Get(tlsCfg); err != nil {
						r.errs = append(r.errs, err)
					} else {
						r.ok++
						r.lat = append(r.lat, time.Since(start))
					}
					time.Sleep(50 * time.Millisecond)
				}
				probeDone <- r
			}()
			start := time.Now()
			peakDone := make(chan [2]int64, 1)
			go func() {
				// Sample the live state while the flood is observed.
				var peak, gPeak int64
				for time.Since(start) < observe {
					if v, err := m.quicStatErr("quic.conn_state_active"); err == nil {
						peak = max(peak, v)
					}
					if g, err := m.goroutinesErr(); err == nil {
						gPeak = max(gPeak, int64(g))
					}
					time.Sleep(200 * time.Millisecond)
				}
				peakDone <- [2]int64{peak, gPeak}
			}()
			r := initialFlood(t, m.addr, sources, 1, observe)
			floodTime := time.Since(start) - observe
			close(stop)
			probe := <-probeDone
			peak := <-peakDone
			created := m.quicStat(t, "quic.conn_state_created") - created0
			retries := m.quicStat(t, "quic.retry_required") - retry0
			dropped := m.quicStat(t, "quic.amplification_dropped") - dropped0
			// Every probe request is one connection (a Retry creates none).
			floodCreated := created - int64(probe.ok+len(probe.errs))

			t.Logf("FIGURES %s: %d sources x 1 Initial of %d bytes; answered %d (handshake %d, Retry %d); max sent/received %.2f (%d/%d bytes, %v); conn state created %d (flood %d), peak active %d, goroutines %d -> peak %d; retry_required +%d; amplification_dropped +%d; probe %d ok, %d failed, median %v",
				tc.name, sources, minInitialDatagram, r.answered, r.handshaked, r.retried, r.maxRatio,
				r.worst.received, r.worst.sent, r.worst.byType, created, floodCreated, peak[0], g0, peak[1], retries, dropped,
				probe.ok, len(probe.errs), percentile(probe.lat, 0.5).Round(100*time.Microsecond))

			if r.maxRatio > 3 {
				t.Errorf("amplification: a source got %d bytes for %d sent (%.2fx > 3x; %v)", r.worst.received, r.worst.sent, r.maxRatio, r.worst.byType)
			}
			// Without Retry every Initial gets a handshake. quic-go queues
			// Retry packets in a short queue and drops the Initial, with
			// no answer and no state, when it is full.
			if tc.retry == "never" && r.answered < sources*9/10 || r.answered == 0 {
				t.Errorf("%d of %d sources got an answer; want at least 90%% without Retry, some with it", r.answered, sources)
			}
			if len(probe.errs) > 0 || probe.ok == 0 {
				t.Errorf("the well-behaved HTTP/3 client: %d ok, %d failed during the flood: %v", probe.ok, len(probe.errs), probe.errs)
			}
			switch tc.retry {
			case "never":
				if r.retried > 0 || retries > 0 {
					t.Errorf("retry never: %d sources got Retry, retry_required +%d", r.retried, retries)
				}
				if floodCreated < int64(r.handshaked) {
					t.Errorf("conn_state_created counted %d flood connections, %d sources got a handshake", floodCreated, r.handshaked)
				}
			case "always":
				if r.handshaked > 0 || r.retried != r.answered {
					t.Errorf("retry always: %d sources got handshake packets, %d of %d answered got Retry; want Retry only", r.handshaked, r.retried, r.answered)
				}
				if floodCreated != 0 {
					t.Errorf("retry always: %d connection states created for the flood, want 0", floodCreated)
				}
			case "under_load":
				// The decider counts attempts in one-second windows: the
				// flood (and the probe) span at most ceil(flood)+1 of them.
				windows := int64(floodTime/time.Second) + 2
				if floodCreated > threshold*windows || int64(r.handshaked) > threshold*windows {
					t.Errorf("under load: %d states created and %d sources handshaked; want at most threshold %d x %d windows", floodCreated, r.handshaked, threshold, windows)
				}
				if retries < int64(sources)-threshold*windows || r.retried == 0 {
					t.Errorf("under load: Retry asked for %d Initials and received by %d sources; want at least %d asked", retries, r.retried, int64(sources)-threshold*windows)
				}
				if r.retried+r.handshaked != r.answered {
					t.Errorf("under load: %d answered, %d Retry + %d handshake", r.answered, r.retried, r.handshaked)
				}
			}

			// Released: the handshakes time out, the state goes.
			active := m.waitStat(t, "quic.conn_state_active", 3*handshakeTimeout+5*time.Second, func(v int64) bool { return v == 0 })
			g1 := m.goroutines(t)
			for i := 0; i < 50 && g1 > g0+10; i++ {
				time.Sleep(100 * time.Millisecond)
				g1 = m.goroutines(t)
			}
			t.Logf("FIGURES %s: released %.1f s after the flood: conn_state_active %d, goroutines %d (baseline %d)", tc.name, time.Since(start).Seconds()-floodTime.Seconds(), active, g1, g0)
			if active != 0 {
				t.Errorf("conn_state_active %d after the handshake timeout, want 0", active)
			}
			if g1 > g0+10 {
				t.Errorf("goroutines %d after the flood, baseline %d (bound +10)", g1, g0)
			}
		})
	}
}

// writeSecret writes a 32-byte random stateless reset secret into dir.
func writeSecret(t *testing.T, dir, name string) string {
	t.Helper()
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// dialH3 opens a QUIC connection to addr from its own UDP socket (pc
// wraps it when set) and an HTTP/3 client connection on it.
func dialH3(t *testing.T, addr string, tc *tls.Config, qc *quic.Config, wrap func(net.PacketConn) net.PacketConn) (*quic.Conn, *http3.ClientConn) {
	t.Helper()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var pc net.PacketConn = udp
	if wrap != nil {
		pc = wrap(udp)
	}
	tr := &quic.Transport{Conn: pc}
	t.Cleanup(func() { _ = tr.Close(); _ = udp.Close() })
	dst, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := tr.Dial(ctx, dst, tc, qc)
	if err != nil {
		t.Fatalf("QUIC dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = conn.CloseWithError(0, "") })
	h3 := (&http3.Transport{}).NewClientConn(conn)
	return conn, h3
}

// get runs GET path on cc, bounded by d.
func get(cc *http3.ClientConn, addr, path string, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+path, nil)
	resp, err := cc.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %d", resp.StatusCode)
	}
	return err
}

// TestQUICStatelessResetAfterRestart is issue 11's QUIC item 2: a client
// holds a QUIC connection, the sidecar is killed (no CONNECTION_CLOSE
// reaches the client) and started again on the same port. With the same
// stateless_reset_secret_file the client's next packet is answered with a
// stateless reset it accepts, and its connection closes at once; with a
// different secret the reset's token does not match, so the client only
// learns at its idle timeout. Both runs are in this test; the figures
// compare them.
func TestQUICStatelessResetAfterRestart(t *testing.T) {
	// The old connection must outlive the restart (kill, exec, bind,
	// ready), which takes well under a second on a quiet machine but
	// several on a loaded one, or under -race.
	const idle = 8 * time.Second
	be := startBackend(t)
	dir := t.TempDir()
	secretA, secretB := writeSecret(t, dir, "a"), writeSecret(t, dir, "b")
	type result struct {
		cause    error
		afterReq time.Duration // first request after the restart -> closed
		afterAct time.Duration // last packet from the old sidecar -> closed
	}
	run := func(t *testing.T, restartSecret string) result {
		m := startQUICSidecar(t, be, testutil.H3BootstrapParams{StatelessResetSecretFile: secretA, IdleTimeout: idle})
		qc := &quietConn{}
		conn, cc := dialH3(t, m.addr, m.tlsConfig(t), &quic.Config{MaxIdleTimeout: idle, Tracer: qc.tracer}, func(pc net.PacketConn) net.PacketConn {
			qc.PacketConn = pc
			return qc
		})
		if err := get(cc, m.addr, "/", 10*time.Second); err != nil {
			t.Fatalf("request before the restart: %v", err)
		}
		lastActivity := time.Now()
		// The client still owes the old sidecar a delayed ACK or two (of
		// the response, of MAX_STREAMS), and may have sent frames the
		// sidecar has not acknowledged yet, which it would probe for
		// after a PTO. Sent to a sidecar restarted within those few
		// milliseconds, one would draw the reset before the request this
		// test times; so restart only once the client has gone quiet.
		qc.waitQuiet(t, 300*time.Millisecond, 10*time.Second)
		if err := m.sc.Signal(os.Kill); err != nil {
			t.Fatal(err)
		}
		if _, err := m.sc.Wait(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		killedAt := time.Now()
		_, port, _ := net.SplitHostPort(m.addr)
		p, _ := strconv.Atoi(port)
		m2 := startQUICSidecar(t, be, testutil.H3BootstrapParams{Port: p, StatelessResetSecretFile: restartSecret, IdleTimeout: idle})
		if m2.addr != m.addr {
			t.Fatalf("restarted on %s, want %s", m2.addr, m.addr)
		}
		select {
		case <-conn.Context().Done():
			t.Fatalf("connection closed before the first request after the restart (which took %v): %v", time.Since(killedAt), context.Cause(conn.Context()))
		default:
		}
		reqAt := time.Now()
		reqErr := make(chan error, 1)
		go func() { reqErr <- get(cc, m.addr, "/", 3*idle) }()
		select {
		case <-conn.Context().Done():
		case <-time.After(3 * idle):
			t.Fatalf("connection still open %v after the restart", 3*idle)
		}
		r := result{cause: context.Cause(conn.Context()), afterReq: time.Since(reqAt), afterAct: time.Since(lastActivity)}
		if err := <-reqErr; err == nil {
			t.Errorf("the request after the restart succeeded on the old connection")
		}
		// The restarted sidecar serves new connections.
		_, cc2 := dialH3(t, m.addr, m.tlsConfig(t), nil, nil)
		if err := get(cc2, m.addr, "/", 10*time.Second); err != nil {
			t.Errorf("new connection after the restart: %v", err)
		}
		return r
	}
	same := run(t, secretA)
	other := run(t, secretB)
	t.Logf("FIGURES same key: closed %v after the first request (%v after the last packet), cause %v; different key: closed %v after the first request (%v after the last packet), cause %v; idle timeout %v",
		same.afterReq.Round(time.Millisecond), same.afterAct.Round(time.Millisecond), same.cause,
		other.afterReq.Round(time.Millisecond), other.afterAct.Round(time.Millisecond), other.cause, idle)
	if _, ok := errors.AsType[*quic.StatelessResetError](same.cause); !ok {
		t.Errorf("same key: connection closed by %v, want a stateless reset", same.cause)
	}
	if _, ok := errors.AsType[*quic.IdleTimeoutError](other.cause); !ok {
		t.Errorf("different key: connection closed by %v, want the idle timeout (the reset's token must not match)", other.cause)
	}
	// The baseline is the other run: waiting for the idle timeout takes
	// about idle after the last packet; the reset must come well before.
	if same.afterReq > idle/2 || same.afterReq > other.afterReq/2 {
		t.Errorf("same key: closed %v after the request; want well under the idle timeout %v and the different-key run's %v", same.afterReq, idle, other.afterReq)
	}
	if other.afterAct < idle*9/10 {
		t.Errorf("different key: closed %v after the last packet, before the idle timeout %v", other.afterAct, idle)
	}
}

// quietConn is a client socket that records when it last sent and
// received a datagram, and whether its connection's loss detection timer
// is armed (flight, the connection's qlog trace), so a test can wait
// until the connection has nothing left to send.
type quietConn struct {
	net.PacketConn
	lastWrite atomic.Int64 // time.Now().UnixNano() of the last WriteTo
	lastRead  atomic.Int64 // time.Now().UnixNano() of the last ReadFrom
	flight    flightTrace
}

// SetReadBuffer and SetWriteBuffer reach the UDP socket, as quic-go asks.
func (c *quietConn) SetReadBuffer(n int) error {
	return c.PacketConn.(*net.UDPConn).SetReadBuffer(n)
}

func (c *quietConn) SetWriteBuffer(n int) error {
	return c.PacketConn.(*net.UDPConn).SetWriteBuffer(n)
}

func (c *quietConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	c.lastWrite.Store(time.Now().UnixNano())
	return c.PacketConn.WriteTo(p, addr)
}

func (c *quietConn) ReadFrom(p []byte) (int, net.Addr, error) {
	n, addr, err := c.PacketConn.ReadFrom(p)
	if err == nil {
		c.lastRead.Store(time.Now().UnixNano())
	}
	return n, addr, err
}

// tracer is a quic.Config.Tracer that makes c.flight the connection's
// trace.
func (c *quietConn) tracer(context.Context, bool, quic.ConnectionID) qlogwriter.Trace {
	return &c.flight
}

// flightTrace is a qlog trace (and its only recorder) that follows the
// connection's loss detection timer. quic-go arms it (a "set"
// timer_updated event) while ack-eliciting packets are unacknowledged,
// for a PTO probe or a loss declaration, and reports its expiry and its
// cancellation once nothing is left in flight, including when the
// Handshake packet number space is dropped. (metrics_updated's
// bytes_in_flight is not reported on that drop, so it can stay above 0
// with nothing in flight.)
type flightTrace struct{ armed atomic.Bool }

func (f *flightTrace) AddProducer() qlogwriter.Recorder { return f }

func (f *flightTrace) RecordEvent(e qlogwriter.Event) {
	if u, ok := e.(qlog.TimerUpdated); ok {
		f.armed.Store(u.Type == qlog.TimerEventTypeSet)
	}
}

func (f *flightTrace) Close() error { return nil }

// waitQuiet returns once the client has nothing left to send: no loss
// detection timer armed (so no PTO probe to come) and no datagram sent or
// received for quiet (so no ACK owed: one is sent within max_ack_delay of
// the packet it acknowledges). It fails t if that takes longer than
// limit.
func (c *quietConn) waitQuiet(t *testing.T, quiet, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		last := time.Unix(0, max(c.lastWrite.Load(), c.lastRead.Load()))
		since, armed := time.Since(last), c.flight.armed.Load()
		if since >= quiet && !armed {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the client's connection did not go quiet within %v (last datagram %v ago, loss detection timer armed: %v)", limit, since, armed)
		}
		time.Sleep(max(quiet-since, 10*time.Millisecond))
	}
}

// serverCIDLen is the length of the connection IDs meshd's QUIC listener
// issues: quic-go's default (the listener sets no ConnectionIDLength).
const serverCIDLen = 4

// injectingClient is a quic-go HTTP/3 client connection whose 1-RTT key
// the test knows (from the TLS key log), so it can add packets of its
// own to the connection.
type injectingClient struct {
	conn *quic.Conn
	cc   *http3.ClientConn
	ic   *injectConn
	keys *packetKeys
}

// dialInjecting connects to m and waits until the client has sent 1-RTT
// packets (the HTTP/3 control stream), whose packet numbers inject reads.
func dialInjecting(t *testing.T, m *quicMesh) *injectingClient {
	t.Helper()
	kl := &keyLog{}
	tc := m.tlsConfig(t)
	tc.KeyLogWriter = kl
	dst, err := net.ResolveUDPAddr("udp", m.addr)
	if err != nil {
		t.Fatal(err)
	}
	var ic *injectConn
	conn, cc := dialH3(t, m.addr, tc, &quic.Config{MaxIdleTimeout: 30 * time.Second}, func(pc net.PacketConn) net.PacketConn {
		ic = &injectConn{PacketConn: pc, server: dst}
		return ic
	})
	suite := conn.ConnectionState().TLS.CipherSuite
	keys, err := oneRTTKeys(suite, kl.secret("CLIENT_TRAFFIC_SECRET_0"))
	if err != nil {
		t.Skipf("cannot protect packets for this connection: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		ic.mu.Lock()
		n := len(ic.sent)
		ic.mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the client sent no 1-RTT packet within 5 s of the handshake")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return &injectingClient{conn: conn, cc: cc, ic: ic, keys: keys}
}

// closedBy waits up to d for the connection to close and returns why.
func (c *injectingClient) closedBy(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case <-c.conn.Context().Done():
		return context.Cause(c.conn.Context())
	case <-time.After(d):
		t.Fatalf("connection still open %v after the injected packet", d)
		return nil
	}
}

// TestQUICLimits is issue 11's QUIC item 3, against quic-go's HTTP/3
// client with packets of the test's own added to its connection (1-RTT
// packets under the client's key, read from the TLS key log):
//   - streams: with max_concurrent_streams 10 and 10 requests open,
//     quic-go's own OpenStream refuses an 11th; a STREAM frame for the
//     11th stream anyway gets the connection closed with
//     STREAM_LIMIT_ERROR (RFC 9000 section 4.6);
//   - connection IDs: NEW_CONNECTION_ID frames past the listener's
//     active_connection_id_limit (quic-go's 4) get the connection closed
//     with CONNECTION_ID_LIMIT_ERROR (section 5.1.1).
func TestQUICLimits(t *testing.T) {
	const maxStreams = 10
	be := startBackend(t)
	m := startQUICSidecar(t, be, testutil.H3BootstrapParams{MaxConcurrentStreams: maxStreams})

	t.Run("streams", func(t *testing.T) {
		c := dialInjecting(t, m)
		destroyed0 := m.sc.Stats(t)["http.h3.downstream_cx_destroy"]
		reqErrs := make(chan error, maxStreams)
		for range maxStreams {
			go func() { reqErrs <- get(c.cc, m.addr, "/hang", 20*time.Second) }()
		}
		deadline := time.Now().Add(10 * time.Second)
		for m.sc.Stats(t)["http.h3.downstream_rq_active"] < maxStreams {
			if time.Now().After(deadline) {
				t.Fatalf("%d requests active after 10 s, want %d", m.sc.Stats(t)["http.h3.downstream_rq_active"], maxStreams)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if _, err := c.conn.OpenStream(); !errors.Is(err, &quic.StreamLimitReachedError{}) {
			t.Fatalf("quic-go opened an 11th stream (%v); the limit should stop it", err)
		}
		// Client-initiated bidirectional stream n has ID 4n: the 11th is 40.
		if err := c.ic.inject(c.keys, serverCIDLen, streamFrame(4*maxStreams, []byte("x"))); err != nil {
			t.Fatal(err)
		}
		cause := c.closedBy(t, 10*time.Second)
		var te *quic.TransportError
		if !errors.As(cause, &te) || te.ErrorCode != quic.StreamLimitError || !te.Remote {
			t.Fatalf("connection closed by %v, want STREAM_LIMIT_ERROR from the sidecar", cause)
		}
		for range maxStreams {
			if err := <-reqErrs; err == nil {
				t.Error("a request on the closed connection succeeded")
			}
		}
		// The sidecar counts the destroy (an AfterFunc of the
		// connection's context) and ends the requests (each handler
		// seeing its stream reset) on goroutines of their own, in no set
		// order: wait for both.
		st := m.sc.Stats(t)
		active, destroyed := st["http.h3.downstream_rq_active"], st["http.h3.downstream_cx_destroy"]-destroyed0
		for i := 0; i < 50 && (active != 0 || destroyed != 1); i++ {
			time.Sleep(100 * time.Millisecond)
			st = m.sc.Stats(t)
			active, destroyed = st["http.h3.downstream_rq_active"], st["http.h3.downstream_cx_destroy"]-destroyed0
		}
		t.Logf("FIGURES stream limit: %d requests open, quic-go's OpenStream: stream limit reached; STREAM frame for stream %d -> %v; downstream_cx_destroy +%d, downstream_rq_active %d", maxStreams, 4*maxStreams, cause, destroyed, active)
		if active != 0 || destroyed != 1 {
			t.Errorf("after the close: downstream_rq_active %d (want 0), downstream_cx_destroy +%d (want 1)", active, destroyed)
		}
	})

	t.Run("connection IDs", func(t *testing.T) {
		c := dialInjecting(t, m)
		if err := get(c.cc, m.addr, "/", 10*time.Second); err != nil {
			t.Fatalf("request before the attack: %v", err)
		}
		// Four new IDs: with the one in use that is 5 > 4, whatever
		// number of its own the client has issued already.
		var frames []byte
		for seq := range uint64(4) {
			frames = append(frames, newConnectionIDFrame(100+seq)...)
		}
		if err := c.ic.inject(c.keys, serverCIDLen, frames); err != nil {
			t.Fatal(err)
		}
		cause := c.closedBy(t, 10*time.Second)
		var te *quic.TransportError
		if !errors.As(cause, &te) || te.ErrorCode != quic.ConnectionIDLimitError || !te.Remote {
			t.Fatalf("connection closed by %v, want CONNECTION_ID_LIMIT_ERROR from the sidecar", cause)
		}
		t.Logf("FIGURES connection ID limit: 4 NEW_CONNECTION_ID frames (sequence 100-103) -> %v", cause)
		// The listener keeps serving.
		if err := m.h3Get(m.tlsConfig(t)); err != nil {
			t.Errorf("new connection after the attack: %v", err)
		}
	})
}
