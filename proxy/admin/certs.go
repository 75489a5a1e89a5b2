package admin

import (
	"crypto/x509"
	"net/http"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// CertProvider is optionally implemented by a Backend that serves TLS with
// certificates it can list; /certs shows them as Envoy's /certs does. A
// Backend without it has an empty list.
type CertProvider interface {
	// Certificates returns the certificates in use, one entry per TLS
	// identity (an SDS source, a static context).
	Certificates() []CertificateStatus
}

// CertificateStatus is one TLS identity as /certs shows it.
type CertificateStatus struct {
	// Path says where the certificates come from (an SDS secret name and
	// source, or a file path).
	Path string
	// CertChain is the certificate chain presented, leaf first.
	CertChain []*x509.Certificate
	// CACerts are the trust roots peers are verified against.
	CACerts []*x509.Certificate
}

// handleCerts serves /certs: envoy.admin.v3.Certificates as JSON, with
// every certificate's serial, URI/DNS/IP subject alternative names,
// validity and days until expiration.
func (s *Server) handleCerts(w http.ResponseWriter, _ *http.Request) {
	msg := &adminv3.Certificates{}
	if cp, ok := s.backend.(CertProvider); ok {
		now := time.Now()
		for _, cs := range cp.Certificates() {
			c := &adminv3.Certificate{}
			for _, cert := range cs.CACerts {
				c.CaCert = append(c.CaCert, certDetails(cs.Path, cert, now))
			}
			for _, cert := range cs.CertChain {
				c.CertChain = append(c.CertChain, certDetails(cs.Path, cert, now))
			}
			msg.Certificates = append(msg.Certificates, c)
		}
	}
	s.writeProto(w, msg)
}

func certDetails(path string, c *x509.Certificate, now time.Time) *adminv3.CertificateDetails {
	d := &adminv3.CertificateDetails{
		Path:           path,
		SerialNumber:   c.SerialNumber.Text(16),
		ValidFrom:      timestamppb.New(c.NotBefore),
		ExpirationTime: timestamppb.New(c.NotAfter),
	}
	if left := c.NotAfter.Sub(now); left > 0 {
		d.DaysUntilExpiration = uint64(left / (24 * time.Hour))
	}
	for _, u := range c.URIs {
		d.SubjectAltNames = append(d.SubjectAltNames, &adminv3.SubjectAlternateName{Name: &adminv3.SubjectAlternateName_Uri{Uri: u.String()}})
	}
	for _, n := range c.DNSNames {
		d.SubjectAltNames = append(d.SubjectAltNames, &adminv3.SubjectAlternateName{Name: &adminv3.SubjectAlternateName_Dns{Dns: n}})
	}
	for _, ip := range c.IPAddresses {
		d.SubjectAltNames = append(d.SubjectAltNames, &adminv3.SubjectAlternateName{Name: &adminv3.SubjectAlternateName_IpAddress{IpAddress: ip.String()}})
	}
	return d
}
