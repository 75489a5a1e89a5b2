package accesslog

import (
	"fmt"
	"strconv"
	"time"
)

// strftime is a compiled %START_TIME(...)% format: Go time layout chunks
// and the specifiers Go layouts cannot express.
type strftime []strftimePart

type strftimePart struct {
	layout string // a Go layout (literal text is escaped into it); "" if fn
	fn     func(dst []byte, t time.Time) []byte
}

func (f strftime) append(dst []byte, t time.Time) []byte {
	for _, p := range f {
		if p.fn != nil {
			dst = p.fn(dst, t)
			continue
		}
		dst = t.AppendFormat(dst, p.layout)
	}
	return dst
}

// strftimeLayouts maps the strftime specifiers Go layouts express.
var strftimeLayouts = map[byte]string{
	'Y': "2006", 'y': "06", 'm': "01", 'd': "02", 'e': "_2", 'H': "15", 'I': "03",
	'M': "04", 'S': "05", 'p': "PM", 'a': "Mon", 'A': "Monday", 'b': "Jan", 'h': "Jan",
	'B': "January", 'j': "002", 'z': "-0700", 'Z': "MST", 'T': "15:04:05",
	'F': "2006-01-02", 'D': "01/02/06", 'R': "15:04",
}

// compileStrftime compiles the strftime subset Envoy's START_TIME takes:
// the specifiers above, %s (Unix seconds), %f and %1f..%9f (fractional
// seconds, 9 digits for %f), %% and literal text.
func compileStrftime(format string) (strftime, error) {
	var out strftime
	var layout []byte
	flush := func() {
		if len(layout) > 0 {
			out = append(out, strftimePart{layout: string(layout)})
			layout = layout[:0]
		}
	}
	for i := 0; i < len(format); i++ {
		c := format[i]
		if c != '%' {
			// Literal text cannot be escaped in a Go layout; emit it
			// through a function when it contains layout tokens.
			if isLayoutByte(c) {
				flush()
				lit := string(c)
				out = append(out, strftimePart{fn: func(dst []byte, _ time.Time) []byte { return append(dst, lit...) }})
				continue
			}
			layout = append(layout, c)
			continue
		}
		if i+1 >= len(format) {
			return nil, fmt.Errorf("strftime format %q ends with '%%'", format)
		}
		i++
		c = format[i]
		switch {
		case c == '%':
			layout = append(layout, '%')
		case c == 's':
			flush()
			out = append(out, strftimePart{fn: func(dst []byte, t time.Time) []byte { return strconv.AppendInt(dst, t.Unix(), 10) }})
		case c == 'f' || c >= '1' && c <= '9' && i+1 < len(format) && format[i+1] == 'f':
			digits := 9
			if c != 'f' {
				digits = int(c - '0')
				i++
			}
			flush()
			out = append(out, strftimePart{fn: func(dst []byte, t time.Time) []byte { return appendFraction(dst, t, digits) }})
		default:
			l, ok := strftimeLayouts[c]
			if !ok {
				return nil, fmt.Errorf("strftime format %q: unsupported specifier %%%c", format, c)
			}
			layout = append(layout, l...)
		}
	}
	flush()
	return out, nil
}

// isLayoutByte reports whether c may start a Go layout token.
func isLayoutByte(c byte) bool {
	switch c {
	case '0', '1', '2', '3', '4', '5', '6', '7', '9', 'J', 'M', 'P', 'Z', 'm', 'p', '_', '-', '.', ',':
		return true
	}
	return false
}

func appendFraction(dst []byte, t time.Time, digits int) []byte {
	ns := t.Nanosecond()
	var b [9]byte
	for k := 8; k >= 0; k-- {
		b[k] = byte('0' + ns%10)
		ns /= 10
	}
	return append(dst, b[:digits]...)
}
