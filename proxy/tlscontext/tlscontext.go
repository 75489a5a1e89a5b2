// Package tlscontext loads the static parts of Envoy's CommonTlsContext:
// certificate chains with their keys and the trusted CA bundle, from files
// or inline data. Errors name the field below common_tls_context.
package tlscontext

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"meshd.dev/meshd/proxy/datasource"
)

// Certificates loads every tls_certificates entry of ctx.
func Certificates(ctx *tlsv3.CommonTlsContext) ([]tls.Certificate, error) {
	var out []tls.Certificate
	for i, tc := range ctx.GetTlsCertificates() {
		certPEM, err := datasource.Read(tc.GetCertificateChain())
		if err != nil {
			return nil, fmt.Errorf("common_tls_context.tls_certificates[%d].certificate_chain: %w", i, err)
		}
		keyPEM, err := datasource.Read(tc.GetPrivateKey())
		if err != nil {
			return nil, fmt.Errorf("common_tls_context.tls_certificates[%d].private_key: %w", i, err)
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("common_tls_context.tls_certificates[%d]: %w", i, err)
		}
		out = append(out, cert)
	}
	return out, nil
}

// TrustedCA loads validation_context.trusted_ca of ctx; it returns a nil
// pool when no trusted CA is configured.
func TrustedCA(ctx *tlsv3.CommonTlsContext) (*x509.CertPool, error) {
	vc := ctx.GetValidationContext()
	if vc.GetTrustedCa() == nil {
		return nil, nil
	}
	caPEM, err := datasource.Read(vc.GetTrustedCa())
	if err != nil {
		return nil, fmt.Errorf("common_tls_context.validation_context.trusted_ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("common_tls_context.validation_context.trusted_ca: no PEM certificates found")
	}
	return pool, nil
}
