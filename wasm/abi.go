package wasm

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Status is a proxy-wasm WasmResult, the value every env.proxy_* host call
// returns to the guest (ABI 0.2.0/0.2.1 numbering).
type Status uint32

// The WasmResult values the host returns.
const (
	StatusOK                   Status = 0
	StatusNotFound             Status = 1
	StatusBadArgument          Status = 2
	StatusSerializationFailure Status = 3
	StatusInvalidMemoryAccess  Status = 6
	StatusEmpty                Status = 7
	StatusCasMismatch          Status = 8
	StatusInternalFailure      Status = 10
	StatusUnimplemented        Status = 12
)

// MapType selects a header or trailer map in header-map host calls.
type MapType uint32

// The header map types of ABI 0.2.x. The HTTP-call maps are readable only
// while the guest handles proxy_on_http_call_response.
const (
	MapRequestHeaders           MapType = 0
	MapRequestTrailers          MapType = 1
	MapResponseHeaders          MapType = 2
	MapResponseTrailers         MapType = 3
	MapHTTPCallResponseHeaders  MapType = 6
	MapHTTPCallResponseTrailers MapType = 7
)

// BufferType selects a buffer in proxy_get_buffer_bytes/proxy_set_buffer_bytes.
type BufferType uint32

// The buffer types of ABI 0.2.x that this host serves.
const (
	BufferRequestBody          BufferType = 0
	BufferResponseBody         BufferType = 1
	BufferHTTPCallResponseBody BufferType = 4
	BufferVMConfiguration      BufferType = 6
	BufferPluginConfiguration  BufferType = 7
)

// StreamType names a direction in proxy_continue_stream/proxy_close_stream.
type StreamType uint32

// The stream directions of ABI 0.2.x.
const (
	StreamRequest  StreamType = 0
	StreamResponse StreamType = 1
)

// MetricKind is the type a guest gives proxy_define_metric.
type MetricKind uint32

// The metric kinds of ABI 0.2.x.
const (
	MetricCounter   MetricKind = 0
	MetricGauge     MetricKind = 1
	MetricHistogram MetricKind = 2
)

// String returns the kind's lower-case name.
func (k MetricKind) String() string {
	switch k {
	case MetricCounter:
		return "counter"
	case MetricGauge:
		return "gauge"
	case MetricHistogram:
		return "histogram"
	}
	return fmt.Sprintf("metric_kind(%d)", uint32(k))
}

// Action is what an HTTP callback asks of the stream.
type Action uint32

// Continue lets the stream proceed to the next filter; Pause stops iteration
// (the FILTER side buffers) until the guest calls proxy_continue_stream or
// answers with proxy_send_local_response. ABI 0.2.1's StopAllIteration* values
// are reported as Pause.
const (
	Continue Action = 0
	Pause    Action = 1
)

// String returns "continue" or "pause".
func (a Action) String() string {
	if a == Continue {
		return "continue"
	}
	return "pause"
}

// errBadMap is returned by decodeMap for a malformed serialized map.
var errBadMap = errors.New("malformed serialized header map")

// encodeMap serializes pairs in the proxy-wasm map format: a little-endian
// u32 count, then u32 key and value lengths per pair, then each key and value
// followed by a NUL byte.
func encodeMap(pairs [][2]string) []byte {
	n := 4 + 8*len(pairs)
	for _, p := range pairs {
		n += len(p[0]) + len(p[1]) + 2
	}
	b := make([]byte, n)
	binary.LittleEndian.PutUint32(b, uint32(len(pairs)))
	off := 4
	for _, p := range pairs {
		binary.LittleEndian.PutUint32(b[off:], uint32(len(p[0])))
		binary.LittleEndian.PutUint32(b[off+4:], uint32(len(p[1])))
		off += 8
	}
	for _, p := range pairs {
		off += copy(b[off:], p[0]) + 1
		off += copy(b[off:], p[1]) + 1
	}
	return b
}

// decodeMap parses the proxy-wasm map format written by encodeMap, checking
// every length against the buffer.
func decodeMap(b []byte) ([][2]string, error) {
	if len(b) == 0 {
		return nil, nil
	}
	if len(b) < 4 {
		return nil, fmt.Errorf("%w: %d bytes, need at least 4 for the count", errBadMap, len(b))
	}
	count := binary.LittleEndian.Uint32(b)
	if uint64(count)*8+4 > uint64(len(b)) {
		return nil, fmt.Errorf("%w: count %d does not fit %d bytes", errBadMap, count, len(b))
	}
	pairs := make([][2]string, count)
	data := 4 + int(count)*8
	for i := range pairs {
		kl := uint64(binary.LittleEndian.Uint32(b[4+8*i:]))
		vl := uint64(binary.LittleEndian.Uint32(b[8+8*i:]))
		if uint64(data)+kl+vl+2 > uint64(len(b)) {
			return nil, fmt.Errorf("%w: pair %d overruns the buffer", errBadMap, i)
		}
		pairs[i][0] = string(b[data : data+int(kl)])
		data += int(kl) + 1
		pairs[i][1] = string(b[data : data+int(vl)])
		data += int(vl) + 1
	}
	return pairs, nil
}
