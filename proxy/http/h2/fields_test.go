package h2

import (
	"testing"

	"golang.org/x/net/http2/hpack"

	"meshd.dev/meshd/proxy/http/header"
)

// TestParseFieldsContentLength: a request's or response's content-length
// is one or more digits (RFC 9110 section 8.6), equal across repeats;
// anything else makes the message malformed rather than being forwarded
// as received.
func TestParseFieldsContentLength(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values []string
		want   int64
		reason string
	}{
		{"absent", nil, -1, ""},
		{"digits", []string{"5"}, 5, ""},
		{"repeated equal", []string{"5", "5"}, 5, ""},
		{"repeated different", []string{"5", "6"}, 0, "invalid content-length"},
		{"plus sign", []string{"+5"}, 0, "invalid content-length"},
		{"minus sign", []string{"-1"}, 0, "invalid content-length"},
		{"list", []string{"5,5"}, 0, "invalid content-length"},
		{"empty", []string{""}, 0, "invalid content-length"},
		{"overflow", []string{"9223372036854775808"}, 0, "invalid content-length"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fields := []hpack.HeaderField{{Name: "content-type", Value: "text/plain"}}
			for _, v := range tc.values {
				fields = append(fields, hpack.HeaderField{Name: "content-length", Value: v})
			}
			h := header.Make(len(fields))
			cl, reason := parseFields(&h, fields)
			if reason != tc.reason || (reason == "" && cl != tc.want) {
				t.Errorf("parseFields = %d, %q; want %d, %q", cl, reason, tc.want, tc.reason)
			}
		})
	}
}
