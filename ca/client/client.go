// Package client is the sidecar side of meshd's built-in CA: it keeps the
// workload's X.509-SVID fresh by sending certificate signing requests to
// the control plane's meshd.ca.v1.CertificateAuthority service and hands
// each SVID and trust bundle to a Sink (mtls.StaticSource in the sidecar,
// which serves them to listeners and clusters as local SDS secrets).
//
// The private key is an ECDSA P-256 key generated in memory for every
// request; it never leaves the process. A new SVID is requested at half its
// lifetime (measured from when it arrived, since NotBefore is backdated);
// a failed request is retried with jittered exponential backoff, never
// waiting past the current SVID's expiry, so a control plane that comes
// back before then causes no gap.
package client

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"

	"meshd.dev/meshd/ca"
	cav1 "meshd.dev/meshd/ca/proto/meshd/ca/v1"
	"meshd.dev/meshd/proxy/stats"
)

// Defaults of Options.
const (
	DefaultMinBackoff  = 200 * time.Millisecond
	DefaultMaxBackoff  = 30 * time.Second
	DefaultCallTimeout = 10 * time.Second
)

// Sink receives every SVID the client obtains, with the CA's bundle for
// the SVID's trust domain. mtls.StaticSource implements it. An error
// rejects that SVID: the client logs it, counts a failure and retries.
type Sink interface {
	Update(svid *x509svid.SVID, bundles *x509bundle.Set) error
}

// Options configure a Client.
type Options struct {
	// Conn is the connection to the control plane, normally the sidecar's
	// xDS connection (the CA is served on the xDS port). Required.
	Conn grpc.ClientConnInterface
	// Token is the bootstrap token sent as "authorization: Bearer
	// <token>" (the bootstrap's node.metadata["meshd.token"]). Token or
	// TokenSource is required, not both.
	Token string
	// TokenSource, instead of Token, is called for every SVID request
	// (retries included), so a token that rotates underneath, such as a
	// projected service-account token (TokenFile.Token), is always sent
	// as it is now. An error fails that attempt, which is retried.
	TokenSource func() (string, error)
	// Sink receives each SVID. Required.
	Sink Sink
	// TTL is the lifetime to ask for; zero takes the CA's default.
	TTL time.Duration
	// MinBackoff and MaxBackoff bound the wait between failed attempts;
	// DefaultMinBackoff and DefaultMaxBackoff when zero.
	MinBackoff, MaxBackoff time.Duration
	// CallTimeout bounds one Sign call; DefaultCallTimeout when zero.
	CallTimeout time.Duration
	// Stats holds "ca_client.renewals" (SVIDs received after the first),
	// "ca_client.failures" (failed attempts) and the gauge
	// "ca_client.expiry_seconds" (the current SVID's NotAfter, Unix
	// seconds). Nil creates a private store.
	Stats *stats.Store
	// Logger receives the client's logs; nil discards them.
	Logger *slog.Logger
}

// Client obtains and renews one SVID. Run drives it.
type Client struct {
	opts Options
	cli  cav1.CertificateAuthorityClient

	renewals, failures *stats.Counter
	expiry             *stats.Gauge

	current atomic.Pointer[x509svid.SVID]
}

// New validates opts and returns a client; nothing is sent until Run.
func New(opts Options) (*Client, error) {
	switch {
	case opts.Conn == nil:
		return nil, errors.New("ca client: Conn is required")
	case opts.Token == "" && opts.TokenSource == nil:
		return nil, errors.New("ca client: Token or TokenSource is required")
	case opts.Token != "" && opts.TokenSource != nil:
		return nil, errors.New("ca client: Token and TokenSource are exclusive")
	case opts.Sink == nil:
		return nil, errors.New("ca client: Sink is required")
	case opts.TTL < 0:
		return nil, fmt.Errorf("ca client: TTL %v is negative", opts.TTL)
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = DefaultMinBackoff
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = DefaultMaxBackoff
	}
	opts.MaxBackoff = max(opts.MaxBackoff, opts.MinBackoff)
	if opts.CallTimeout <= 0 {
		opts.CallTimeout = DefaultCallTimeout
	}
	if opts.Stats == nil {
		opts.Stats = stats.NewStore()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	sc := opts.Stats.Root().Scope("ca_client")
	return &Client{
		opts:     opts,
		cli:      cav1.NewCertificateAuthorityClient(opts.Conn),
		renewals: sc.Counter("renewals"),
		failures: sc.Counter("failures"),
		expiry:   sc.Gauge("expiry_seconds"),
	}, nil
}

// Current returns the last SVID handed to the sink, nil before the first.
func (c *Client) Current() *x509svid.SVID { return c.current.Load() }

// Run obtains an SVID, then renews it at half-life, until ctx ends; it
// returns ctx's error. It must be called once.
func (c *Client) Run(ctx context.Context) error {
	backoff := c.opts.MinBackoff
	for {
		wait := backoff
		svid, bundle, err := c.fetch(ctx)
		if err == nil {
			err = c.publish(svid, bundle)
		}
		now := time.Now()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			c.failures.Inc()
			// Jitter in [wait/2, wait) keeps a fleet restarted at once
			// from retrying in lockstep.
			wait = backoff/2 + mrand.N(backoff/2+1)
			backoff = min(2*backoff, c.opts.MaxBackoff)
			if cur := c.Current(); cur != nil {
				left := cur.Certificates[0].NotAfter.Sub(now)
				c.opts.Logger.Warn("CA client: SVID request failed; retrying", "err", err, "retry_in", wait, "current_expires_in", left)
				// Never sleep past expiry: one last try just before.
				if left > 0 {
					wait = min(wait, max(left/2, time.Millisecond))
				}
			} else {
				c.opts.Logger.Warn("CA client: SVID request failed; retrying", "err", err, "retry_in", wait)
			}
		} else {
			backoff = c.opts.MinBackoff
			wait = svid.Certificates[0].NotAfter.Sub(now) / 2
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// fetch generates a key and a CSR, calls Sign and returns the verified
// SVID with the bundle that came with it.
func (c *Client) fetch(ctx context.Context) (*x509svid.SVID, *x509bundle.Bundle, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating key: %w", err)
	}
	// The CA takes the identity from the token; the CSR carries only
	// the public key and its proof of possession.
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("creating CSR: %w", err)
	}
	req := &cav1.SignRequest{CsrDer: csr}
	if c.opts.TTL > 0 {
		req.Ttl = durationpb.New(c.opts.TTL)
	}
	token := c.opts.Token
	if c.opts.TokenSource != nil {
		if token, err = c.opts.TokenSource(); err == nil && token == "" {
			err = errNoToken
		}
		if err != nil {
			return nil, nil, fmt.Errorf("reading the token: %w", err)
		}
	}
	callCtx, cancel := context.WithTimeout(ctx, c.opts.CallTimeout)
	defer cancel()
	callCtx = metadata.AppendToOutgoingContext(callCtx, ca.AuthorizationMetadata, "Bearer "+token)
	resp, err := c.cli.Sign(callCtx, req)
	if err != nil {
		return nil, nil, fmt.Errorf("signing with the CA: %w", err)
	}
	if len(resp.GetCertChainDer()) == 0 || len(resp.GetBundleDer()) == 0 {
		return nil, nil, errors.New("signing with the CA: response without certificate chain or bundle")
	}
	var chainDER []byte
	for _, der := range resp.GetCertChainDer() {
		chainDER = append(chainDER, der...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encoding key: %w", err)
	}
	svid, err := x509svid.ParseRaw(chainDER, keyDER)
	if err != nil {
		return nil, nil, fmt.Errorf("issued SVID: %w", err)
	}
	bundle, err := verify(svid, resp.GetBundleDer())
	if err != nil {
		return nil, nil, err
	}
	return svid, bundle, nil
}

// verify checks the SVID against the bundle that came with it, so a CA
// misconfiguration is caught here rather than at every peer's handshake,
// and returns that bundle.
func verify(svid *x509svid.SVID, bundleDER [][]byte) (*x509bundle.Bundle, error) {
	roots := make([]*x509.Certificate, 0, len(bundleDER))
	for i, der := range bundleDER {
		r, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("bundle certificate %d: %w", i, err)
		}
		roots = append(roots, r)
	}
	b := x509bundle.FromX509Authorities(svid.ID.TrustDomain(), roots)
	if _, _, err := x509svid.Verify(svid.Certificates, b); err != nil {
		return nil, fmt.Errorf("issued SVID does not verify against the returned bundle: %w", err)
	}
	return b, nil
}

// publish hands svid and bundle to the sink and records them.
func (c *Client) publish(svid *x509svid.SVID, bundle *x509bundle.Bundle) error {
	if err := c.opts.Sink.Update(svid, x509bundle.NewSet(bundle)); err != nil {
		return fmt.Errorf("sink refused SVID %s: %w", svid.ID, err)
	}
	if c.current.Swap(svid) != nil {
		c.renewals.Inc()
	}
	leaf := svid.Certificates[0]
	c.expiry.Set(leaf.NotAfter.Unix())
	c.opts.Logger.Info("CA client: new SVID", "spiffe_id", svid.ID.String(), "expires", leaf.NotAfter, "serial", leaf.SerialNumber.Text(16))
	return nil
}
