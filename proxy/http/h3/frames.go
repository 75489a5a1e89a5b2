package h3

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"

	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
	"golang.org/x/net/http/httpguts"

	"meshd.dev/meshd/proxy/http/header"
)

// HTTP/3 frame types (RFC 9114 section 7.2) and unidirectional stream
// types (section 6.2) the client reads or writes itself.
const (
	frameData        = 0x0
	frameHeaders     = 0x1
	frameCancelPush  = 0x3
	frameSettings    = 0x4
	framePushPromise = 0x5
	frameGoAway      = 0x7
	frameMaxPushID   = 0xd

	streamControl      = 0x0
	streamPush         = 0x1
	streamQPACKEncoder = 0x2
	streamQPACKDecoder = 0x3

	// settingMaxFieldSectionSize is SETTINGS_MAX_FIELD_SECTION_SIZE
	// (section 7.2.4.1).
	settingMaxFieldSectionSize = 0x6
)

// maxControlFrame bounds the payload of a frame on the peer's control
// stream that the client reads (SETTINGS, GOAWAY); others are skipped.
const maxControlFrame = 16 << 10

// h3Error is an HTTP/3 error the client detected in what the peer sent:
// the stream or connection is closed with code.
type h3Error struct {
	code   http3.ErrCode
	reason string
}

func (e *h3Error) Error() string { return fmt.Sprintf("HTTP/3 %s: %s", e.code, e.reason) }

// appendFrameHeader appends an HTTP/3 frame's type and length.
func appendFrameHeader(b []byte, typ, length uint64) []byte {
	return quicvarint.Append(quicvarint.Append(b, typ), length)
}

// readFrameHeader reads the type and length of the next frame; io.EOF
// when the stream ended cleanly between frames.
func readFrameHeader(r *bufio.Reader) (typ, length uint64, err error) {
	typ, err = quicvarint.Read(r)
	if err != nil {
		return 0, 0, err
	}
	length, err = quicvarint.Read(r)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return typ, length, err
}

// maxHeld bounds what a stream holding its writes (stream.Flusher)
// buffers: a write that takes the buffer past it goes out at once.
const maxHeld = 16 << 10

// sendBuf is the frame buffer of a stream's send side, from sendBufs:
// frames are appended to b and written out in one QUIC stream Write.
type sendBuf struct{ b []byte }

// sendBufs holds *sendBuf, so a stream assembling its frames allocates
// nothing. A buffer that grew past maxPooledSendBuf is left to the GC.
var sendBufs = sync.Pool{New: func() any { return &sendBuf{b: make([]byte, 0, 1024)} }}

const maxPooledSendBuf = 64 << 10

// getSendBuf returns an empty buffer from sendBufs.
func getSendBuf() *sendBuf {
	sb := sendBufs.Get().(*sendBuf)
	sb.b = sb.b[:0]
	return sb
}

// putSendBuf gives sb back to sendBufs (nil is ignored); sb must not be
// used afterwards.
func putSendBuf(sb *sendBuf) {
	if sb == nil || cap(sb.b) > maxPooledSendBuf {
		return
	}
	sendBufs.Put(sb)
}

// streamReaderSize is the buffer of a request stream's reader: a request
// or response head and a small body in one quic-go Read.
const streamReaderSize = 1024

// streamReaders holds the *bufio.Readers of request streams. A stream
// takes one when it opens and gives it back when its reading side reads
// the end of the message (bodyReader), the last use.
var streamReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, streamReaderSize) }}

// getStreamReader returns a pooled reader of r.
func getStreamReader(r io.Reader) *bufio.Reader {
	br := streamReaders.Get().(*bufio.Reader)
	br.Reset(r)
	return br
}

// decodedFields is a decoded response header section: the status (0 in
// trailers) and the regular fields.
type decodedFields struct {
	status        int
	header        header.Header
	contentLength int64
}

// decodeFields decodes a QPACK header block of a response (trailers
// false) or its trailers. Field names must be lower-case tokens, values
// free of NUL, CR and LF (RFC 9114 section 4.1.2), and pseudo-fields come
// first (section 4.3); a malformed section is
// H3_MESSAGE_ERROR, an undecodable one H3_QPACK_DECOMPRESSION_FAILED.
func decodeFields(block []byte, trailers bool) (decodedFields, error) {
	out := decodedFields{header: header.Make(8), contentLength: -1}
	var sr sectionReader
	if err := sr.init(block); err != nil {
		return out, err
	}
	regular := false
	for {
		f, ok, err := sr.next()
		if err != nil {
			return out, err
		}
		if !ok {
			break
		}
		if len(f.Name) == 0 {
			return out, &h3Error{http3.ErrCodeMessageError, "empty field name"}
		}
		if f.Name[0] == ':' {
			if regular || trailers || f.Name != ":status" || out.status != 0 {
				return out, &h3Error{http3.ErrCodeMessageError, fmt.Sprintf("unexpected pseudo-header %q", f.Name)}
			}
			s, err := strconv.Atoi(f.Value)
			if err != nil || s < 100 || s > 999 {
				return out, &h3Error{http3.ErrCodeMessageError, fmt.Sprintf("invalid :status %q", f.Value)}
			}
			out.status = s
			continue
		}
		regular = true
		for i := 0; i < len(f.Name); i++ {
			if c := f.Name[i]; c >= 'A' && c <= 'Z' {
				return out, &h3Error{http3.ErrCodeMessageError, fmt.Sprintf("upper-case field name %q", f.Name)}
			}
		}
		if !httpguts.ValidHeaderFieldName(f.Name) {
			return out, &h3Error{http3.ErrCodeMessageError, fmt.Sprintf("invalid field name %q", f.Name)}
		}
		if !httpguts.ValidHeaderFieldValue(f.Value) {
			// The value is not quoted: it may be sensitive.
			return out, &h3Error{http3.ErrCodeMessageError, fmt.Sprintf("invalid value of field %q", f.Name)}
		}
		if header.IsConnectionSpecific(f.Name) {
			return out, &h3Error{http3.ErrCodeMessageError, fmt.Sprintf("connection-specific field %q", f.Name)}
		}
		if f.Name == "content-length" && !trailers {
			n, ok := header.ParseContentLength(f.Value)
			if !ok || (out.contentLength >= 0 && n != out.contentLength) {
				return out, &h3Error{http3.ErrCodeMessageError, fmt.Sprintf("invalid content-length %q", f.Value)}
			}
			out.contentLength = n
		}
		out.header.Add(f.Name, f.Value)
	}
	if !trailers && out.status == 0 {
		return out, &h3Error{http3.ErrCodeMessageError, "response without :status"}
	}
	return out, nil
}

// peekBlock returns the next length bytes of r (a header section, at
// most limit bytes) without consuming them when they fit in r's buffer
// (peeked true: the caller discards them once decoded, before reading r
// again), else read into a new slice.
func peekBlock(r *bufio.Reader, length uint64, limit int) (p []byte, peeked bool, err error) {
	if length > uint64(limit) || length > uint64(r.Size()) {
		p, err = readBlock(r, length, limit)
		return p, false, err
	}
	p, err = r.Peek(int(length))
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, false, err
	}
	return p, true, nil
}

// readBlock reads a frame payload of length bytes, at most limit.
func readBlock(r *bufio.Reader, length uint64, limit int) ([]byte, error) {
	if length > uint64(limit) {
		return nil, &h3Error{http3.ErrCodeExcessiveLoad, fmt.Sprintf("header section of %d bytes exceeds the limit of %d", length, limit)}
	}
	b := make([]byte, length)
	if _, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return b, nil
}

// skip discards n bytes of r.
func skip(r *bufio.Reader, n uint64) error {
	for n > 0 {
		k, err := r.Discard(int(min(n, 1<<20)))
		n -= uint64(k)
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// bodyReader reads what follows a message's HEADERS on a request stream
// (RFC 9114 section 4.1): DATA payloads, optional trailers, then the end
// of the stream. The client reads responses and the server reads requests
// with it. Errors come back as found (*h3Error for protocol errors, I/O
// errors otherwise) for the stream to map onto its own reset or close.
// Once it read the end, r (from streamReaders) goes back to the pool and
// every later read returns io.EOF without it.
type bodyReader struct {
	r         *bufio.Reader
	src       finReader // what r reads from: the QUIC stream
	limit     int       // most bytes of a trailer section
	remaining uint64    // payload bytes left in the current DATA frame
	bodyLeft  int64     // declared content-length not yet received; -1: none
	trailers  header.Header
	eof       bool
}

// finReader is what a request stream's pooled reader reads from: the
// QUIC stream, with a record of its end. quic-go returns the stream's last
// bytes together with io.EOF, so once fin is set the reader's buffer holds
// everything the peer will send on the stream.
type finReader struct {
	r   io.Reader
	fin bool
}

func (f *finReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		f.fin = true
	}
	return n, err
}

// init points b at qs through a pooled reader.
func (b *bodyReader) init(qs io.Reader, limit int, bodyLeft int64) {
	b.src.r = qs
	b.r = getStreamReader(&b.src)
	b.limit, b.bodyLeft = limit, bodyLeft
}

// finished reports whether the reader holds nothing and the stream's FIN
// was read: the message ends here.
func (b *bodyReader) finished() bool { return b.src.fin && b.r.Buffered() == 0 }

// bufferedBody reports how many body bytes (DATA payloads) the reader
// holds and whether they are the rest of the message: the stream's FIN was
// read, and what is buffered is whole DATA frames matching the declared
// content-length, unknown frames, and at most one trailer section (within
// limit) at the very end. complete is false whenever read could find an
// error in what is buffered, so read is left to report it. It reads
// nothing.
func (b *bodyReader) bufferedBody() (n int, complete bool) {
	if b.eof {
		return 0, true
	}
	buf, _ := b.r.Peek(b.r.Buffered())
	if b.remaining > uint64(len(buf)) {
		return len(buf), false
	}
	n = int(b.remaining)
	buf = buf[b.remaining:]
	var data uint64 // payload of the frames after the current one
	for len(buf) > 0 {
		typ, k, err := quicvarint.Parse(buf)
		if err != nil {
			return n, false
		}
		buf = buf[k:]
		length, k, err := quicvarint.Parse(buf)
		if err != nil || length > uint64(len(buf)-k) {
			return n, false
		}
		buf = buf[k:]
		switch typ {
		case frameData:
			data += length
			n += int(length)
		case frameHeaders:
			if length != uint64(len(buf)) || length > uint64(b.limit) {
				return n, false
			}
		case frameSettings, frameGoAway, framePushPromise, frameMaxPushID, frameCancelPush:
			return n, false
		}
		buf = buf[length:]
	}
	if b.bodyLeft >= 0 && data != uint64(b.bodyLeft) {
		return n, false
	}
	return n, b.src.fin
}

// ended marks the end of the message and gives r back: nothing reads it
// after the end.
func (b *bodyReader) ended() {
	b.eof = true
	b.r.Reset(nil)
	streamReaders.Put(b.r)
	b.r = nil
	b.src.r = nil
}

// read reads body bytes into p; io.EOF at the end of the stream, after
// which trailers is valid. A body that does not match its content-length
// is H3_MESSAGE_ERROR; a frame that may not follow HEADERS, or a stream
// that ends inside a frame, is a connection error.
func (b *bodyReader) read(p []byte) (int, error) {
	if b.eof {
		return 0, io.EOF
	}
	for b.remaining == 0 {
		typ, length, err := readFrameHeader(b.r)
		if err == io.EOF {
			if b.bodyLeft > 0 {
				return 0, &h3Error{http3.ErrCodeMessageError, "body shorter than its content-length"}
			}
			b.ended()
			return 0, io.EOF
		}
		if err != nil {
			return 0, err
		}
		switch typ {
		case frameData:
			if b.bodyLeft >= 0 {
				if length > uint64(b.bodyLeft) {
					return 0, &h3Error{http3.ErrCodeMessageError, "body longer than its content-length"}
				}
				b.bodyLeft -= int64(length)
			}
			b.remaining = length
		case frameHeaders:
			if b.bodyLeft > 0 {
				return 0, &h3Error{http3.ErrCodeMessageError, "body shorter than its content-length"}
			}
			block, peeked, err := peekBlock(b.r, length, b.limit)
			if err != nil {
				return 0, err
			}
			f, err := decodeFields(block, true)
			if peeked {
				_, _ = b.r.Discard(len(block))
			}
			if err != nil {
				return 0, err
			}
			// Nothing may follow the trailers (section 4.1).
			if _, _, err := readFrameHeader(b.r); err != io.EOF {
				if err == nil {
					err = &h3Error{http3.ErrCodeFrameUnexpected, "frame after the trailers"}
				}
				return 0, err
			}
			b.trailers = f.header
			b.ended()
			return 0, io.EOF
		case frameSettings, frameGoAway, framePushPromise, frameMaxPushID, frameCancelPush:
			return 0, &h3Error{http3.ErrCodeFrameUnexpected, fmt.Sprintf("frame type %#x on a request stream", typ)}
		default:
			if err := skip(b.r, length); err != nil {
				return 0, err
			}
		}
		if len(p) == 0 {
			return 0, nil
		}
	}
	if len(p) == 0 {
		return 0, nil
	}
	n, err := b.r.Read(p[:min(uint64(len(p)), b.remaining)])
	b.remaining -= uint64(n)
	if err == io.EOF && b.remaining == 0 {
		// quic-go returns the stream's last bytes with io.EOF; the next
		// read sees the end between frames.
		err = nil
	}
	if err == io.EOF {
		err = &h3Error{http3.ErrCodeFrameError, "stream ended inside a DATA frame"}
	}
	return n, err
}
