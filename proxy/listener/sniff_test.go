package listener

import (
	"io"
	"net"
	"strings"
	"testing"
)

// chunkConn serves data in reads of the given sizes (cycled), then EOF.
type chunkConn struct {
	net.Conn // nil: only Read is used
	data     []byte
	sizes    []byte
	i        int
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := 1
	if len(c.sizes) > 0 {
		n = int(c.sizes[c.i%len(c.sizes)])%32 + 1
		c.i++
	}
	n = min(n, len(p), len(c.data))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

// FuzzSniff checks, for any input split any way, that detection picks
// HTTP/2 exactly when the input starts with the preface and that the
// codec reads back every byte the client sent, in order.
func FuzzSniff(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: h\r\n\r\n"), []byte{0})
	f.Add([]byte(h2preface+"\x00\x00\x00\x04"), []byte{3, 7})
	f.Add([]byte("PRI * HTTP/1.1\r\n"), []byte{30})
	f.Add([]byte("P"), []byte{})
	f.Fuzz(func(t *testing.T, data, sizes []byte) {
		c := &chunkConn{data: append([]byte(nil), data...), sizes: sizes}
		nc, codec, err := sniff(c)
		isH2 := strings.HasPrefix(string(data), h2preface)
		divergent := !strings.HasPrefix(h2preface, string(data[:min(len(data), len(h2preface))]))
		switch {
		case err != nil:
			if isH2 || divergent {
				t.Fatalf("sniff(%q) failed: %v", data, err)
			}
			return // a proper prefix of the preface, then EOF
		case isH2 && codec != HTTP2, !isH2 && codec != HTTP1:
			t.Fatalf("sniff(%q) = %v", data, codec)
		}
		got, err := io.ReadAll(nc)
		if err != nil || string(got) != string(data) {
			t.Fatalf("replayed %q, %v; want %q", got, err, data)
		}
	})
}
