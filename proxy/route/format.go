package route

import (
	"fmt"
	"net"
	"strings"

	"meshd.dev/meshd/proxy/http/stream"
)

// opKind is one Envoy command operator meshd can evaluate in a header value.
type opKind uint8

const (
	opLiteral opKind = iota
	opDownstreamRemoteAddress
	opDownstreamRemoteAddressWithoutPort
	opDownstreamLocalAddress
	opDownstreamLocalAddressWithoutPort
	opUpstreamCluster
	opProtocol
)

var operators = map[string]opKind{
	"DOWNSTREAM_REMOTE_ADDRESS":              opDownstreamRemoteAddress,
	"DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": opDownstreamRemoteAddressWithoutPort,
	"DOWNSTREAM_LOCAL_ADDRESS":               opDownstreamLocalAddress,
	"DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT":  opDownstreamLocalAddressWithoutPort,
	"UPSTREAM_CLUSTER":                       opUpstreamCluster,
	"PROTOCOL":                               opProtocol,
}

// segment is a literal run or one operator of a header value.
type segment struct {
	op  opKind
	lit string
}

// valueFormat is a header value parsed once at compile time. A value with
// no operators is a single literal and formats without allocating.
type valueFormat struct {
	literal string    // the whole value when segs is nil
	segs    []segment // nil for a pure literal
}

// parseFormat parses Envoy's header value syntax: literal text, "%%" for a
// literal percent sign, and %OPERATOR% for the operators in operators. Any
// other operator, operators with arguments, and an unterminated "%" are
// errors naming the operator.
func parseFormat(v string) (valueFormat, error) {
	if !strings.Contains(v, "%") {
		return valueFormat{literal: v}, nil
	}
	var segs []segment
	var lit strings.Builder
	hasOp := false
	for i := 0; i < len(v); {
		c := v[i]
		if c != '%' {
			lit.WriteByte(c)
			i++
			continue
		}
		if i+1 < len(v) && v[i+1] == '%' {
			lit.WriteByte('%')
			i += 2
			continue
		}
		end := strings.IndexByte(v[i+1:], '%')
		if end < 0 {
			return valueFormat{}, fmt.Errorf("unterminated %% at offset %d in %q (write %%%% for a literal percent sign)", i, v)
		}
		name := v[i+1 : i+1+end]
		op, ok := operators[name]
		if !ok {
			return valueFormat{}, fmt.Errorf("command operator %%%s%% not supported by meshd", name)
		}
		if lit.Len() > 0 {
			segs = append(segs, segment{lit: lit.String()})
			lit.Reset()
		}
		segs = append(segs, segment{op: op})
		hasOp = true
		i += end + 2
	}
	if !hasOp {
		return valueFormat{literal: lit.String()}, nil
	}
	if lit.Len() > 0 {
		segs = append(segs, segment{lit: lit.String()})
	}
	return valueFormat{segs: segs}, nil
}

// format evaluates f for one stream. info may be nil (the address
// operators are then empty).
func (f *valueFormat) format(cluster string, info *stream.ConnInfo) string {
	if f.segs == nil {
		return f.literal
	}
	var b strings.Builder
	for _, s := range f.segs {
		switch s.op {
		case opLiteral:
			b.WriteString(s.lit)
		case opDownstreamRemoteAddress:
			if info != nil && info.RemoteAddr != nil {
				b.WriteString(info.RemoteAddr.String())
			}
		case opDownstreamRemoteAddressWithoutPort:
			if info != nil && info.RemoteAddr != nil {
				b.WriteString(withoutPort(info.RemoteAddr))
			}
		case opDownstreamLocalAddress:
			if info != nil && info.LocalAddr != nil {
				b.WriteString(info.LocalAddr.String())
			}
		case opDownstreamLocalAddressWithoutPort:
			if info != nil && info.LocalAddr != nil {
				b.WriteString(withoutPort(info.LocalAddr))
			}
		case opUpstreamCluster:
			b.WriteString(cluster)
		case opProtocol:
			if info != nil {
				b.WriteString(info.Proto)
			}
		}
	}
	return b.String()
}

// withoutPort is the address's IP (or the whole string for addresses that
// have no port, such as unix sockets), as Envoy prints it.
func withoutPort(a net.Addr) string {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.IP.String()
	case *net.UDPAddr:
		return a.IP.String()
	}
	s := a.String()
	if host, _, err := net.SplitHostPort(s); err == nil {
		return host
	}
	return s
}
