package h2

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// FuzzServerConn feeds arbitrary bytes after the client preface to a server
// connection; it must neither panic nor hang.
func FuzzServerConn(f *testing.F) {
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10})
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, kv := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":authority", "a"}, {":path", "/"}, {"content-length", "3"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
	}
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true})
	_ = fr.WriteData(1, true, []byte("abc"))
	_ = fr.WritePing(false, [8]byte{1})
	_ = fr.WriteWindowUpdate(0, 100)
	_ = fr.WriteRSTStream(1, http2.ErrCodeCancel)
	_ = fr.WriteGoAway(1, http2.ErrCodeNo, nil)
	f.Add(buf.Bytes())
	f.Add([]byte{0, 0, 0, 4, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		sc := NewServerConn(server, &ServerConfig{IdleTimeout: time.Second}, echoHandler, stream.ConnInfo{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = sc.Serve()
		}()
		go func() { _, _ = io.Copy(io.Discard, client) }()
		_ = client.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = client.Write([]byte(http2.ClientPreface))
		_, _ = client.Write(data)
		_ = sc.Close()
		_ = client.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Serve did not return after Close")
		}
	})
}

// BenchmarkUnary measures one request/response stream (64-byte body each
// way, echoed) over loopback TCP through this package's client and server.
func BenchmarkUnary(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _ = NewServerConn(nc, nil, echoHandler, stream.ConnInfo{}).Serve() }()
		}
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	cc := NewClientConn(nc, nil)
	defer cc.Close()
	for deadline := time.Now().Add(testTimeout); cc.Capacity() < 2 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	ctx := context.Background()
	body := bytes.Repeat([]byte("m"), 64)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 128)
		req := newReq("/bench")
		for pb.Next() {
			cs, err := cc.NewStream(ctx, req, false)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = cs.Write(body)
			_ = cs.CloseWrite(header.Header{})
			if _, err := cs.Response(ctx); err != nil {
				b.Error(err)
				return
			}
			for {
				if _, err := cs.Read(buf); err != nil {
					if err != io.EOF {
						b.Error(err)
					}
					break
				}
			}
		}
	})
}
