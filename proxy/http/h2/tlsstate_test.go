package h2

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"

	"meshd.dev/meshd/mtls/mtlstest"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// TestClientStreamPeerCertificate: a stream on a TLS connection reports
// the server's leaf certificate (its SPIFFE ID), one on plaintext nil.
func TestClientStreamPeerCertificate(t *testing.T) {
	const serverID = "spiffe://test.example/ns/a/sa/server"
	ca := mtlstest.NewCA(t, "test.example")
	svid := ca.Issue(t, serverID)
	cert := mtlstest.TLSCertificate(svid)
	roots := x509.NewCertPool()
	roots.AddCert(ca.Bundle().X509Authorities()[0])
	for _, tc := range []struct {
		name   string
		tls    bool
		wantID string
	}{
		{"tls", true, serverID},
		{"plaintext", false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkLeaks(t)
			cnc, snc := net.Pipe()
			if tc.tls {
				snc = tls.Server(snc, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}})
				cnc = tls.Client(cnc, &tls.Config{RootCAs: roots, InsecureSkipVerify: true, NextProtos: []string{"h2"}})
			}
			serveConn(t, snc, nil, echoHandler)
			cc := NewClientConn(cnc, nil)
			t.Cleanup(func() { _ = cc.Close() })
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			cs, err := cc.NewStream(ctx, &stream.Request{Method: "GET", Scheme: "https", Authority: "svc", Path: "/", Header: header.Make(0)}, true)
			if err != nil {
				t.Fatal(err)
			}
			defer cs.Reset(stream.ErrCodeCancel)
			if _, err := cs.Response(ctx); err != nil {
				t.Fatal(err)
			}
			pc := cs.(*clientStream).PeerCertificate()
			got := ""
			if pc != nil && len(pc.URIs) > 0 {
				got = pc.URIs[0].String()
			}
			if got != tc.wantID {
				t.Errorf("peer certificate URI SAN %q, want %q", got, tc.wantID)
			}
		})
	}
}
