package xds_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc/codes"

	"meshd.dev/meshd/internal/meshtest"
	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/xds/server"
)

// h3RotationTTL is the control plane's --svid-ttl in
// TestHTTP3RotationNewHandshakes: sidecars renew every 1.5 s.
const h3RotationTTL = 3 * time.Second

// TestHTTP3RotationNewHandshakes: certificate rotation applies to new QUIC
// connections without dropping existing ones. With a 3 s SVID TTL, a QUIC
// connection opened to the server sidecar's HTTP/3 listener before its
// SVID renews keeps serving requests after it (still showing the old
// certificate), while a fresh QUIC handshake presents the renewed SVID
// (same SPIFFE ID, another serial). Meanwhile the client sidecar's HTTP/3
// pool keeps its QUIC connection through both sidecars' renewals: calls
// under load do not fail and upstream_cx_http3_total does not grow.
func TestHTTP3RotationNewHandshakes(t *testing.T) {
	app := testutil.StartGRPCInteropServer(t)
	p := newMTLSPorts(t)
	meshPath := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, meshPath, strings.Replace(mtlsMesh(app.Addr, p, nil), "upstreamProtocol: http2", "upstreamProtocol: http3", 1))
	cp := startControlPlane(t, meshPath, "--svid-ttl", h3RotationTTL.String())
	cp.WaitStatus(t, "a published version", waitTimeout, func(st server.Status) bool { return st.Version != "" })
	srv := mtlsSidecar(t, cp, meshPath, serverNode, false)
	cli := mtlsSidecar(t, cp, meshPath, clientNode, false)
	client := meshtest.DialLoopback(t, p.Outbound)
	waitCallCode(t, client, codes.OK, waitTimeout)

	const cluster = "cluster.outbound|50051||greeter.demo"
	cxBefore := cli.Stats(t)[cluster+".upstream_cx_http3_total"]
	if cxBefore == 0 {
		t.Fatalf("%s.upstream_cx_http3_total = 0 after a successful call: the call did not go over HTTP/3", cluster)
	}
	load := meshtest.StartCallLoad(t, client, 4)
	defer load.Stop()

	// The test's own client: a mesh SVID, trusting the mesh root, requiring
	// the server's SPIFFE ID.
	meshRoot := meshCA(t, cp)
	svid := meshRoot.Issue(t, clientID)
	conf := tlsconfig.MTLSClientConfig(fixedSVID{svid}, x509bundle.FromX509Authorities(meshRoot.TrustDomain, []*x509.Certificate{meshRoot.Cert}), tlsconfig.AuthorizeID(spiffeid.RequireFromString(serverID)))
	conf.NextProtos = []string{http3.NextProtoH3}
	addr := "127.0.0.1:" + strconv.Itoa(p.Inbound)
	dial := func() (*quic.Conn, *x509.Certificate) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		conn, err := quic.DialAddr(ctx, addr, conf, &quic.Config{KeepAlivePeriod: time.Second})
		if err != nil {
			t.Fatalf("QUIC handshake with %s: %v", addr, err)
		}
		certs := conn.ConnectionState().TLS.PeerCertificates
		if len(certs) == 0 {
			t.Fatal("the server sidecar presented no certificate over QUIC")
		}
		if len(certs[0].URIs) != 1 || certs[0].URIs[0].String() != serverID {
			t.Fatalf("the QUIC listener's certificate has URI SANs %v, want [%s]", certs[0].URIs, serverID)
		}
		return conn, certs[0]
	}

	old, oldLeaf := dial()
	defer old.CloseWithError(0, "")
	oldCC := (&http3.Transport{}).NewClientConn(old)
	if err := h3EmptyCall(oldCC); err != nil {
		t.Fatalf("EmptyCall on the first QUIC connection: %v", err)
	}
	renewalsBefore := srv.Stats(t)["ca_client.renewals"]

	// Fresh handshakes until one presents a renewed SVID.
	deadline := time.Now().Add(4 * h3RotationTTL)
	var newLeaf *x509.Certificate
	for newLeaf == nil {
		conn, leaf := dial()
		cc := (&http3.Transport{}).NewClientConn(conn)
		err := h3EmptyCall(cc)
		_ = conn.CloseWithError(0, "")
		if err != nil {
			t.Fatalf("EmptyCall on a fresh QUIC connection: %v", err)
		}
		if leaf.SerialNumber.Cmp(oldLeaf.SerialNumber) != 0 {
			newLeaf = leaf
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v every new QUIC handshake still presents the certificate with serial %x (ca_client.renewals %d -> %d)",
				4*h3RotationTTL, oldLeaf.SerialNumber, renewalsBefore, srv.Stats(t)["ca_client.renewals"])
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !newLeaf.NotBefore.After(oldLeaf.NotBefore) && !newLeaf.NotAfter.After(oldLeaf.NotAfter) {
		t.Errorf("the new handshake's certificate (serial %x, %v..%v) is not newer than the old one (serial %x, %v..%v)",
			newLeaf.SerialNumber, newLeaf.NotBefore, newLeaf.NotAfter, oldLeaf.SerialNumber, oldLeaf.NotBefore, oldLeaf.NotAfter)
	}
	if n := srv.Stats(t)["ca_client.renewals"]; n <= renewalsBefore {
		t.Errorf("server sidecar ca_client.renewals %d, not above %d although it presents a new certificate", n, renewalsBefore)
	}

	// The connection from before the rotation is still up and serving.
	if err := old.Context().Err(); err != nil {
		t.Fatalf("the QUIC connection opened before the rotation was closed: %v", context.Cause(old.Context()))
	}
	if err := h3EmptyCall(oldCC); err != nil {
		t.Fatalf("EmptyCall on the QUIC connection opened before the rotation: %v", err)
	}
	if got := old.ConnectionState().TLS.PeerCertificates[0]; !got.Equal(oldLeaf) {
		t.Errorf("the old connection's peer certificate changed (serial %x): not the same connection", got.SerialNumber)
	}

	// One more renewal of both sidecars under load.
	time.Sleep(h3RotationTTL)
	load.WaitCalls(t, 100, "calls after the rotation")
	load.Stop()
	ok, fail := load.Counts()
	firstErr := load.FirstError()
	t.Logf("server certificate serial %x -> %x; %d calls through the sidecars, %d failed", oldLeaf.SerialNumber, newLeaf.SerialNumber, ok+fail, fail)
	if fail != 0 {
		t.Errorf("%d of %d calls failed across the SVID rotations; first: %v", fail, ok+fail, firstErr)
	}
	cst := cli.Stats(t)
	if n := cst[cluster+".upstream_cx_http3_total"]; n != cxBefore {
		t.Errorf("%s.upstream_cx_http3_total %d -> %d: the client sidecar opened new QUIC connections across the rotation (%v)",
			cluster, cxBefore, n, testutil.FilterStats(cst, "upstream_cx"))
	}
	if n := cst[cluster+".upstream_http3_broken"]; n != 0 {
		t.Errorf("upstream_http3_broken = %d: the client fell back to HTTP/2", n)
	}
}

// h3EmptyCall sends grpc.testing.TestService/EmptyCall on cc and checks
// the answer: HTTP 200 and grpc-status 0 in the trailers.
func h3EmptyCall(cc *http3.ClientConn) error {
	ctx, cancel := context.WithTimeout(context.Background(), meshtest.CallTimeout)
	defer cancel()
	// An empty protobuf message in one uncompressed gRPC frame.
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://greeter.demo/grpc.testing.TestService/EmptyCall", bytes.NewReader(make([]byte, 5)))
	if err != nil {
		return err
	}
	req.Header.Set("content-type", "application/grpc")
	req.Header.Set("te", "trailers")
	resp, err := cc.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return fmt.Errorf("reading the response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP status %d", resp.StatusCode)
	}
	if s := resp.Trailer.Get("grpc-status"); s != "0" {
		return fmt.Errorf("grpc-status %q (%s), want 0", s, resp.Trailer.Get("grpc-message"))
	}
	return nil
}
