package route

import (
	"fmt"
	"math"

	"google.golang.org/protobuf/types/known/wrapperspb"
)

// BodyBufferLimit is how many request body bytes a route lets the
// connection manager hold for it: the bytes kept so an attempt can be
// replayed on another connection, and the bytes HTTP filters may buffer
// (StopAndBuffer) before the request is answered 413. It is compiled from
// request_body_buffer_limit, or from the deprecated
// per_request_buffer_limit_bytes, of a Route or its VirtualHost.
//
// The zero value means neither level sets a limit. A BodyBufferLimit is
// immutable once compiled.
type BodyBufferLimit struct {
	// Set reports that the route or its virtual host sets a limit.
	Set bool
	// Value is the limit as configured.
	Value uint64
	// Legacy reports that Value is per_request_buffer_limit_bytes, which,
	// as in Envoy, is capped at the listener's
	// per_connection_buffer_limit_bytes; request_body_buffer_limit is not.
	Legacy bool
}

// Bytes resolves the limit for a request on a listener whose
// per_connection_buffer_limit_bytes is perConnection (0 when the listener
// does not set it), following Envoy's precedence:
//
//  1. request_body_buffer_limit, when set, is the limit, even above
//     perConnection;
//  2. else per_request_buffer_limit_bytes, capped at perConnection when the
//     listener sets it;
//  3. else perConnection, when the listener sets it;
//  4. else def (meshd's default, which differs from Envoy's 1 MiB: see
//     docs/RATIONALE.md).
//
// The result is at least 1 when def is, and never above math.MaxInt.
func (l BodyBufferLimit) Bytes(perConnection uint32, def int) int {
	var v uint64
	switch {
	case !l.Set && perConnection == 0:
		return def
	case !l.Set:
		v = uint64(perConnection)
	case l.Legacy && perConnection > 0:
		v = min(l.Value, uint64(perConnection))
	default:
		v = l.Value
	}
	if v > math.MaxInt {
		return math.MaxInt
	}
	return int(v)
}

// compileBodyBufferLimit compiles one level's (a route's or a virtual
// host's) request_body_buffer_limit and per_request_buffer_limit_bytes.
// Envoy accepts both on one level and uses request_body_buffer_limit; so
// does meshd. A per_request_buffer_limit_bytes of 0 reads as unset, as it
// always has in meshd; a request_body_buffer_limit of 0 is an error, since
// a limit that buffers nothing would make every body unreplayable and
// every buffering filter answer 413. Errors name the field under path p.
func compileBodyBufferLimit(p string, body *wrapperspb.UInt64Value, legacy *wrapperspb.UInt32Value) (BodyBufferLimit, error) {
	if body != nil {
		if body.GetValue() == 0 {
			return BodyBufferLimit{}, fmt.Errorf("%s.request_body_buffer_limit: must be greater than 0", p)
		}
		return BodyBufferLimit{Set: true, Value: body.GetValue()}, nil
	}
	if legacy.GetValue() > 0 {
		return BodyBufferLimit{Set: true, Value: uint64(legacy.GetValue()), Legacy: true}, nil
	}
	return BodyBufferLimit{}, nil
}
