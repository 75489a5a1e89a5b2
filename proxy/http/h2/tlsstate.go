package h2

import "crypto/tls"

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
