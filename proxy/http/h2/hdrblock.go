package h2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"meshd.dev/meshd/proxy/http/header"
)

// maxHeaderBlockFrames bounds the frames one header block may span: a
// HEADERS frame and up to 15 CONTINUATIONs. A peer that splits a block
// into more (CVE-2024-27316: an endless run of small or empty
// CONTINUATION frames never exceeds the byte budget) gets GOAWAY
// ENHANCE_YOUR_CALM. nghttp2, Envoy's codec, allows 8 CONTINUATIONs;
// senders split at SETTINGS_MAX_FRAME_SIZE, so even a 60 KiB block
// needs only 4.
const maxHeaderBlockFrames = 16

// maxRetainedFields is the field-slice capacity a connection keeps
// between header blocks; a larger block's slice is dropped after use.
const maxRetainedFields = 64

// headerBlock is one decoded header block: a HEADERS frame and its
// CONTINUATIONs. It is owned by the connection's reader and valid only
// until the handler it is passed to returns: Fields is reused for the
// next block (the strings it holds are not, and may be kept).
type headerBlock struct {
	StreamID  uint32
	EndStream bool // END_STREAM was set on the HEADERS frame
	// HasPriority reports the HEADERS frame's PRIORITY flag; StreamDep is
	// the stream it named as its dependency.
	HasPriority bool
	StreamDep   uint32
	// Truncated is set when the decoded list passed the advertised
	// SETTINGS_MAX_HEADER_LIST_SIZE; Fields then holds the fields before
	// the one that passed it.
	Truncated bool
	// Fields are the decoded fields, pseudo-header fields first.
	Fields  []hpack.HeaderField
	npseudo int
}

// PseudoFields returns the block's pseudo-header fields.
func (b *headerBlock) PseudoFields() []hpack.HeaderField { return b.Fields[:b.npseudo] }

// RegularFields returns the block's fields that are not pseudo-headers.
func (b *headerBlock) RegularFields() []hpack.HeaderField { return b.Fields[b.npseudo:] }

// headerReader decodes header blocks for one connection with the
// connection's HPACK decoder, in place of the Framer's ReadMetaHeaders:
// the frame header comes from the Framer (which checks the frame size and
// that CONTINUATIONs follow their HEADERS with nothing interleaved), the
// payload is read into a pooled buffer, and the decoder's emit function
// appends into a field slice the connection reuses. A steady stream of
// requests thus allocates only the literal values the decoder returns.
// It enforces the rules ReadMetaHeaders did, with the same error codes.
// Reader goroutine only.
type headerReader struct {
	dec     *hpack.Decoder
	maxList uint32 // SETTINGS_MAX_HEADER_LIST_SIZE we advertised
	blk     headerBlock

	// The block being read.
	open       bool   // a HEADERS frame came without END_HEADERS; its CONTINUATIONs are due
	frames     int    // frames of this block so far
	remain     uint32 // header list bytes (name+value+32 per field) left
	sawRegular bool
	invalid    error // first invalid field; the stream is reset at END_HEADERS
}

// init prepares r for a connection that advertised maxList.
func (r *headerReader) init(maxList uint32) {
	r.maxList = maxList
	r.dec = hpack.NewDecoder(4096, r.emit)
	r.dec.SetMaxStringLength(int(min(maxList, 1<<30)))
}

// readFrame consumes the payload of the HEADERS or CONTINUATION frame
// whose header fh the Framer just read from src. It returns the block once
// its END_HEADERS frame is in, nil before. Errors are connection errors
// (connError), an http2.StreamError for a malformed block that the
// decoder consumed whole, or src's read error.
func (r *headerReader) readFrame(fh http2.FrameHeader, src io.Reader) (*headerBlock, error) {
	if fh.StreamID == 0 {
		return nil, connErr(http2.ErrCodeProtocol, fh.Type.String()+" frame with stream ID 0")
	}
	var buf *[]byte
	var payload []byte
	if fh.Length <= chunkSize {
		buf = chunkPool.Get().(*[]byte)
		payload = (*buf)[:fh.Length]
		defer chunkPool.Put(buf)
	} else {
		payload = make([]byte, fh.Length)
	}
	if _, err := io.ReadFull(src, payload); err != nil {
		return nil, err
	}
	frag := payload
	if fh.Type == http2.FrameHeaders {
		var err error
		if frag, err = r.start(fh, payload); err != nil {
			return nil, err
		}
	}
	r.frames++
	if r.frames > maxHeaderBlockFrames {
		return nil, connErr(http2.ErrCodeEnhanceYourCalm,
			fmt.Sprintf("header block spans more than %d frames", maxHeaderBlockFrames))
	}
	// Like the Framer: a fragment more than twice the bytes still allowed
	// would be decoded only to be dropped, and after an invalid field the
	// list is no longer counted, so either ends the connection.
	if int64(len(frag)) > 2*int64(r.remain) {
		return nil, connErr(http2.ErrCodeProtocol, "header list larger than SETTINGS_MAX_HEADER_LIST_SIZE")
	}
	if r.invalid != nil {
		return nil, connErr(http2.ErrCodeProtocol, "CONTINUATION after an invalid header field: "+r.invalid.Error())
	}
	if _, err := r.dec.Write(frag); err != nil {
		return nil, connErr(http2.ErrCodeCompression, "HPACK: "+err.Error())
	}
	if r.open = !fh.Flags.Has(http2.FlagHeadersEndHeaders); r.open {
		return nil, nil
	}
	if err := r.dec.Close(); err != nil {
		return nil, connErr(http2.ErrCodeCompression, "HPACK: "+err.Error())
	}
	if r.invalid != nil {
		return nil, http2.StreamError{StreamID: r.blk.StreamID, Code: http2.ErrCodeProtocol, Cause: r.invalid}
	}
	if err := r.blk.checkPseudos(); err != nil {
		return nil, http2.StreamError{StreamID: r.blk.StreamID, Code: http2.ErrCodeProtocol, Cause: err}
	}
	return &r.blk, nil
}

// start resets the block state for the HEADERS frame fh and returns its
// header block fragment, without the padding and priority fields
// (RFC 9113 section 6.2).
func (r *headerReader) start(fh http2.FrameHeader, p []byte) ([]byte, error) {
	b := &r.blk
	*b = headerBlock{StreamID: fh.StreamID, EndStream: fh.Flags.Has(http2.FlagHeadersEndStream), Fields: b.Fields[:0]}
	r.frames, r.remain, r.sawRegular, r.invalid = 0, r.maxList, false, nil
	r.dec.SetEmitEnabled(true)
	var pad int
	if fh.Flags.Has(http2.FlagHeadersPadded) {
		if len(p) < 1 {
			return nil, connErr(http2.ErrCodeFrameSize, "HEADERS frame too short for its Pad Length")
		}
		pad, p = int(p[0]), p[1:]
	}
	if fh.Flags.Has(http2.FlagHeadersPriority) {
		if len(p) < 5 {
			return nil, connErr(http2.ErrCodeFrameSize, "HEADERS frame too short for its priority fields")
		}
		b.HasPriority = true
		b.StreamDep = binary.BigEndian.Uint32(p) & 0x7fffffff
		p = p[5:]
	}
	if pad > len(p) {
		return nil, connErr(http2.ErrCodeProtocol, "HEADERS padding longer than the frame payload")
	}
	return p[:len(p)-pad], nil
}

// release drops a field slice grown by an unusually large block, once its
// handler has returned.
func (r *headerReader) release() {
	if cap(r.blk.Fields) > maxRetainedFields {
		r.blk.Fields = nil
	}
}

// emit is the decoder's emit function: it validates each field as
// RFC 9113 section 8.2 requires and counts it against the header list
// limit (name, value and 32 bytes per field, section 6.5.2).
func (r *headerReader) emit(hf hpack.HeaderField) {
	if !httpguts.ValidHeaderFieldValue(hf.Value) {
		// The value is not quoted: it may be sensitive.
		r.invalid = fmt.Errorf("invalid value for header field %q", hf.Name)
	}
	if strings.HasPrefix(hf.Name, ":") {
		if r.sawRegular {
			r.invalid = errPseudoAfterRegular
		}
	} else {
		r.sawRegular = true
		if !header.ValidName(hf.Name) {
			r.invalid = fmt.Errorf("invalid header field name %q", hf.Name)
		}
	}
	if r.invalid != nil {
		r.dec.SetEmitEnabled(false)
		return
	}
	if size := hf.Size(); size <= r.remain {
		r.remain -= size
	} else {
		r.dec.SetEmitEnabled(false)
		r.blk.Truncated = true
		r.remain = 0
		return
	}
	r.blk.Fields = append(r.blk.Fields, hf)
	if !r.sawRegular {
		r.blk.npseudo++
	}
}

var (
	errPseudoAfterRegular = errors.New("pseudo-header field after a regular field")
	errMixedPseudo        = errors.New("request and response pseudo-header fields in one block")
)

// checkPseudos rejects unknown and repeated pseudo-header fields and a mix
// of request and response ones (RFC 9113 section 8.3).
func (b *headerBlock) checkPseudos() error {
	var isRequest, isResponse bool
	pf := b.PseudoFields()
	for i, hf := range pf {
		switch hf.Name {
		case ":method", ":path", ":scheme", ":authority", ":protocol":
			isRequest = true
		case ":status":
			isResponse = true
		default:
			return fmt.Errorf("invalid pseudo-header field %q", hf.Name)
		}
		for _, prev := range pf[:i] {
			if hf.Name == prev.Name {
				return fmt.Errorf("duplicate pseudo-header field %q", hf.Name)
			}
		}
	}
	if isRequest && isResponse {
		return errMixedPseudo
	}
	return nil
}
