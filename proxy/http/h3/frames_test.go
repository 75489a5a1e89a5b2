package h3

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
	"golang.org/x/net/http/httpguts"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/mtls/mtlstest"
	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// qpackBlock encodes fields (name, value pairs) as a QPACK header block.
func qpackBlock(t testing.TB, kv ...string) []byte {
	t.Helper()
	var w sliceWriter
	enc := qpack.NewEncoder(&w)
	for i := 0; i < len(kv); i += 2 {
		if err := enc.WriteField(qpack.HeaderField{Name: kv[i], Value: kv[i+1]}); err != nil {
			t.Fatal(err)
		}
	}
	return w.b
}

func TestDecodeFields(t *testing.T) {
	for _, tc := range []struct {
		name     string
		fields   []string
		trailers bool
		want     string // "" for success, else part of the error
		status   int
		length   int64
	}{
		{"response", []string{":status", "200", "content-type", "application/grpc", "content-length", "5"}, false, "", 200, 5},
		{"trailers", []string{"grpc-status", "0"}, true, "", 0, -1},
		{"no status", []string{"content-type", "text/plain"}, false, "response without :status", 0, 0},
		{"status after a field", []string{"x", "1", ":status", "200"}, false, `unexpected pseudo-header ":status"`, 0, 0},
		{"pseudo-header in trailers", []string{":status", "200"}, true, "unexpected pseudo-header", 0, 0},
		{"request pseudo-header", []string{":status", "200", ":path", "/"}, false, `unexpected pseudo-header ":path"`, 0, 0},
		{"two statuses", []string{":status", "200", ":status", "204"}, false, "unexpected pseudo-header", 0, 0},
		{"bad status", []string{":status", "2000"}, false, `invalid :status "2000"`, 0, 0},
		{"upper case", []string{":status", "200", "X-Foo", "1"}, false, `upper-case field name "X-Foo"`, 0, 0},
		{"connection-specific", []string{":status", "200", "connection", "close"}, false, `connection-specific field "connection"`, 0, 0},
		{"bad content-length", []string{":status", "200", "content-length", "-1"}, false, `invalid content-length "-1"`, 0, 0},
		// RFC 9110 section 8.6: digits only; strconv.ParseInt took "+5".
		{"signed content-length", []string{":status", "200", "content-length", "+5"}, false, `invalid content-length "+5"`, 0, 0},
		{"conflicting content-length", []string{":status", "200", "content-length", "1", "content-length", "2"}, false, "invalid content-length", 0, 0},
		// An HTTP/3 upstream's response fields were not checked for the
		// characters RFC 9114 section 4.1.2 forbids: a CR LF or NUL in a
		// value was forwarded, and meshd's HTTP/2 downstream writer sends
		// it as is (found by the strengthened FuzzDecodeFields).
		{"CR LF in a value", []string{":status", "200", "x-a", "a\r\nset-cookie: b"}, false, `invalid value of field "x-a"`, 0, 0},
		{"NUL in a trailer value", []string{"grpc-message", "a\x00b"}, true, `invalid value of field "grpc-message"`, 0, 0},
		{"space in a name", []string{":status", "200", "x a", "1"}, false, `invalid field name "x a"`, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := decodeFields(qpackBlock(t, tc.fields...), tc.trailers)
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("error %v, want %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if f.status != tc.status || f.contentLength != tc.length || f.header.Len() != len(tc.fields)/2-min(tc.status, 1) {
				t.Fatalf("status %d length %d fields %v", f.status, f.contentLength, f.header.Fields())
			}
		})
	}
}

// FuzzDecodeFields: any header block decodes or fails with an *h3Error,
// and a section it accepts is a well-formed response or trailer section
// (RFC 9114 section 4.1.2): a :status in 100..999 for a response and none
// in trailers, field names that are lower-case tokens, values without
// NUL, CR or LF, no connection-specific field, and a content-length that
// agrees with its field.
func FuzzDecodeFields(f *testing.F) {
	f.Add(qpackBlock(f, ":status", "200", "content-type", "application/grpc"), false)
	f.Add(qpackBlock(f, "grpc-status", "0", "grpc-message", "ok"), true)
	f.Add(qpackBlock(f, ":status", "200", "x-a", "a\r\nset-cookie: b"), false)
	f.Add(qpackBlock(f, ":status", "200", "x a", "b", "content-length", "5"), false)
	f.Add([]byte{0, 0, 0xff}, false)
	f.Fuzz(func(t *testing.T, block []byte, trailers bool) {
		d, err := decodeFields(block, trailers)
		if err != nil {
			if _, ok := errors.AsType[*h3Error](err); !ok {
				t.Fatalf("error %T %v is not an *h3Error", err, err)
			}
			return
		}
		if trailers != (d.status == 0) || (!trailers && (d.status < 100 || d.status > 999)) {
			t.Fatalf("accepted :status %d (trailers %v)", d.status, trailers)
		}
		for _, fl := range d.header.Fields() {
			if !header.ValidName(fl.Name) || !httpguts.ValidHeaderFieldValue(fl.Value) || header.IsConnectionSpecific(fl.Name) {
				t.Fatalf("accepted field %q: %q", fl.Name, fl.Value)
			}
			if n, _ := strconv.ParseInt(fl.Value, 10, 64); fl.Name == "content-length" && !trailers && n != d.contentLength {
				t.Fatalf("content-length %q decoded as %d", fl.Value, d.contentLength)
			}
		}
	})
}

// rawPeer is a QUIC server speaking raw HTTP/3 frames: serve runs on each
// connection after the server's control stream (SETTINGS) is open.
func rawPeer(t *testing.T, serve func(c *quic.Conn, control *quic.SendStream)) (string, *tls.Config) {
	t.Helper()
	ca := mtlstest.NewCA(t, "test.example")
	svid := ca.Issue(t, "spiffe://test.example/ns/a/sa/server")
	cert := mtlstest.TLSCertificate(svid)
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp}
	ln, err := tr.Listen(&tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{NextProto}}, &quic.Config{MaxIncomingStreams: 10})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			control, err := c.OpenUniStream()
			if err != nil {
				return
			}
			b := quicvarint.Append(nil, streamControl)
			_, _ = control.Write(appendFrameHeader(b, frameSettings, 0))
			serve(c, control)
		}
	}()
	t.Cleanup(func() { _ = ln.Close(); _ = tr.Close(); _ = udp.Close(); <-done })
	return udp.LocalAddr().String(), &tls.Config{InsecureSkipVerify: true}
}

// headersFrame is a HEADERS frame of fields.
func headersFrame(t *testing.T, kv ...string) []byte {
	block := qpackBlock(t, kv...)
	return append(appendFrameHeader(nil, frameHeaders, uint64(len(block))), block...)
}

// TestClientGoAwayStreamID: streams at or above a GOAWAY's ID fail as
// unprocessed (the peer never saw them); the one below completes, interim
// 1xx responses and unknown frames are skipped, and a Trailers-Only
// response ends with its headers.
func TestClientGoAwayStreamID(t *testing.T) {
	testutil.CheckGoroutines(t)
	addr, tc := rawPeer(t, func(c *quic.Conn, control *quic.SendStream) {
		first, err := c.AcceptStream(context.Background())
		if err != nil {
			return
		}
		second, err := c.AcceptStream(context.Background())
		if err != nil {
			return
		}
		// Read both requests' HEADERS frames, then refuse the second by
		// GOAWAY and answer the first.
		for _, s := range []*quic.Stream{first, second} {
			r := bufio.NewReader(s)
			if _, n, err := readFrameHeader(r); err != nil || skip(r, n) != nil {
				return
			}
		}
		ga := quicvarint.Append(nil, uint64(second.StreamID()))
		_, _ = control.Write(append(appendFrameHeader(nil, frameGoAway, uint64(len(ga))), ga...))
		var resp []byte
		resp = append(resp, headersFrame(t, ":status", "103", "link", "</a>")...)
		resp = append(resp, appendFrameHeader(nil, 0x21, 2)...) // a reserved frame type
		resp = append(resp, 0, 0)
		resp = append(resp, headersFrame(t, ":status", "200", "grpc-status", "0")...)
		_, _ = first.Write(resp)
		_ = first.Close()
		<-c.Context().Done()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	goaway := make(chan struct{})
	cc, err := Dial(ctx, addr, tc, &ClientConfig{OnGoAway: func() { close(goaway) }})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	req := &stream.Request{Method: "GET", Scheme: "https", Authority: "svc", Path: "/", Header: header.Make(0)}
	s1, err := cc.NewStream(ctx, req, true)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := cc.NewStream(ctx, req, true)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := s1.Response(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != 200 || !resp.EndStream || resp.Header.Get("grpc-status") != "0" {
		t.Fatalf("response %+v, want a 200 Trailers-Only response", resp)
	}
	if n, err := s1.Read(make([]byte, 8)); n != 0 || err != io.EOF {
		t.Fatalf("Read after a Trailers-Only response: %d, %v; want io.EOF", n, err)
	}
	<-goaway
	if _, err := cc.NewStream(ctx, req, true); !stream.Unprocessed(err) {
		t.Errorf("NewStream after GOAWAY: %v, want an unprocessed error", err)
	}
	// The peer closes the connection gracefully once the first stream is
	// done; the second, at the GOAWAY's ID, was never processed.
	_, err = s2.Response(ctx)
	if !stream.Unprocessed(err) {
		t.Fatalf("stream at the GOAWAY's ID: %v, want an unprocessed error", err)
	}
}

// TestClientControlStreamErrors: a peer breaking the control stream's
// rules has the connection closed with the HTTP/3 error code for it.
func TestClientControlStreamErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		frame []byte
		want  http3.ErrCode
	}{
		{"DATA on the control stream", appendFrameHeader(nil, frameData, 0), http3.ErrCodeFrameUnexpected},
		{"second SETTINGS", appendFrameHeader(nil, frameSettings, 0), http3.ErrCodeFrameUnexpected},
		{"GOAWAY with a server stream ID", append(appendFrameHeader(nil, frameGoAway, 1), 1), http3.ErrCodeIDError},
		{"truncated GOAWAY stream ID", append(appendFrameHeader(nil, frameGoAway, 1), 0x40), http3.ErrCodeFrameError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			addr, tlsConf := rawPeer(t, func(c *quic.Conn, control *quic.SendStream) {
				_, _ = control.Write(tc.frame)
				<-c.Context().Done()
			})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			closed := make(chan error, 1)
			cc, err := Dial(ctx, addr, tlsConf, &ClientConfig{OnClose: func(err error) { closed <- err }})
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			select {
			case err := <-closed:
				ae, ok := errors.AsType[*quic.ApplicationError](err)
				if !ok || http3.ErrCode(ae.ErrorCode) != tc.want || ae.Remote {
					t.Fatalf("connection closed with %v, want a local %s", err, tc.want)
				}
			case <-ctx.Done():
				t.Fatal("the connection stayed open")
			}
		})
	}
}

// TestClientResponseBodyErrors: a response stream that ends inside a DATA
// frame, or sends a frame after its trailers, closes the connection with
// the HTTP/3 error for it (RFC 9114 sections 4.1 and 7.1), and Read fails.
func TestClientResponseBodyErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		body func(t *testing.T) []byte
		want http3.ErrCode
	}{
		{"stream ends inside a DATA frame", func(*testing.T) []byte {
			return append(appendFrameHeader(nil, frameData, 10), "abc"...)
		}, http3.ErrCodeFrameError},
		{"frame after the trailers", func(t *testing.T) []byte {
			b := headersFrame(t, "grpc-status", "0")
			return append(b, append(appendFrameHeader(nil, frameData, 1), 'x')...)
		}, http3.ErrCodeFrameUnexpected},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			addr, tlsConf := rawPeer(t, func(c *quic.Conn, _ *quic.SendStream) {
				s, err := c.AcceptStream(context.Background())
				if err != nil {
					return
				}
				r := bufio.NewReader(s)
				if _, n, err := readFrameHeader(r); err != nil || skip(r, n) != nil {
					return
				}
				_, _ = s.Write(append(headersFrame(t, ":status", "200"), tc.body(t)...))
				_ = s.Close()
				<-c.Context().Done()
			})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			closed := make(chan error, 1)
			cc, err := Dial(ctx, addr, tlsConf, &ClientConfig{OnClose: func(err error) { closed <- err }})
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			cs, err := cc.NewStream(ctx, &stream.Request{Method: "GET", Scheme: "https", Authority: "svc", Path: "/", Header: header.Make(0)}, true)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := cs.Response(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadAll(cs); err == nil {
				t.Fatal("reading the body succeeded")
			}
			select {
			case err := <-closed:
				ae, ok := errors.AsType[*quic.ApplicationError](err)
				if !ok || http3.ErrCode(ae.ErrorCode) != tc.want || ae.Remote {
					t.Fatalf("connection closed with %v, want a local %s", err, tc.want)
				}
			case <-ctx.Done():
				t.Fatal("the connection stayed open")
			}
		})
	}
}
