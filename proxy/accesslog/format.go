package accesslog

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/structpb"
)

// DefaultFormat is Envoy's default access-log format, used when a logger
// configures none.
const DefaultFormat = `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" ` +
	`%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% ` +
	`%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" ` +
	`"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"` + "\n"

// kind is what an operator produced.
type kind uint8

const (
	missing kind = iota // no value: "-" in text, null in JSON
	str                 // a string
	num                 // a number (text digits, unquoted in JSON)
)

// operator appends its raw value for i to dst.
type operator func(dst []byte, i *Info) ([]byte, kind)

// command is one compiled %OPERATOR(arg):max%.
type command struct {
	op     operator
	maxLen int // 0: no limit
}

// eval appends the command's value and reports its kind, applying maxLen
// to strings (Envoy truncates bytes).
func (c *command) eval(dst []byte, i *Info) ([]byte, kind) {
	start := len(dst)
	dst, k := c.op(dst, i)
	if k == str && c.maxLen > 0 && len(dst)-start > c.maxLen {
		dst = dst[:start+c.maxLen]
	}
	return dst, k
}

// piece is a literal or a command of a text template.
type piece struct {
	lit string
	cmd *command // nil for a literal
}

// template is a compiled format string.
type template []piece

// appendText renders t as text: a missing value is "-".
func (t template) appendText(dst []byte, i *Info) []byte {
	for k := range t {
		p := &t[k]
		if p.cmd == nil {
			dst = append(dst, p.lit...)
			continue
		}
		start := len(dst)
		var kd kind
		dst, kd = p.cmd.eval(dst, i)
		if kd == missing {
			dst = append(dst[:start], '-')
		}
	}
	return dst
}

// Formatter renders an Info as one access-log line. It is immutable and safe
// for concurrent use.
type Formatter struct {
	text template   // text formats
	json *jsonValue // json formats; nil for text
	// omitEmpty drops missing values from JSON and renders them as "" in
	// text (omit_empty_values).
	omitEmpty bool
}

// Append appends the line for i (with its trailing newline for JSON; text
// formats carry their own) to dst.
func (f *Formatter) Append(dst, scratch []byte, i *Info) ([]byte, []byte) {
	if f.json != nil {
		dst, scratch = f.json.append(dst, scratch, i, f.omitEmpty)
		return append(dst, '\n'), scratch
	}
	if !f.omitEmpty {
		return f.text.appendText(dst, i), scratch
	}
	for k := range f.text {
		p := &f.text[k]
		if p.cmd == nil {
			dst = append(dst, p.lit...)
			continue
		}
		start := len(dst)
		var kd kind
		if dst, kd = p.cmd.eval(dst, i); kd == missing {
			dst = dst[:start]
		}
	}
	return dst, scratch
}

// CompileText compiles an Envoy text format string. An unknown operator or
// a malformed command is an error naming it and its position.
func CompileText(format string) (*Formatter, error) {
	t, err := compileTemplate(format)
	if err != nil {
		return nil, err
	}
	return &Formatter{text: t}, nil
}

func compileTemplate(format string) (template, error) {
	var t template
	lit := strings.Builder{}
	for pos := 0; pos < len(format); {
		c := format[pos]
		if c != '%' {
			lit.WriteByte(c)
			pos++
			continue
		}
		cmd, n, err := parseCommand(format[pos:])
		if err != nil {
			return nil, fmt.Errorf("position %d: %w", pos, err)
		}
		if lit.Len() > 0 {
			t = append(t, piece{lit: lit.String()})
			lit.Reset()
		}
		t = append(t, piece{cmd: cmd})
		pos += n
	}
	if lit.Len() > 0 {
		t = append(t, piece{lit: lit.String()})
	}
	return t, nil
}

// parseCommand parses "%NAME(arg):max%" at the start of s and returns the
// number of bytes it spans. Its grammar is Envoy's:
// %[A-Z_0-9]+(\([^)]*\))?(:[0-9]+)?%.
func parseCommand(s string) (*command, int, error) {
	i := 1
	for i < len(s) && (s[i] >= 'A' && s[i] <= 'Z' || s[i] >= '0' && s[i] <= '9' || s[i] == '_') {
		i++
	}
	name := s[1:i]
	if name == "" {
		return nil, 0, fmt.Errorf("%q does not start a valid command (%%NAME%%)", truncate(s, 20))
	}
	var arg string
	hasArg := false
	if i < len(s) && s[i] == '(' {
		end := strings.IndexByte(s[i:], ')')
		if end < 0 {
			return nil, 0, fmt.Errorf("command %s: missing ')'", name)
		}
		arg, hasArg = s[i+1:i+end], true
		i += end + 1
	}
	maxLen := 0
	if i < len(s) && s[i] == ':' {
		j := i + 1
		for j < len(s) && s[j] >= '0' && s[j] <= '9' {
			j++
		}
		if j == i+1 {
			return nil, 0, fmt.Errorf("command %s: ':' must be followed by a length", name)
		}
		n, err := strconv.Atoi(s[i+1 : j])
		if err != nil || n <= 0 {
			return nil, 0, fmt.Errorf("command %s: bad length %q", name, s[i+1:j])
		}
		maxLen, i = n, j
	}
	if i >= len(s) || s[i] != '%' {
		return nil, 0, fmt.Errorf("command %s: missing closing '%%'", name)
	}
	mk, ok := operators[name]
	if !ok {
		return nil, 0, fmt.Errorf("unknown command operator %%%s%% (supported: %s)", name, strings.Join(OperatorNames(), ", "))
	}
	op, err := mk(arg, hasArg)
	if err != nil {
		return nil, 0, fmt.Errorf("%%%s%%: %w", name, err)
	}
	return &command{op: op, maxLen: maxLen}, i + 1, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// jsonValue is a compiled json_format value: an object, a literal, or a
// format string.
type jsonValue struct {
	keys   []string // object keys, sorted; their JSON encodings in keyEnc
	keyEnc []string
	vals   []*jsonValue
	// lit is a pre-encoded JSON literal (number, bool, null); "" if none.
	lit string
	// single is set when the string is one command alone: the value keeps
	// the command's type (a number stays a number, missing is null).
	single *command
	tmpl   template // a string mixing literals and commands
	isObj  bool
}

// CompileJSON compiles an Envoy json_format: string values are format
// strings (a value that is one command alone keeps its type: numbers stay
// numbers, a missing value is null), nested objects nest, numbers and
// booleans are copied. Keys are written sorted.
func CompileJSON(s *structpb.Struct) (*Formatter, error) {
	v, err := compileJSONStruct(s, "")
	if err != nil {
		return nil, err
	}
	return &Formatter{json: v}, nil
}

func compileJSONStruct(s *structpb.Struct, path string) (*jsonValue, error) {
	out := &jsonValue{isObj: true}
	keys := make([]string, 0, len(s.GetFields()))
	for k := range s.GetFields() {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		kp := k
		if path != "" {
			kp = path + "." + k
		}
		v, err := compileJSONValue(s.GetFields()[k], kp)
		if err != nil {
			return nil, err
		}
		out.keys = append(out.keys, k)
		out.keyEnc = append(out.keyEnc, string(appendJSONString(nil, k)))
		out.vals = append(out.vals, v)
	}
	return out, nil
}

func compileJSONValue(v *structpb.Value, path string) (*jsonValue, error) {
	switch k := v.GetKind().(type) {
	case *structpb.Value_StringValue:
		t, err := compileTemplate(k.StringValue)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if len(t) == 1 && t[0].cmd != nil {
			return &jsonValue{single: t[0].cmd}, nil
		}
		return &jsonValue{tmpl: t}, nil
	case *structpb.Value_StructValue:
		return compileJSONStruct(k.StructValue, path)
	case *structpb.Value_NumberValue:
		return &jsonValue{lit: strconv.FormatFloat(k.NumberValue, 'g', -1, 64)}, nil
	case *structpb.Value_BoolValue:
		return &jsonValue{lit: strconv.FormatBool(k.BoolValue)}, nil
	case *structpb.Value_NullValue:
		return &jsonValue{lit: "null"}, nil
	default:
		return nil, fmt.Errorf("%s: lists are not supported in json_format", path)
	}
}

// isMissing reports whether the value renders as null.
func (v *jsonValue) append(dst, scratch []byte, i *Info, omitEmpty bool) ([]byte, []byte) {
	if v.isObj {
		dst = append(dst, '{')
		first := true
		for k, sub := range v.vals {
			mark := len(dst)
			if !first {
				dst = append(dst, ',')
			}
			dst = append(dst, v.keyEnc[k]...)
			dst = append(dst, ':')
			var null bool
			dst, scratch, null = sub.appendValue(dst, scratch, i)
			if null && omitEmpty {
				dst = dst[:mark]
				continue
			}
			first = false
		}
		return append(dst, '}'), scratch
	}
	dst, scratch, _ = v.appendValue(dst, scratch, i)
	return dst, scratch
}

func (v *jsonValue) appendValue(dst, scratch []byte, i *Info) ([]byte, []byte, bool) {
	switch {
	case v.isObj:
		dst, scratch = v.append(dst, scratch, i, false)
		return dst, scratch, false
	case v.lit != "":
		return append(dst, v.lit...), scratch, v.lit == "null"
	case v.single != nil:
		var k kind
		scratch, k = v.single.eval(scratch[:0], i)
		switch k {
		case missing:
			return append(dst, "null"...), scratch, true
		case num:
			return append(dst, scratch...), scratch, false
		}
		return appendJSONBytes(dst, scratch), scratch, false
	default:
		scratch = v.tmpl.appendText(scratch[:0], i)
		return appendJSONBytes(dst, scratch), scratch, false
	}
}

const hexDigits = "0123456789abcdef"

func appendJSONString(dst []byte, s string) []byte { return appendJSONBytes(dst, []byte(s)) }

// appendJSONBytes appends b as a JSON string, escaping what RFC 8259
// requires and replacing invalid UTF-8 with U+FFFD.
func appendJSONBytes(dst, b []byte) []byte {
	dst = append(dst, '"')
	for k := 0; k < len(b); {
		c := b[k]
		if c < utf8.RuneSelf {
			switch {
			case c == '"', c == '\\':
				dst = append(dst, '\\', c)
			case c == '\n':
				dst = append(dst, '\\', 'n')
			case c == '\r':
				dst = append(dst, '\\', 'r')
			case c == '\t':
				dst = append(dst, '\\', 't')
			case c < 0x20:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			default:
				dst = append(dst, c)
			}
			k++
			continue
		}
		r, n := utf8.DecodeRune(b[k:])
		if r == utf8.RuneError && n == 1 {
			dst = append(dst, "\ufffd"...)
		} else {
			dst = append(dst, b[k:k+n]...)
		}
		k += n
	}
	return append(dst, '"')
}

// hostname is %HOSTNAME%, read once.
var hostname = sync.OnceValue(func() string {
	h, err := os.Hostname()
	if err != nil {
		return ""
	}
	return h
})

// appendAddr appends a as ip:port (or ip alone) without allocating for TCP
// and UDP addresses.
func appendAddr(dst []byte, a net.Addr, withPort bool) ([]byte, kind) {
	switch t := a.(type) {
	case nil:
		return dst, missing
	case *net.TCPAddr:
		return appendAddrPort(dst, t.AddrPort(), withPort), str
	case *net.UDPAddr:
		return appendAddrPort(dst, t.AddrPort(), withPort), str
	}
	s := a.String()
	if !withPort {
		if h, _, err := net.SplitHostPort(s); err == nil {
			s = h
		}
	}
	return append(dst, s...), str
}

func appendAddrPort(dst []byte, ap netip.AddrPort, withPort bool) []byte {
	a := ap.Addr().Unmap()
	if withPort {
		return netip.AddrPortFrom(a, ap.Port()).AppendTo(dst)
	}
	return a.AppendTo(dst)
}
