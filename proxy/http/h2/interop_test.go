package h2

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// rawCodec passes gRPC messages through as bytes.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "raw" }

// grpcEcho is a gRPC server written against stream.ServerStream: it echoes
// each length-prefixed message and ends with grpc-status 0, or answers
// "/test.Echo/Fail" trailers-only with NOT_FOUND.
var grpcEcho = stream.HandlerFunc(func(s stream.ServerStream) {
	hdr := header.Make(1)
	hdr.Add("content-type", "application/grpc")
	if s.Request().Path == "/test.Echo/Fail" {
		hdr.Add("grpc-status", "5")
		hdr.Add("grpc-message", "no such thing")
		_ = s.WriteHeader(&stream.Response{Status: 200, Header: hdr, ContentLength: -1}, true)
		return
	}
	if err := s.WriteHeader(&stream.Response{Status: 200, Header: hdr, ContentLength: -1}, false); err != nil {
		return
	}
	if _, err := io.Copy(writerOnly{s}, readerOnly{s}); err != nil {
		return
	}
	tr := header.Make(1)
	tr.Add("grpc-status", "0")
	_ = s.WriteTrailers(tr)
})

func TestGRPCClientToServer(t *testing.T) {
	checkLeaks(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	ts := startServer(t, &ServerConfig{InitialStreamWindowSize: 65535}, grpcEcho)
	gc, err := grpc.NewClient("passthrough:///"+ts.addr(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{}), grpc.MaxCallRecvMsgSize(16<<20), grpc.MaxCallSendMsgSize(16<<20)))
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()
	for _, size := range []int{0, 10, 4 << 20} {
		in := bytes.Repeat([]byte{'x'}, size)
		var out []byte
		if err := gc.Invoke(ctx, "/test.Echo/Unary", &in, &out); err != nil {
			t.Fatalf("unary %d bytes: %v", size, err)
		}
		if !bytes.Equal(in, out) {
			t.Fatalf("unary %d bytes: echoed %d bytes", size, len(out))
		}
	}
	var out []byte
	in := []byte("x")
	err = gc.Invoke(ctx, "/test.Echo/Fail", &in, &out)
	if st := status.Convert(err); st.Code() != codes.NotFound || st.Message() != "no such thing" {
		t.Fatalf("trailers-only call: %v", err)
	}
	// Bidirectional streaming.
	cs, err := gc.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, "/test.Echo/Bidi")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		msg := []byte(fmt.Sprint("message ", i))
		if err := cs.SendMsg(&msg); err != nil {
			t.Fatal(err)
		}
		var got []byte
		if err := cs.RecvMsg(&got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("bidi message %d: %q, %v", i, got, err)
		}
	}
	if err := cs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	var got []byte
	if err := cs.RecvMsg(&got); err != io.EOF {
		t.Fatalf("end of bidi stream: %v", err)
	}
}

// grpcFrame length-prefixes a gRPC message.
func grpcFrame(msg []byte) []byte {
	b := make([]byte, 5+len(msg))
	binary.BigEndian.PutUint32(b[1:], uint32(len(msg)))
	copy(b[5:], msg)
	return b
}

func TestClientToGRPCServer(t *testing.T) {
	checkLeaks(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	gs := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}), grpc.MaxRecvMsgSize(16<<20), grpc.MaxSendMsgSize(16<<20),
		grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
			md, _ := metadata.FromIncomingContext(ss.Context())
			if v := md.Get("x-fail"); len(v) > 0 {
				return status.Error(codes.PermissionDenied, "denied: "+v[0])
			}
			for {
				var m []byte
				if err := ss.RecvMsg(&m); err == io.EOF {
					return nil
				} else if err != nil {
					return err
				}
				if err := ss.SendMsg(&m); err != nil {
					return err
				}
			}
		}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(ln) }()
	defer gs.Stop()
	cc := dialClient(t, ln.Addr().String(), &ClientConfig{InitialStreamWindowSize: 65535})

	grpcReq := func(extra ...string) *stream.Request {
		r := &stream.Request{Method: "POST", Scheme: "http", Authority: "test", Path: "/test.Echo/Unary", ContentLength: -1}
		r.Header.Add("content-type", "application/grpc")
		r.Header.Add("te", "trailers")
		for i := 0; i+1 < len(extra); i += 2 {
			r.Header.Add(extra[i], extra[i+1])
		}
		return r
	}
	for _, size := range []int{1, 4 << 20} {
		msg := bytes.Repeat([]byte{'y'}, size)
		resp, body, tr, err := roundTrip(ctx, cc, grpcReq(), grpcFrame(msg), header.Header{})
		if err != nil {
			t.Fatalf("%d bytes: %v", size, err)
		}
		if resp.Status != 200 || tr.Get("grpc-status") != "0" {
			t.Fatalf("%d bytes: status %d, trailers %v", size, resp.Status, tr.Fields())
		}
		if !bytes.Equal(body, grpcFrame(msg)) {
			t.Fatalf("%d bytes: echoed %d bytes", size, len(body))
		}
	}
	// A handler error comes back trailers-only.
	resp, _, _, err := roundTrip(ctx, cc, grpcReq("x-fail", "yes"), grpcFrame(nil), header.Header{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Header.Get("grpc-status") != "7" || !strings.Contains(resp.Header.Get("grpc-message"), "denied") {
		t.Fatalf("trailers-only response headers = %v", resp.Header.Fields())
	}
}

// h2cTransport is net/http's HTTP/2 client (x/net/http2's code, bundled
// into the standard library) speaking HTTP/2 with prior knowledge over
// plaintext TCP, and nothing else.
func h2cTransport() *http.Transport {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Transport{Protocols: &p}
}

func TestStdTransportToServer(t *testing.T) {
	checkLeaks(t)
	ts := startServer(t, &ServerConfig{InitialStreamWindowSize: 4096, InitialConnectionWindowSize: 65535}, echoHandler)
	tr := h2cTransport()
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: testTimeout}
	body := bytes.Repeat([]byte("0123456789"), 200_000)
	req, _ := http.NewRequest("POST", "http://"+ts.addr()+"/xnet", bytes.NewReader(body))
	req.Trailer = http.Header{"X-Checksum": nil}
	req.Trailer.Set("X-Checksum", "sum")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("X-Echo-Path") != "/xnet" || !bytes.Equal(got, body) {
		t.Fatalf("status %d, headers %v, %d bytes", resp.StatusCode, resp.Header, len(got))
	}
	if resp.Trailer.Get("X-Checksum") != "sum" {
		t.Fatalf("trailers = %v", resp.Trailer)
	}
}

func TestClientToStdServer(t *testing.T) {
	checkLeaks(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Len")
		w.Header().Set("X-Method", r.Method)
		n, _ := io.Copy(w, r.Body)
		w.Header().Set("X-Len", fmt.Sprint(n))
	})
	// net/http's HTTP/2 server (x/net/http2's code, bundled into the
	// standard library), prior knowledge only.
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: &p, HTTP2: &http.HTTP2Config{MaxConcurrentStreams: 3}}
	go srv.Serve(ln)
	defer srv.Close()
	settings := make(chan uint32, 4)
	cc := dialClient(t, ln.Addr().String(), &ClientConfig{
		InitialStreamWindowSize: 8192,
		OnSettings:              func(n uint32) { settings <- n },
	})
	if got := <-settings; got != 3 {
		t.Fatalf("OnSettings(%d), want 3", got)
	}
	body := bytes.Repeat([]byte("z"), 3<<20)
	resp, got, tr, err := roundTrip(ctx, cc, newReq("/x"), body, header.Header{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != 200 || resp.Header.Get("x-method") != "POST" || !bytes.Equal(got, body) {
		t.Fatalf("status %d, headers %v, %d bytes", resp.Status, resp.Header.Fields(), len(got))
	}
	if tr.Get("x-len") != fmt.Sprint(len(body)) {
		t.Fatalf("trailers = %v", tr.Fields())
	}
	if c := cc.Capacity(); c != 3 {
		t.Fatalf("Capacity = %d, want 3", c)
	}
	_ = cc.Close()
}
