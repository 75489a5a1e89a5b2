package h2

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// blockWriter builds the wire bytes of header-block frames for tests.
type blockWriter struct {
	buf  bytes.Buffer
	fr   *http2.Framer
	hbuf bytes.Buffer
	enc  *hpack.Encoder
}

func newBlockWriter() *blockWriter {
	w := &blockWriter{}
	w.fr = http2.NewFramer(&w.buf, nil)
	w.enc = hpack.NewEncoder(&w.hbuf)
	return w
}

// block HPACK-encodes name/value pairs with w's encoder (so its dynamic
// table carries over between blocks, as a peer's does).
func (w *blockWriter) block(kv ...string) []byte {
	w.hbuf.Reset()
	for i := 0; i < len(kv); i += 2 {
		_ = w.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return bytes.Clone(w.hbuf.Bytes())
}

func (w *blockWriter) headers(p http2.HeadersFrameParam) { _ = w.fr.WriteHeaders(p) }

func (w *blockWriter) cont(id uint32, end bool, frag []byte) {
	_ = w.fr.WriteContinuation(id, end, frag)
}

func (w *blockWriter) raw(t http2.FrameType, flags http2.Flags, id uint32, payload []byte) {
	_ = w.fr.WriteRawFrame(t, flags, id, payload)
}

var getKV = []string{":method", "GET", ":scheme", "http", ":authority", "a", ":path", "/"}

// readBlocks reads frames from wire the way a connection's reader does:
// the Framer reads each frame header, r decodes header blocks. It returns
// the decoded blocks (as "name: value" lines) and the first error.
func readBlocks(r *headerReader, wire []byte) ([]string, []bool, error) {
	src := bytes.NewReader(wire)
	fr := http2.NewFramer(io.Discard, src)
	fr.SetMaxReadFrameSize(DefaultMaxFrameSize)
	var got []string
	var truncated []bool
	for {
		fh, err := fr.ReadFrameHeader()
		if err == io.EOF {
			return got, truncated, nil
		}
		if err != nil {
			return got, truncated, err
		}
		if fh.Type != http2.FrameHeaders && fh.Type != http2.FrameContinuation {
			if _, err := fr.ReadFrameForHeader(fh); err != nil {
				return got, truncated, err
			}
			continue
		}
		blk, err := r.readFrame(fh, src)
		if err != nil {
			return got, truncated, err
		}
		if blk == nil {
			continue
		}
		var lines []string
		for _, f := range blk.PseudoFields() {
			lines = append(lines, "P "+f.Name+": "+f.Value)
		}
		for _, f := range blk.RegularFields() {
			lines = append(lines, f.Name+": "+f.Value)
		}
		got = append(got, strings.Join(lines, "\n"))
		truncated = append(truncated, blk.Truncated)
		r.release()
	}
}

// errKind names an error the way the connection acts on it: "conn CODE"
// (GOAWAY), "stream CODE" (RST_STREAM) or "io".
func errKind(err error) string {
	var ce connError
	var fce http2.ConnectionError
	var se http2.StreamError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &ce):
		return "conn " + http2.ErrCode(ce.code).String()
	case errors.As(err, &fce):
		return "conn " + http2.ErrCode(fce).String()
	case errors.As(err, &se):
		return "stream " + se.Code.String()
	}
	return "io"
}

func TestHeaderReader(t *testing.T) {
	getLines := "P :method: GET\nP :scheme: http\nP :authority: a\nP :path: /"
	tests := []struct {
		name      string
		maxList   uint32
		write     func(w *blockWriter)
		want      []string // decoded blocks
		truncated bool     // the last block is truncated
		wantErr   string
	}{
		{
			name: "one frame",
			write: func(w *blockWriter) {
				w.headers(http2.HeadersFrameParam{StreamID: 1, BlockFragment: w.block(getKV...), EndHeaders: true})
			},
			want: []string{getLines},
		},
		{
			name: "split inside a literal across HEADERS and two CONTINUATIONs, one empty",
			write: func(w *blockWriter) {
				b := w.block(append(getKV, "x-long", strings.Repeat("v", 100))...)
				w.headers(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:len(b)-50]})
				w.cont(1, false, nil)
				w.cont(1, true, b[len(b)-50:])
			},
			want: []string{getLines + "\nx-long: " + strings.Repeat("v", 100)},
		},
		{
			name: "padding and priority",
			write: func(w *blockWriter) {
				w.headers(http2.HeadersFrameParam{StreamID: 3, BlockFragment: w.block(getKV...), EndHeaders: true, PadLength: 7,
					Priority: http2.PriorityParam{StreamDep: 1, Weight: 15}})
			},
			want: []string{getLines},
		},
		{
			name: "dynamic table carries over between blocks",
			write: func(w *blockWriter) {
				kv := append(getKV, "content-type", "application/grpc", "te", "trailers")
				w.headers(http2.HeadersFrameParam{StreamID: 1, BlockFragment: w.block(kv...), EndHeaders: true})
				w.headers(http2.HeadersFrameParam{StreamID: 3, BlockFragment: w.block(kv...), EndHeaders: true})
			},
			want: []string{
				getLines + "\ncontent-type: application/grpc\nte: trailers",
				getLines + "\ncontent-type: application/grpc\nte: trailers",
			},
		},
		{
			name:    "list over the limit is truncated",
			maxList: 240,
			write: func(w *blockWriter) {
				w.headers(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true,
					BlockFragment: w.block(append(getKV, "x-a", strings.Repeat("a", 30), "x-b", strings.Repeat("b", 30))...)})
			},
			want:      []string{getLines + "\nx-a: " + strings.Repeat("a", 30)},
			truncated: true,
		},
		{
			name:    "fragment more than twice the remaining budget",
			maxList: 100,
			write: func(w *blockWriter) {
				w.headers(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: w.block("x-big", strings.Repeat("b", 400))})
			},
			wantErr: "conn PROTOCOL_ERROR",
		},
		{
			name:    "CONTINUATION once the list is over the limit",
			maxList: 200,
			write: func(w *blockWriter) {
				w.headers(http2.HeadersFrameParam{StreamID: 1, BlockFragment: w.block(append(getKV, "x-a", strings.Repeat("a", 150))...)})
				w.cont(1, true, w.block("x-b", "b"))
			},
			wantErr: "conn PROTOCOL_ERROR",
		},
		{
			name: "too many CONTINUATION frames",
			write: func(w *blockWriter) {
				w.headers(http2.HeadersFrameParam{StreamID: 1, BlockFragment: w.block(getKV...)})
				for range maxHeaderBlockFrames {
					w.cont(1, false, nil)
				}
			},
			wantErr: "conn ENHANCE_YOUR_CALM",
		},
		{
			name: "DATA interleaved in a header block",
			write: func(w *blockWriter) {
				w.headers(http2.HeadersFrameParam{StreamID: 1, BlockFragment: w.block(getKV...)})
				_ = w.fr.WriteData(1, false, []byte("x"))
			},
			wantErr: "conn PROTOCOL_ERROR",
		},
		{
			name: "CONTINUATION for another stream",
			write: func(w *blockWriter) {
				w.headers(http2.HeadersFrameParam{StreamID: 1, BlockFragment: w.block(getKV...)})
				w.cont(3, true, nil)
			},
			wantErr: "conn PROTOCOL_ERROR",
		},
		{
			name:    "CONTINUATION without HEADERS",
			write:   func(w *blockWriter) { w.cont(1, true, w.block(getKV...)) },
			wantErr: "conn PROTOCOL_ERROR",
		},
		{
			name:    "HEADERS on stream 0",
			write:   func(w *blockWriter) { w.raw(http2.FrameHeaders, http2.FlagHeadersEndHeaders, 0, w.block(getKV...)) },
			wantErr: "conn PROTOCOL_ERROR",
		},
		{
			name: "padding longer than the payload",
			write: func(w *blockWriter) {
				w.raw(http2.FrameHeaders, http2.FlagHeadersEndHeaders|http2.FlagHeadersPadded, 1, []byte{9, 0x82})
			},
			wantErr: "conn PROTOCOL_ERROR",
		},
		{
			name: "PADDED without a Pad Length",
			write: func(w *blockWriter) {
				w.raw(http2.FrameHeaders, http2.FlagHeadersEndHeaders|http2.FlagHeadersPadded, 1, nil)
			},
			wantErr: "conn FRAME_SIZE_ERROR",
		},
		{
			name: "PRIORITY without its five bytes",
			write: func(w *blockWriter) {
				w.raw(http2.FrameHeaders, http2.FlagHeadersEndHeaders|http2.FlagHeadersPriority, 1, []byte{0, 0})
			},
			wantErr: "conn FRAME_SIZE_ERROR",
		},
		{
			name:    "index beyond the tables",
			write:   func(w *blockWriter) { w.raw(http2.FrameHeaders, http2.FlagHeadersEndHeaders, 1, []byte{0xff, 0x7f}) },
			wantErr: "conn COMPRESSION_ERROR",
		},
		{
			name: "block ends inside a field",
			write: func(w *blockWriter) {
				b := w.block(getKV...)
				w.raw(http2.FrameHeaders, http2.FlagHeadersEndHeaders, 1, append(b, 0x40, 0x05, 'x'))
			},
			wantErr: "conn COMPRESSION_ERROR",
		},
		{
			name: "table size update after the first field",
			write: func(w *blockWriter) {
				w.raw(http2.FrameHeaders, http2.FlagHeadersEndHeaders, 1, append(w.block(getKV...), 0x20))
			},
			wantErr: "conn COMPRESSION_ERROR",
		},
		{
			name: "table size update above SETTINGS_HEADER_TABLE_SIZE",
			write: func(w *blockWriter) {
				w.raw(http2.FrameHeaders, http2.FlagHeadersEndHeaders, 1, append([]byte{0x3f, 0xe2, 0x1f}, w.block(getKV...)...)) // 4097
			},
			wantErr: "conn COMPRESSION_ERROR",
		},
		{
			name: "table size update at the start",
			write: func(w *blockWriter) {
				w.raw(http2.FrameHeaders, http2.FlagHeadersEndHeaders, 1, append([]byte{0x20}, w.block(getKV...)...))
			},
			want: []string{getLines},
		},
		{
			name: "upper-case name",
			write: func(w *blockWriter) {
				w.headers(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: w.block(append(getKV, "X-Up", "1")...)})
			},
			wantErr: "stream PROTOCOL_ERROR",
		},
		{
			name: "empty name",
			write: func(w *blockWriter) {
				w.headers(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: w.block(append(getKV, "", "1")...)})
			},
			wantErr: "stream PROTOCOL_ERROR",
		},
		{
			name: "value with a line feed",
			write: func(w *blockWriter) {
				w.headers(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: w.block(append(getKV, "x-a", "a\nb")...)})
			},
			wantErr: "stream PROTOCOL_ERROR",
		},
		{
			name: "pseudo-header after a regular field",
			write: func(w *blockWriter) {
				w.headers(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: w.block("x-a", "1", ":method", "GET")})
			},
			wantErr: "stream PROTOCOL_ERROR",
		},
		{
			name: "duplicate pseudo-header",
			write: func(w *blockWriter) {
				w.headers(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: w.block(append(getKV, ":path", "/x")...)})
			},
			wantErr: "stream PROTOCOL_ERROR",
		},
		{
			name: "unknown pseudo-header",
			write: func(w *blockWriter) {
				w.headers(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: w.block(append(getKV, ":foo", "1")...)})
			},
			wantErr: "stream PROTOCOL_ERROR",
		},
		{
			name: "request and response pseudo-headers",
			write: func(w *blockWriter) {
				w.headers(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: w.block(":status", "200", ":path", "/")})
			},
			wantErr: "stream PROTOCOL_ERROR",
		},
		{
			name: "CONTINUATION after an invalid field",
			write: func(w *blockWriter) {
				w.headers(http2.HeadersFrameParam{StreamID: 1, BlockFragment: w.block(append(getKV, "X-Up", "1")...)})
				w.cont(1, true, w.block("x-a", "1"))
			},
			wantErr: "conn PROTOCOL_ERROR",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newBlockWriter()
			tt.write(w)
			var r headerReader
			r.init(orDefault(tt.maxList, DefaultMaxHeaderListSize))
			got, truncated, err := readBlocks(&r, w.buf.Bytes())
			if kind := errKind(err); kind != tt.wantErr {
				t.Fatalf("error %v (%s), want %q", err, kind, tt.wantErr)
			}
			if tt.wantErr != "" {
				return
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("blocks\n%q\nwant\n%q", got, tt.want)
			}
			if last := truncated[len(truncated)-1]; last != tt.truncated {
				t.Fatalf("truncated = %v, want %v", last, tt.truncated)
			}
		})
	}
}

// TestHeaderReaderTableAfterStreamError: a block reset for an invalid
// field is still decoded whole, so the next block's dynamic table
// references resolve.
func TestHeaderReaderTableAfterStreamError(t *testing.T) {
	w := newBlockWriter()
	w.headers(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: w.block(append(getKV, "X-Up", "1", "x-after", "indexed")...)})
	bad := w.buf.Len()
	w.headers(http2.HeadersFrameParam{StreamID: 3, EndHeaders: true, BlockFragment: w.block(append(getKV, "x-after", "indexed")...)})
	var r headerReader
	r.init(DefaultMaxHeaderListSize)
	if _, _, err := readBlocks(&r, w.buf.Bytes()[:bad]); errKind(err) != "stream PROTOCOL_ERROR" {
		t.Fatalf("first block: %v, want a stream error", err)
	}
	got, _, err := readBlocks(&r, w.buf.Bytes()[bad:])
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !strings.HasSuffix(got[0], "x-after: indexed") {
		t.Fatalf("second block %q", got)
	}
}

// TestHeaderReaderSteadyStateAllocs: once a peer's fields are in the
// dynamic table, decoding a block allocates nothing.
func TestHeaderReaderSteadyStateAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	w := newBlockWriter()
	kv := append(getKV, "content-type", "application/grpc", "te", "trailers", "user-agent", "grpc-go/1.85.0")
	w.headers(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: w.block(kv...)})
	first := bytes.Clone(w.buf.Bytes())
	w.buf.Reset()
	w.headers(http2.HeadersFrameParam{StreamID: 3, EndHeaders: true, EndStream: true, BlockFragment: w.block(kv...)})
	again := w.buf.Bytes()
	var fh http2.FrameHeader
	fr := http2.NewFramer(io.Discard, bytes.NewReader(again))
	fh, err := fr.ReadFrameHeader()
	if err != nil {
		t.Fatal(err)
	}
	var r headerReader
	r.init(DefaultMaxHeaderListSize)
	if _, _, err := readBlocks(&r, first); err != nil {
		t.Fatal(err)
	}
	src := bytes.NewReader(again[frameHeaderLen:])
	allocs := testing.AllocsPerRun(100, func() {
		src.Reset(again[frameHeaderLen:])
		blk, err := r.readFrame(fh, src)
		if err != nil || blk == nil || len(blk.Fields) != 7 || !blk.EndStream {
			t.Fatalf("block %+v, %v", blk, err)
		}
		r.release()
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per block, want 0", allocs)
	}
}

// TestHeaderBlocksOnServerConn: what the server connection does with the
// header reader's outcomes: a response, RST_STREAM, or GOAWAY.
func TestHeaderBlocksOnServerConn(t *testing.T) {
	isRST := func(id uint32) func(http2.Frame) bool {
		return func(f http2.Frame) bool { r, ok := f.(*http2.RSTStreamFrame); return ok && r.StreamID == id }
	}
	tests := []struct {
		name      string
		write     func(w *blockWriter)
		rst       uint32 // stream expected to be reset with PROTOCOL_ERROR
		ok        uint32 // stream expected to get a 200 response
		goAway    http2.ErrCode
		messaging uint64 // rx_messaging_error
	}{
		{
			name: "block split over padded HEADERS and CONTINUATIONs",
			write: func(w *blockWriter) {
				b := w.block(getKV...)
				w.headers(http2.HeadersFrameParam{StreamID: 1, EndStream: true, PadLength: 3, BlockFragment: b[:2],
					Priority: http2.PriorityParam{Weight: 200}})
				w.cont(1, false, b[2:3])
				w.cont(1, true, b[3:])
			},
			ok: 1,
		},
		{
			name: "invalid field resets its stream; the next block decodes",
			write: func(w *blockWriter) {
				w.headers(http2.HeadersFrameParam{StreamID: 1, EndStream: true, EndHeaders: true,
					BlockFragment: w.block(append(getKV, "Bad", "1", "x-later", "indexed")...)})
				w.headers(http2.HeadersFrameParam{StreamID: 3, EndStream: true, EndHeaders: true,
					BlockFragment: w.block(append(getKV, "x-later", "indexed")...)})
			},
			rst: 1, ok: 3, messaging: 1,
		},
		{
			name: "endless empty CONTINUATIONs",
			write: func(w *blockWriter) {
				w.headers(http2.HeadersFrameParam{StreamID: 1, BlockFragment: w.block(getKV...)})
				for range 2 * maxHeaderBlockFrames {
					w.cont(1, false, nil)
				}
			},
			goAway: http2.ErrCodeEnhanceYourCalm, messaging: 1,
		},
		{
			name: "padding longer than the payload",
			write: func(w *blockWriter) {
				w.raw(http2.FrameHeaders, http2.FlagHeadersEndHeaders|http2.FlagHeadersEndStream|http2.FlagHeadersPadded, 1, []byte{200, 0x82})
			},
			goAway: http2.ErrCodeProtocol, messaging: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkLeaks(t)
			st := newTestStats()
			ts := startServer(t, &ServerConfig{Stats: st}, echoHandler)
			p := dialRawClient(t, ts.addr())
			w := newBlockWriter()
			tt.write(w)
			if _, err := p.nc.Write(w.buf.Bytes()); err != nil {
				t.Fatal(err)
			}
			if tt.rst != 0 {
				if f := p.waitFor("RST_STREAM", isRST(tt.rst)).(*http2.RSTStreamFrame); f.ErrCode != http2.ErrCodeProtocol {
					t.Fatalf("RST_STREAM %v, want PROTOCOL_ERROR", f.ErrCode)
				}
			}
			if tt.ok != 0 {
				if f := p.waitFor("response", isHeaders(tt.ok)).(*http2.MetaHeadersFrame); f.PseudoValue("status") != "200" {
					t.Fatalf(":status %q, want 200", f.PseudoValue("status"))
				}
			}
			if tt.goAway != 0 {
				f := p.waitFor("GOAWAY", func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok }).(*http2.GoAwayFrame)
				if f.ErrCode != tt.goAway {
					t.Fatalf("GOAWAY %v (%s), want %v", f.ErrCode, f.DebugData(), tt.goAway)
				}
			}
			if got := st.RxMessagingError.Value(); got != tt.messaging {
				t.Fatalf("rx_messaging_error = %d, want %d", got, tt.messaging)
			}
		})
	}
}

// TestResponseHeaderErrorsOnClientConn: a malformed response block resets
// only its stream, and the connection's decoder stays in sync for the
// next response.
func TestResponseHeaderErrorsOnClientConn(t *testing.T) {
	checkLeaks(t)
	addr := rawServer(t, func(p *rawPeer) {
		_ = p.fr.WriteSettings()
		p.waitFor("HEADERS 1", isHeaders(1))
		p.headers(1, true, ":status", "200", "X-Upper", "1", "x-shared", "indexed")
		p.waitFor("HEADERS 3", isHeaders(3))
		p.headers(3, true, ":status", "200", "x-shared", "indexed")
		for {
			if _, err := p.fr.ReadFrame(); err != nil {
				return
			}
		}
	})
	cc := dialClient(t, addr, nil)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	_, _, _, err := roundTrip(ctx, cc, newReq("/1"), nil, header.Header{})
	if se := asStreamError(t, err); se.Code != stream.ErrCodeProtocol {
		t.Fatalf("first response: %v, want PROTOCOL_ERROR", err)
	}
	resp, _, _, err := roundTrip(ctx, cc, newReq("/3"), nil, header.Header{})
	if err != nil {
		t.Fatalf("second response: %v", err)
	}
	if got := resp.Header.Get("x-shared"); resp.Status != 200 || got != "indexed" {
		t.Fatalf("second response %d, x-shared %q", resp.Status, got)
	}
}

// FuzzHeaderReader feeds arbitrary frames to the header reader the way a
// connection's reader does. It must not panic, every block it returns must
// hold its pseudo-header fields first, only valid fields, and no more than
// the header list limit, and it must agree with x/net/http2's
// ReadMetaHeaders (the reader it replaces) on the same wire: block by
// block, the same fields, the same truncation and the same stream errors,
// up to the first connection error (see diffHeaderBlocks).
func FuzzHeaderReader(f *testing.F) {
	seeds := []func(w *blockWriter){
		func(w *blockWriter) {
			w.headers(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: w.block(getKV...)})
			w.headers(http2.HeadersFrameParam{StreamID: 3, EndHeaders: true, BlockFragment: w.block(getKV...)})
		},
		func(w *blockWriter) {
			b := w.block(append(getKV, "x-long", strings.Repeat("v", 100))...)
			w.headers(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:9], PadLength: 2, Priority: http2.PriorityParam{StreamDep: 3}})
			w.cont(1, true, b[9:])
		},
		func(w *blockWriter) {
			w.headers(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: w.block(":status", "200", "grpc-status", "0")})
		},
	}
	for _, seed := range seeds {
		w := newBlockWriter()
		seed(w)
		f.Add(w.buf.Bytes())
	}
	const maxList = 1024
	f.Fuzz(func(t *testing.T, wire []byte) {
		var r headerReader
		r.init(maxList)
		src := bytes.NewReader(wire)
		fr := http2.NewFramer(io.Discard, src)
		var got []blockOutcome
		stop := ""
		for stop == "" {
			fh, err := fr.ReadFrameHeader()
			if err != nil {
				stop = "framer: " + err.Error()
				break
			}
			if fh.Type != http2.FrameHeaders && fh.Type != http2.FrameContinuation {
				if _, err := fr.ReadFrameForHeader(fh); err != nil {
					stop = "framer: " + err.Error()
				}
				continue
			}
			blk, err := r.readFrame(fh, src)
			var se http2.StreamError
			if errors.As(err, &se) {
				got = append(got, blockOutcome{stream: se.StreamID, streamErr: true})
				continue // the stream is reset; the connection goes on
			}
			if err != nil {
				stop = "reader: " + err.Error()
				break
			}
			if blk == nil {
				continue
			}
			size := uint32(0)
			for i, hf := range blk.Fields {
				if pseudo := strings.HasPrefix(hf.Name, ":"); pseudo != (i < blk.npseudo) {
					t.Fatalf("field %d %q on the wrong side of %d pseudo-header fields", i, hf.Name, blk.npseudo)
				}
				if i >= blk.npseudo && !header.ValidName(hf.Name) {
					t.Fatalf("invalid name %q returned", hf.Name)
				}
				size += hf.Size()
			}
			if size > maxList {
				t.Fatalf("block of %d bytes, limit %d", size, maxList)
			}
			got = append(got, blockOutcome{stream: blk.StreamID, fields: slices.Clone(blk.Fields), truncated: blk.Truncated})
			r.release()
		}
		diffHeaderBlocks(t, wire, maxList, got, stop)
	})
}

// blockOutcome is what a header reader made of one header block.
type blockOutcome struct {
	stream    uint32
	fields    []hpack.HeaderField
	truncated bool
	streamErr bool // the block was malformed and its stream is reset
}

// diffHeaderBlocks reads wire with x/net/http2's Framer and
// ReadMetaHeaders, limited to maxList as headerReader was, and fails t
// unless its outcomes match got, those of headerReader, which stopped for
// the reason stop. Where headerReader ended the connection first, the
// blocks before agree (its stricter rules, such as the frame count per
// block, end a connection that x/net would keep); where x/net ended it
// first, headerReader must have too.
func diffHeaderBlocks(t *testing.T, wire []byte, maxList uint32, got []blockOutcome, stop string) {
	t.Helper()
	fr := http2.NewFramer(io.Discard, bytes.NewReader(wire))
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.MaxHeaderListSize = maxList
	var want []blockOutcome
	wantStop := ""
	for wantStop == "" && len(want) <= len(got) {
		f, err := fr.ReadFrame()
		var se http2.StreamError
		switch {
		case errors.As(err, &se):
			want = append(want, blockOutcome{stream: se.StreamID, streamErr: true})
		case err != nil:
			wantStop = err.Error()
		default:
			if mh, ok := f.(*http2.MetaHeadersFrame); ok {
				want = append(want, blockOutcome{stream: mh.StreamID, fields: slices.Clone(mh.Fields), truncated: mh.Truncated})
			}
		}
	}
	n := min(len(got), len(want))
	for i := range n {
		g, w := got[i], want[i]
		if g.stream != w.stream || g.streamErr != w.streamErr || g.truncated != w.truncated || !slices.Equal(g.fields, w.fields) {
			t.Fatalf("block %d: headerReader %+v, ReadMetaHeaders %+v", i, g, w)
		}
	}
	if len(got) > len(want) {
		t.Fatalf("headerReader returned %d blocks, ReadMetaHeaders %d and stopped: %s", len(got), len(want), wantStop)
	}
	if len(want) > len(got) && !strings.HasPrefix(stop, "reader: ") {
		t.Fatalf("ReadMetaHeaders returned %d blocks, headerReader %d and stopped: %s", len(want), len(got), stop)
	}
}
