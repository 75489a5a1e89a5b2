package model

import (
	"strings"
	"testing"
)

func TestAccessLogSpec(t *testing.T) {
	for _, tc := range []struct {
		name, spec string
		want       *AccessLogSpec
		wantErr    string
	}{
		{name: "none", spec: "{}"},
		{name: "defaults to stdout", spec: "{accessLog: {}}", want: &AccessLogSpec{Path: "/dev/stdout"}},
		{name: "text format gets its newline", spec: `{accessLog: {path: /var/log/a.log, format: "%RESPONSE_CODE% %DURATION%"}}`,
			want: &AccessLogSpec{Path: "/var/log/a.log", Format: "%RESPONSE_CODE% %DURATION%\n"}},
		{name: "json", spec: `{accessLog: {json: {code: "%RESPONSE_CODE%"}}}`,
			want: &AccessLogSpec{Path: "/dev/stdout", JSON: map[string]string{"code": "%RESPONSE_CODE%"}}},
		{name: "relative path", spec: "{accessLog: {path: logs/a.log}}", wantErr: `spec.accessLog.path: "logs/a.log" is not an absolute path`},
		{name: "format and json", spec: `{accessLog: {format: "%PROTOCOL%", json: {p: "%PROTOCOL%"}}}`, wantErr: "spec.accessLog: format and json are exclusive"},
		{name: "unbalanced", spec: `{accessLog: {format: "%RESPONSE_CODE"}}`, wantErr: "spec.accessLog.format: unbalanced '%'"},
		{name: "json value not a string", spec: `{accessLog: {json: {code: 1}}}`, wantErr: "spec.accessLog.json.code: expected a string"},
		{name: "unknown field", spec: `{accessLog: {file: /x}}`, wantErr: "spec.accessLog.file: unknown field"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Parse([]byte(header+"kind: Mesh\nmetadata: {name: m}\nspec: "+tc.spec+"\n"), "f.yaml")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := m.Spec.AccessLog
			if (got == nil) != (tc.want == nil) {
				t.Fatalf("accessLog %+v, want %+v", got, tc.want)
			}
			if got != nil && (got.Path != tc.want.Path || got.Format != tc.want.Format || len(got.JSON) != len(tc.want.JSON)) {
				t.Errorf("accessLog %+v, want %+v", got, tc.want)
			}
		})
	}
}
