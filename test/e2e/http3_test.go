package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/mtls/mtlstest"
)

// h3Client returns quic-go's HTTP/3 client trusting ca; the server's SVID
// has no DNS name, so the chain is verified against ca and the SPIFFE ID
// checked instead of the host name.
func h3Client(t *testing.T, ca *mtlstest.CA, wantID string) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.BundlePEM())
	tr := &http3.Transport{
		TLSClientConfig: &tls.Config{
			InsecureSkipVerify: true, // replaced by VerifyConnection
			VerifyConnection: func(cs tls.ConnectionState) error {
				if len(cs.PeerCertificates) == 0 {
					return errors.New("no server certificate")
				}
				inter := x509.NewCertPool()
				for _, c := range cs.PeerCertificates[1:] {
					inter.AddCert(c)
				}
				leaf := cs.PeerCertificates[0]
				if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter}); err != nil {
					return err
				}
				if len(leaf.URIs) != 1 || leaf.URIs[0].String() != wantID {
					return fmt.Errorf("server SPIFFE ID %v, want %s", leaf.URIs, wantID)
				}
				return nil
			},
		},
		QUICConfig: &quic.Config{MaxIdleTimeout: 30 * time.Second},
	}
	t.Cleanup(func() { _ = tr.Close() })
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

// TestHTTP3Downstream is acceptance 2 of HTTP/3: quic-go's HTTP/3 client
// gets correct responses from a meshd HTTP/3 listener (Retry required on
// every connection), including 10 MiB bodies both ways and trailers both
// ways; the listener's stats count the HTTP/3 connections and requests.
func TestHTTP3Downstream(t *testing.T) {
	backend := testutil.StartEchoBackend(t)
	ca := mtlstest.NewCA(t, "test.example")
	const frontID = "spiffe://test.example/ns/demo/sa/front"
	cert, key, _ := mtlstest.WriteFiles(t, t.TempDir(), ca.Issue(t, frontID), ca.Bundle())
	sc := testutil.StartSidecar(t, testutil.MustH3Bootstrap(t, testutil.H3BootstrapParams{
		CertFile: cert, KeyFile: key, BackendAddr: backend.Addr, MaxConcurrentStreams: 50, Retry: "always",
	}))
	base := "https://" + sc.ListenerAddr(t, testutil.H3ListenerName)
	client := h3Client(t, ca, frontID)
	const big = 10 << 20

	t.Run("download 10MiB", func(t *testing.T) {
		resp, err := client.Get(fmt.Sprintf("%s/big?size=%d", base, big))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		if err != nil {
			t.Fatalf("body after %d bytes: %v", n, err)
		}
		if resp.StatusCode != 200 || resp.Proto != "HTTP/3.0" || n != big {
			t.Fatalf("status %d proto %s, %d bytes; want 200 HTTP/3.0 %d", resp.StatusCode, resp.Proto, n, big)
		}
		if got, want := fmt.Sprintf("%x", h.Sum(nil)), resp.Header.Get(testutil.HeaderBodySHA256); got != want {
			t.Fatalf("body sha256 %s, header says %s", got, want)
		}
	})

	t.Run("upload 10MiB echoed with request trailers", func(t *testing.T) {
		body := testutil.BigBody(big)
		req, _ := http.NewRequest(http.MethodPost, base+"/echo", io.NopCloser(bytes.NewReader(body)))
		req.Trailer = http.Header{"X-Req-Trailer": {"sent"}}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		got, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("body after %d bytes: %v", len(got), err)
		}
		if resp.StatusCode != 200 || !bytes.Equal(got, body) {
			t.Fatalf("status %d, echoed %d bytes equal=%v; want 200 and the %d bytes sent", resp.StatusCode, len(got), bytes.Equal(got, body), big)
		}
		if v := resp.Trailer.Get("X-Req-Trailer"); v != "sent" {
			t.Fatalf("echoed trailer X-Req-Trailer = %q, want \"sent\" (trailers %v)", v, resp.Trailer)
		}
	})

	t.Run("response trailers", func(t *testing.T) {
		resp, err := client.Get(base + "/trailers")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != "trailers\n" || resp.Trailer.Get("X-Trailer-One") != "1" || resp.Trailer.Get("X-Trailer-Two") != "2" {
			t.Fatalf("body %q trailers %v", b, resp.Trailer)
		}
	})

	t.Run("concurrent small requests", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		errs := make(chan error, 100)
		for i := range 100 {
			go func() {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/big?size=%d", base, 1000+i), nil)
				resp, err := client.Do(req)
				if err != nil {
					errs <- err
					return
				}
				n, err := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err == nil && (resp.StatusCode != 200 || n != int64(1000+i)) {
					err = fmt.Errorf("status %d, %d bytes", resp.StatusCode, n)
				}
				errs <- err
			}()
		}
		for range 100 {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("failed handshake", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := quic.DialAddr(ctx, sc.ListenerAddr(t, testutil.H3ListenerName), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"not-h3"}}, nil)
		if err == nil {
			_ = c.CloseWithError(0, "")
			t.Fatal("a QUIC handshake offering only ALPN not-h3 succeeded")
		}
	})

	// The listener's scope is named after its configured address. The
	// failed handshake ends on the server side asynchronously, and a
	// connection's packet counts are added when it closes.
	client.CloseIdleConnections()
	want := map[string]int64{
		"http.h3.downstream_cx_http3_total":         1,
		"http.h3.downstream_rq_http3_total":         103,
		"listener.127.0.0.1_0.quic.retry_required":  1,
		"listener.127.0.0.1_0.ssl.handshake":        1,
		"listener.127.0.0.1_0.ssl.connection_error": 1,
		"listener.127.0.0.1_0.downstream_cx_total":  1,
		"http3.packets_sent":                        1,
	}
	var st map[string]int64
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		st = sc.Stats(t)
		if (st["listener.127.0.0.1_0.ssl.connection_error"] > 0 && st["http3.packets_sent"] > 0) || time.Now().After(deadline) {
			break
		}
	}
	for name, min := range want {
		if st[name] < min {
			t.Errorf("%s = %d, want at least %d", name, st[name], min)
		}
	}
	if hs, cx := st["listener.127.0.0.1_0.ssl.handshake"], st["listener.127.0.0.1_0.downstream_cx_total"]; hs != cx {
		t.Errorf("ssl.handshake = %d, want one per accepted connection (downstream_cx_total %d)", hs, cx)
	}
}
