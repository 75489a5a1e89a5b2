package h2

import (
	"crypto/tls"
	"crypto/x509"
)

// ConnectionState returns the TLS state of the connection carrying the
// stream, nil when it is plaintext. The router reads the upstream peer's
// SPIFFE ID from it for traced requests.
func (s *clientStream) ConnectionState() *tls.ConnectionState {
	if tc, ok := s.c.nc.(*tls.Conn); ok {
		cs := tc.ConnectionState()
		return &cs
	}
	return nil
}

// PeerCertificate returns the leaf certificate the upstream presented on
// the connection carrying the stream, nil when it is plaintext or the
// peer sent none. Unlike ConnectionState it allocates nothing, so access
// logging can call it on every observed stream.
func (s *clientStream) PeerCertificate() *x509.Certificate {
	if tc, ok := s.c.nc.(*tls.Conn); ok {
		if pc := tc.ConnectionState().PeerCertificates; len(pc) > 0 {
			return pc[0]
		}
	}
	return nil
}
