package ca

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	cav1 "meshd.dev/meshd/ca/proto/meshd/ca/v1"
	"meshd.dev/meshd/proxy/stats"
)

// AuthorizationMetadata is the gRPC metadata key carrying the caller's
// credential as "Bearer <token>".
const AuthorizationMetadata = "authorization"

// Service is the meshd.ca.v1.CertificateAuthority gRPC service: it
// authenticates the caller with an Authenticator and signs its CSR with a
// CA for the identity the Authenticator returned.
type Service struct {
	cav1.UnimplementedCertificateAuthorityServer

	ca   *CA
	auth Authenticator
	log  *slog.Logger

	issued, denied, invalid *stats.Counter
	refusals                *refusalLog
}

// ServiceOptions configure a Service. The zero value is usable.
type ServiceOptions struct {
	// Logger receives one line per issued or refused SVID; nil discards.
	Logger *slog.Logger
	// Stats holds the counters "control_plane.ca.issued",
	// "control_plane.ca.unauthenticated" and
	// "control_plane.ca.invalid_request"; nil creates a private store.
	Stats *stats.Store
}

// NewService returns the gRPC service signing with ca for the callers auth
// authenticates.
func NewService(ca *CA, auth Authenticator, opts ServiceOptions) *Service {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Stats == nil {
		opts.Stats = stats.NewStore()
	}
	sc := opts.Stats.Root().Scope("control_plane").Scope("ca")
	return &Service{
		ca: ca, auth: auth, log: opts.Logger,
		issued:   sc.Counter("issued"),
		denied:   sc.Counter("unauthenticated"),
		invalid:  sc.Counter("invalid_request"),
		refusals: newRefusalLog(time.Now),
	}
}

// Register registers the service on g.
func (s *Service) Register(g grpc.ServiceRegistrar) {
	cav1.RegisterCertificateAuthorityServer(g, s)
}

// Sign implements meshd.ca.v1.CertificateAuthority/Sign. A missing or
// rejected credential is UNAUTHENTICATED; a bad CSR or one asking for
// another identity is INVALID_ARGUMENT.
func (s *Service) Sign(ctx context.Context, req *cav1.SignRequest) (*cav1.SignResponse, error) {
	token, err := bearerToken(ctx)
	if err != nil {
		s.refuse(ctx, req, err)
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	id, err := s.auth.Authenticate(ctx, token)
	if err != nil {
		if errors.Is(err, ErrUnauthenticated) {
			s.refuse(ctx, req, err)
			return nil, status.Error(codes.Unauthenticated, err.Error())
		}
		s.log.Error("CA: authenticating a caller", "err", err)
		return nil, status.Errorf(codes.Internal, "authenticating: %v", err)
	}
	if req.GetTtl() != nil {
		if err := req.GetTtl().CheckValid(); err != nil || req.GetTtl().AsDuration() < 0 {
			s.invalid.Inc()
			return nil, status.Errorf(codes.InvalidArgument, "ttl: %v must be a valid non-negative duration", req.GetTtl().AsDuration())
		}
	}
	svid, err := s.ca.Sign(req.GetCsrDer(), id, req.GetTtl().AsDuration())
	if err != nil {
		s.invalid.Inc()
		s.log.Warn("CA: refused a CSR", "spiffe_id", id.String(), "reason", err)
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	s.issued.Inc()
	s.log.Info("CA: issued SVID", "spiffe_id", id.String(), "expires", svid.ExpiresAt(), "serial", svid.Chain[0].SerialNumber.Text(16))
	resp := &cav1.SignResponse{ExpiresAt: timestamppb.New(svid.ExpiresAt())}
	for _, c := range svid.Chain {
		resp.CertChainDer = append(resp.CertChainDer, c.Raw)
	}
	for _, c := range svid.Bundle {
		resp.BundleDer = append(resp.BundleDer, c.Raw)
	}
	return resp, nil
}

// bearerToken returns the token of the call's "authorization: Bearer
// <token>" metadata.
// refuse counts an unauthenticated request and logs it: at Warn the first
// time this caller (IP and the identity its CSR claims) is refused for
// this reason within refusalLogEvery, at Debug for the retries after it.
func (s *Service) refuse(ctx context.Context, req *cav1.SignRequest, err error) {
	s.denied.Inc()
	k := refusalKey{reason: err.Error(), peer: callerIP(ctx), claimed: claimedID(req.GetCsrDer())}
	level := slog.LevelDebug
	if s.refusals.first(k) {
		level = slog.LevelWarn
	}
	s.log.Log(ctx, level, "CA: refused a CSR", "peer", k.peer, "claimed_spiffe_id", k.claimed, "reason", err)
}

func bearerToken(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get(AuthorizationMetadata)
	switch len(vals) {
	case 0:
		return "", errors.New("no authorization metadata (want \"Bearer <token>\")")
	case 1:
	default:
		return "", errors.New("more than one authorization metadata value")
	}
	scheme, token, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", errors.New("authorization metadata is not \"Bearer <token>\"")
	}
	return token, nil
}
