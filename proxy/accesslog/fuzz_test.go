package accesslog

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/structpb"

	"meshd.dev/meshd/proxy/http/header"
	"meshd.dev/meshd/proxy/http/stream"
)

// FuzzCompileFormat feeds arbitrary access-log format strings (they come
// from bootstrap and xDS) to CompileText and, as the value of a
// json_format key, to CompileJSON. Neither may panic; an error names the
// position or key; a format without '%' renders as itself; and every JSON
// line a compiled format writes, for a full and a bare request, is valid
// JSON holding the key.
func FuzzCompileFormat(f *testing.F) {
	for _, s := range []string{
		"plain text\n",
		"%START_TIME(%Y/%m/%dT%H:%M:%S%z)% %REQ(:PATH):10% %RESPONSE_CODE%\n",
		"%REQ(X-REQUEST-ID?USER-AGENT)% %DOWNSTREAM_PEER_URI_SAN% %UPSTREAM_HOST% %DURATION%",
		"%START_TIME(%s.%3f|%6f|%f)% %BYTES_RECEIVED% %RESPONSE_FLAGS% %TRACE_ID%",
		"%REQ(:METHOD)",
		"%START_TIME(%",
		"%REQ(content-type):0%",
	} {
		f.Add(s)
	}
	infos := []*Info{testInfo(), {Start: t0, Request: &stream.Request{Method: "GET", Path: "/", Header: header.Make(0)}}}
	f.Fuzz(func(t *testing.T, format string) {
		tf, err := CompileText(format)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "position ") {
				t.Fatalf("CompileText error %q does not name the position", err)
			}
		} else {
			for _, i := range infos {
				out, _ := tf.Append(nil, nil, i)
				if !strings.Contains(format, "%") && string(out) != format {
					t.Fatalf("literal format %q rendered %q", format, out)
				}
			}
		}
		if !utf8.ValidString(format) {
			return // structpb needs UTF-8 strings
		}
		s, err := structpb.NewStruct(map[string]any{"k": format, "n": map[string]any{"v": format}})
		if err != nil {
			t.Fatal(err)
		}
		jf, err := CompileJSON(s)
		if (err == nil) != (tf != nil) {
			t.Fatalf("CompileJSON error %v, CompileText error %v", err, tf == nil)
		}
		if err != nil {
			return
		}
		for _, i := range infos {
			out, _ := jf.Append(nil, nil, i)
			var m map[string]any
			if err := json.Unmarshal(out, &m); err != nil {
				t.Fatalf("format %q wrote invalid JSON %q: %v", format, out, err)
			}
			if _, ok := m["k"]; !ok {
				t.Fatalf("format %q: key k missing from %s", format, out)
			}
		}
	})
}
