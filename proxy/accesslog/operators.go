package accesslog

import (
	"crypto/x509"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// opFactory compiles one operator from its argument.
type opFactory func(arg string, hasArg bool) (operator, error)

// operators are the supported command operators by name. Filled at
// initialization, read-only after.
var operators map[string]opFactory

func init() {
	operators = map[string]opFactory{
		"START_TIME": startTime,
		"REQ":        headerOp(func(i *Info, name string) (string, bool) { return requestHeader(i, name) }),
		"RESP": headerOp(func(i *Info, name string) (string, bool) {
			if i.Response == nil {
				return "", false
			}
			return i.Response.Header.Lookup(name)
		}),
		"TRAILER":       headerOp(func(i *Info, name string) (string, bool) { return i.Trailers.Lookup(name) }),
		"RESPONSE_CODE": noArg(responseCode),
		"RESPONSE_FLAGS": noArg(func(dst []byte, i *Info) ([]byte, kind) {
			return AppendFlags(dst, i.Flags), str
		}),
		"RESPONSE_CODE_DETAILS": noArg(stringOp(func(i *Info) string { return i.CodeDetails })),
		"DURATION": noArg(func(dst []byte, i *Info) ([]byte, kind) {
			return sinceStart(dst, i, i.End)
		}),
		"REQUEST_DURATION": noArg(func(dst []byte, i *Info) ([]byte, kind) {
			return sinceStart(dst, i, i.RequestDone)
		}),
		"RESPONSE_DURATION": noArg(func(dst []byte, i *Info) ([]byte, kind) {
			return sinceStart(dst, i, i.UpstreamFirstByte)
		}),
		"BYTES_RECEIVED": noArg(func(dst []byte, i *Info) ([]byte, kind) {
			return strconv.AppendUint(dst, i.BytesReceived, 10), num
		}),
		"BYTES_SENT": noArg(func(dst []byte, i *Info) ([]byte, kind) {
			return strconv.AppendUint(dst, i.BytesSent, 10), num
		}),
		"PROTOCOL": noArg(stringOp(func(i *Info) string {
			// Envoy has no protocol for a connection record: "-".
			if i.Conn == nil || i.Request == nil {
				return ""
			}
			return i.Conn.Proto
		})),
		"UPSTREAM_HOST":                          noArg(stringOp(func(i *Info) string { return i.UpstreamHost })),
		"UPSTREAM_CLUSTER":                       noArg(stringOp(func(i *Info) string { return i.UpstreamCluster })),
		"UPSTREAM_TRANSPORT_FAILURE_REASON":      noArg(stringOp(func(i *Info) string { return i.UpstreamTransportFailureReason })),
		"DOWNSTREAM_TRANSPORT_FAILURE_REASON":    noArg(stringOp(func(i *Info) string { return i.DownstreamTransportFailureReason })),
		"CONNECTION_TERMINATION_DETAILS":         noArg(stringOp(func(i *Info) string { return i.TerminationDetails })),
		"UPSTREAM_PEER_URI_SAN":                  noArg(stringOp(func(i *Info) string { return firstURISAN(i.UpstreamPeerCert) })),
		"UPSTREAM_PEER_SUBJECT":                  noArg(stringOp(func(i *Info) string { return subject(i.UpstreamPeerCert) })),
		"DOWNSTREAM_REMOTE_ADDRESS":              addrOp(true, true),
		"DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": addrOp(true, false),
		"DOWNSTREAM_LOCAL_ADDRESS":               addrOp(false, true),
		"DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT":  addrOp(false, false),
		"DOWNSTREAM_PEER_URI_SAN":                noArg(peerURISAN),
		"DOWNSTREAM_PEER_SUBJECT":                noArg(stringOp(func(i *Info) string { return subject(downstreamPeerCert(i)) })),
		"DOWNSTREAM_LOCAL_URI_SAN":               noArg(stringOp(func(i *Info) string { return i.LocalURISAN })),
		"REQUESTED_SERVER_NAME": noArg(stringOp(func(i *Info) string {
			if i.Conn == nil || i.Conn.TLS == nil {
				return ""
			}
			return i.Conn.TLS.ServerName
		})),
		"ROUTE_NAME":  noArg(stringOp(func(i *Info) string { return i.RouteName })),
		"GRPC_STATUS": grpcStatusOp,
		"GRPC_STATUS_NUMBER": noArg(func(dst []byte, i *Info) ([]byte, kind) {
			c, ok := grpcCode(i)
			if !ok {
				return dst, missing
			}
			return strconv.AppendInt(dst, int64(c), 10), num
		}),
		"HOSTNAME": noArg(func(dst []byte, _ *Info) ([]byte, kind) {
			if h := hostname(); h != "" {
				return append(dst, h...), str
			}
			return dst, missing
		}),
		"UPSTREAM_REQUEST_ATTEMPT_COUNT": noArg(func(dst []byte, i *Info) ([]byte, kind) {
			return strconv.AppendInt(dst, int64(i.Attempts), 10), num
		}),
		"TRACE_ID": noArg(stringOp(func(i *Info) string { return i.TraceID })),
	}
}

// OperatorNames returns the supported command operators, sorted.
func OperatorNames() []string {
	names := make([]string, 0, len(operators))
	for n := range operators {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func noArg(op operator) opFactory {
	return func(arg string, hasArg bool) (operator, error) {
		if hasArg {
			return nil, fmt.Errorf("takes no argument, got (%s)", arg)
		}
		return op, nil
	}
}

func stringOp(get func(*Info) string) operator {
	return func(dst []byte, i *Info) ([]byte, kind) {
		s := get(i)
		if s == "" {
			return dst, missing
		}
		return append(dst, s...), str
	}
}

func responseCode(dst []byte, i *Info) ([]byte, kind) {
	code := 0
	if i.Response != nil {
		code = i.Response.Status
	}
	return strconv.AppendInt(dst, int64(code), 10), num
}

// sinceStart appends t - Start in whole milliseconds; missing when t is
// zero.
func sinceStart(dst []byte, i *Info, t time.Time) ([]byte, kind) {
	if t.IsZero() || i.Start.IsZero() {
		return dst, missing
	}
	return strconv.AppendInt(dst, t.Sub(i.Start).Milliseconds(), 10), num
}

// headerOp compiles %REQ(X?Y)% and its kin: the value of header X, else of
// Y. Names are matched lower-case; :method, :path, :authority and :scheme
// read the request's pseudo-headers.
func headerOp(get func(*Info, string) (string, bool)) opFactory {
	return func(arg string, hasArg bool) (operator, error) {
		if !hasArg || arg == "" {
			return nil, fmt.Errorf("requires a header name, e.g. (USER-AGENT)")
		}
		main, alt, _ := strings.Cut(strings.ToLower(arg), "?")
		if main == "" || strings.ContainsAny(main+alt, " \t") {
			return nil, fmt.Errorf("bad header name %q", arg)
		}
		return func(dst []byte, i *Info) ([]byte, kind) {
			v, ok := get(i, main)
			if !ok && alt != "" {
				v, ok = get(i, alt)
			}
			if !ok {
				return dst, missing
			}
			return append(dst, v...), str
		}, nil
	}
}

func requestHeader(i *Info, name string) (string, bool) {
	r := i.Request
	if r == nil {
		return "", false
	}
	if len(name) > 0 && name[0] == ':' {
		var v string
		switch name {
		case ":method":
			v = r.Method
		case ":path":
			v = r.Path
		case ":authority":
			v = r.Authority
		case ":scheme":
			v = r.Scheme
		}
		return v, v != ""
	}
	return r.Header.Lookup(name)
}

func addrOp(remote, withPort bool) opFactory {
	return noArg(func(dst []byte, i *Info) ([]byte, kind) {
		if i.Conn == nil {
			return dst, missing
		}
		a := i.Conn.LocalAddr
		if remote {
			a = i.Conn.RemoteAddr
		}
		return appendAddr(dst, a, withPort)
	})
}

func firstURISAN(c *x509.Certificate) string {
	if c == nil || len(c.URIs) == 0 {
		return ""
	}
	return c.URIs[0].String()
}

// subject is a certificate's subject as an RFC 2253 distinguished name,
// the form Envoy prints for %..._PEER_SUBJECT%; "" for nil.
func subject(c *x509.Certificate) string {
	if c == nil {
		return ""
	}
	return c.Subject.String()
}

// downstreamPeerCert is the client certificate of the downstream
// connection, nil when there is none.
func downstreamPeerCert(i *Info) *x509.Certificate {
	if i.Conn == nil || i.Conn.TLS == nil || len(i.Conn.TLS.PeerCertificates) == 0 {
		return nil
	}
	return i.Conn.TLS.PeerCertificates[0]
}

func peerURISAN(dst []byte, i *Info) ([]byte, kind) {
	c := downstreamPeerCert(i)
	if c == nil || len(c.URIs) == 0 {
		return dst, missing
	}
	return appendURI(dst, c.URIs[0]), str
}

// appendURI appends u as u.String() does, without allocating for a URI
// of the SPIFFE form (scheme://host/path, the path of unreserved
// characters and '/'); other URIs go through u.String().
func appendURI(dst []byte, u *url.URL) []byte {
	if u.Opaque != "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.RawPath != "" ||
		u.ForceQuery || u.Scheme == "" || u.Host == "" || !plainPath(u.Path) {
		return append(dst, u.String()...)
	}
	dst = append(dst, u.Scheme...)
	dst = append(dst, "://"...)
	dst = append(dst, u.Host...)
	return append(dst, u.Path...)
}

// plainPath reports whether p is empty or starts with '/' and needs no
// escaping: unreserved characters and '/' only.
func plainPath(p string) bool {
	if p != "" && p[0] != '/' {
		return false
	}
	for k := 0; k < len(p); k++ {
		c := p[k]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '-' || c == '.' || c == '_' || c == '~' || c == '/') {
			return false
		}
	}
	return true
}

// grpcCamel and grpcSnake are the gRPC status names Envoy prints for
// %GRPC_STATUS(CAMEL_STRING)% and %GRPC_STATUS(SNAKE_STRING)%.
var (
	grpcCamel = [...]string{"OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
		"AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
		"OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated"}
	grpcSnake = [...]string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
		"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
		"OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}
)

// grpcCode is Envoy's Grpc::Common::getGrpcStatus: grpc-status from the
// trailers or a trailers-only response, else mapped from the HTTP status of
// a gRPC request's response.
func grpcCode(i *Info) (int, bool) {
	if v, ok := i.grpcStatus(); ok {
		n, err := strconv.Atoi(v)
		return n, err == nil && n >= 0
	}
	if i.Response == nil || i.Request == nil || !i.isGRPC() {
		return 0, false
	}
	switch i.Response.Status {
	case 400:
		return 13, true
	case 401:
		return 16, true
	case 403:
		return 7, true
	case 404:
		return 12, true
	case 429, 502, 503, 504:
		return 14, true
	}
	return 2, true
}

func grpcStatusOp(arg string, _ bool) (operator, error) {
	var names *[17]string
	switch arg {
	case "", "CAMEL_STRING":
		names = &grpcCamel
	case "SNAKE_STRING":
		names = &grpcSnake
	case "NUMBER":
	default:
		return nil, fmt.Errorf("format %q: want CAMEL_STRING, SNAKE_STRING or NUMBER", arg)
	}
	return func(dst []byte, i *Info) ([]byte, kind) {
		c, ok := grpcCode(i)
		if !ok {
			return dst, missing
		}
		if names == nil {
			return strconv.AppendInt(dst, int64(c), 10), num
		}
		if c < len(names) {
			return append(dst, names[c]...), str
		}
		return strconv.AppendInt(dst, int64(c), 10), str
	}, nil
}

// startTime compiles %START_TIME(fmt)%: UTC, Envoy's default layout
// 2006-01-02T15:04:05.000Z, or a strftime format (strftime.go).
func startTime(arg string, hasArg bool) (operator, error) {
	if !hasArg || arg == "" {
		return func(dst []byte, i *Info) ([]byte, kind) {
			return i.Start.UTC().AppendFormat(dst, "2006-01-02T15:04:05.000Z"), str
		}, nil
	}
	f, err := compileStrftime(arg)
	if err != nil {
		return nil, err
	}
	return func(dst []byte, i *Info) ([]byte, kind) {
		return f.append(dst, i.Start.UTC()), str
	}, nil
}
