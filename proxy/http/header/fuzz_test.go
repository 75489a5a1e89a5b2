package header

import (
	"strings"
	"testing"

	"golang.org/x/net/http/httpguts"
)

// FuzzValid checks ValidName and ValidValue against x/net's httpguts, the
// validation net/http and x/net/http2 apply: a name is valid exactly when
// httpguts accepts it and it is lower case; a value is valid exactly when
// httpguts accepts it (no control characters but tab) and it has no leading
// or trailing whitespace.
func FuzzValid(f *testing.F) {
	for _, s := range []string{"", "content-type", "Content-Type", "x_y", "a b", ":path", "é", "v", " v", "v\t", "a\x00b", "a\r\nb", "\x7f", "ok value"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		wantName := httpguts.ValidHeaderFieldName(s) && s == strings.ToLower(s)
		if got := ValidName(s); got != wantName {
			t.Fatalf("ValidName(%q) = %v, want %v", s, got, wantName)
		}
		trimmed := strings.Trim(s, " \t") == s
		wantValue := httpguts.ValidHeaderFieldValue(s) && trimmed
		if got := ValidValue(s); got != wantValue {
			t.Fatalf("ValidValue(%q) = %v, want %v", s, got, wantValue)
		}
	})
}
