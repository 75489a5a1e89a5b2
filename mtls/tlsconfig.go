package mtls

import (
	"crypto/tls"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

// ServerConfig returns a server tls.Config for mTLS between workloads:
// TLS 1.3 preferred, TLS 1.2 minimum, ALPN alpn (for example "h2",
// "http/1.1"). Every handshake reads the current SVID from src, so a
// rotation applies to the next handshake; established connections are not
// touched. A client certificate is required: the client's SVID is verified
// with [VerifySVID] against src's bundle for the client ID's own trust
// domain, then authz decides (nil authz allows every verified ID). The
// verification runs in VerifyConnection, so it also applies to resumed
// sessions. A refused client fails Handshake with a [*VerifyError] naming
// the reason, including "no_certificate" for a client that sent none.
func ServerConfig(src Source, authz Authorizer, alpn []string) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     alpn,
		GetCertificate: tlsconfig.GetCertificate(src),
		// RequestClientCert, not RequireAnyClientCert: crypto/tls would
		// refuse a missing certificate before VerifyConnection with a
		// generic error; verifyPeer refuses it with ReasonNoCertificate.
		ClientAuth:       tls.RequestClientCert,
		VerifyConnection: verifyPeer(src, authz),
	}
}

// ClientConfig returns a client tls.Config for mTLS between workloads:
// TLS 1.3 preferred, TLS 1.2 minimum, ALPN alpn, SNI serverName (may be
// empty). It presents src's current SVID when the server asks, and
// accepts the server only if its SVID verifies with [VerifySVID] against
// src's bundle for the server ID's trust domain and authz allows the ID
// (nil allows every verified ID). Hostname verification is off: the
// server is identified by its SPIFFE ID, not its DNS name. A refused
// server fails Handshake with a [*VerifyError].
func ClientConfig(src Source, authz Authorizer, alpn []string, serverName string) *tls.Config {
	return &tls.Config{
		MinVersion:           tls.VersionTLS12,
		NextProtos:           alpn,
		ServerName:           serverName,
		GetClientCertificate: tlsconfig.GetClientCertificate(src),
		// The chain is verified by verifyPeer against the SPIFFE bundle;
		// crypto/tls's own check would demand a DNS SAN.
		InsecureSkipVerify: true, //nolint:gosec // SPIFFE verification in VerifyConnection
		VerifyConnection:   verifyPeer(src, authz),
	}
}

// verifyPeer verifies the peer's SVID and authorizes its ID.
func verifyPeer(src Source, authz Authorizer) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		id, _, err := VerifySVID(cs.PeerCertificates, src, time.Time{})
		if err != nil {
			return err
		}
		if authz != nil {
			if err := authz(id); err != nil {
				return &VerifyError{Reason: ReasonUnauthorized, ID: id, Err: err}
			}
		}
		return nil
	}
}
