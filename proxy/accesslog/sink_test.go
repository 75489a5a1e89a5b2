package accesslog

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/stats"
)

func fileLog(t *testing.T, path string, lf *corev3.SubstitutionFormatString, filter *accesslogv3.AccessLogFilter) *accesslogv3.AccessLog {
	t.Helper()
	fl := &filev3.FileAccessLog{Path: path}
	if lf != nil {
		fl.AccessLogFormat = &filev3.FileAccessLog_LogFormat{LogFormat: lf}
	}
	return &accesslogv3.AccessLog{Name: "envoy.access_loggers.file", Filter: filter, ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: mustAny(t, fl)}}
}

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func textFormat(s string) *corev3.SubstitutionFormatString {
	//lint:ignore SA1019 the sidecar honours the deprecated text_format, and these cases cover it
	return &corev3.SubstitutionFormatString{Format: &corev3.SubstitutionFormatString_TextFormat{TextFormat: s}}
}

func TestManagerWritesFlushesAndReopens(t *testing.T) {
	testutil.CheckGoroutines(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	loggers, err := Compile([]*accesslogv3.AccessLog{fileLog(t, path, textFormat("%RESPONSE_CODE% %REQ(:PATH)%\n"), nil)})
	if err != nil {
		t.Fatal(err)
	}
	m := NewManager(ManagerOptions{FlushInterval: time.Hour})
	defer m.Close()
	if err := m.Open(loggers); err != nil {
		t.Fatal(err)
	}
	i := testInfo()
	m.Log(loggers, i)
	m.Flush()
	if b, _ := os.ReadFile(path); string(b) != "200 /helloworld.Greeter/SayHello\n" {
		t.Fatalf("after flush: %q", b)
	}
	// Rotation: move the file away, reopen, and the next line goes to a new
	// file at the path.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	m.Log(loggers, i)
	m.Reopen()
	m.Flush()
	m.Log(loggers, i)
	m.Flush()
	old, _ := os.ReadFile(path + ".1")
	cur, _ := os.ReadFile(path)
	// The line logged before Reopen may land in either file, depending on
	// whether the writer took it before reopening; none is lost.
	if n := strings.Count(string(old)+string(cur), "\n"); n != 3 {
		t.Fatalf("%d lines in total across the rotation, want 3: old %q new %q", n, old, cur)
	}
	if !strings.HasSuffix(string(cur), "200 /helloworld.Greeter/SayHello\n") {
		t.Fatalf("reopened file %q does not have the last line", cur)
	}
}

func TestSinkDropsWhenFull(t *testing.T) {
	testutil.CheckGoroutines(t)
	st := stats.NewStore()
	path := filepath.Join(t.TempDir(), "a.log")
	m := NewManager(ManagerOptions{FlushInterval: time.Hour, BufferBytes: 1000, Stats: st})
	defer m.Close()
	s, err := m.Sink(path)
	if err != nil {
		t.Fatal(err)
	}
	// Fill the buffer to one byte short of a line without waking the
	// writer (the flush interval is an hour, and only an accepted Write
	// kicks it): every line is then dropped, and counted, without
	// blocking. (Filling it to exactly one line short let the accepted
	// line kick the writer, which drained the buffer so that later lines
	// fit: the drop count depended on scheduling.)
	line := []byte(strings.Repeat("x", 99) + "\n")
	s.mu.Lock()
	s.buf = append(s.buf, make([]byte, 901)...)
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 5 {
			s.Write(line)
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Write blocked")
	}
	if got := m.Dropped().Value(); got != 5 {
		t.Errorf("access_logs.dropped = %d, want 5 (no 100-byte line fits after 901 bytes)", got)
	}
	if c := st.Root().Scope("access_logs").Counter("dropped"); c.Value() != 5 {
		t.Errorf("store counter = %d", c.Value())
	}
}

func TestCompileLoggers(t *testing.T) {
	dir := t.TempDir()
	jf, _ := structpb.NewStruct(map[string]any{"code": "%RESPONSE_CODE%"})
	src := filepath.Join(dir, "fmt.txt")
	if err := os.WriteFile(src, []byte("%PROTOCOL%\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ge500 := &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_StatusCodeFilter{StatusCodeFilter: &accesslogv3.StatusCodeFilter{
		Comparison: &accesslogv3.ComparisonFilter{Op: accesslogv3.ComparisonFilter_GE, Value: &corev3.RuntimeUInt32{DefaultValue: 500, RuntimeKey: "k"}}}}}
	longer := &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_DurationFilter{DurationFilter: &accesslogv3.DurationFilter{
		Comparison: &accesslogv3.ComparisonFilter{Op: accesslogv3.ComparisonFilter_GE, Value: &corev3.RuntimeUInt32{DefaultValue: 10}}}}}
	flagUF := &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_ResponseFlagFilter{ResponseFlagFilter: &accesslogv3.ResponseFlagFilter{Flags: []string{"UF"}}}}
	or := &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_OrFilter{OrFilter: &accesslogv3.OrFilter{Filters: []*accesslogv3.AccessLogFilter{ge500, flagUF}}}}
	and := &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_AndFilter{AndFilter: &accesslogv3.AndFilter{Filters: []*accesslogv3.AccessLogFilter{ge500, longer}}}}
	stdout := &accesslogv3.AccessLog{ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: mustAny(t, &streamv3.StdoutAccessLog{})}}
	i := testInfo() // 200, 12 ms, flags UR,UF
	for _, tc := range []struct {
		name      string
		al        *accesslogv3.AccessLog
		wantErr   string
		wantPath  string
		wantMatch bool
		wantLine  string
	}{
		{name: "default format", al: fileLog(t, "/tmp/x.log", nil, nil), wantPath: "/tmp/x.log", wantMatch: true, wantLine: `[2026-03-04T05:06:07.891Z] "POST`},
		{name: "json", al: fileLog(t, "/dev/stdout", &corev3.SubstitutionFormatString{Format: &corev3.SubstitutionFormatString_JsonFormat{JsonFormat: jf}}, nil), wantPath: "/dev/stdout", wantMatch: true, wantLine: `{"code":200}`},
		{name: "text_format_source", al: fileLog(t, "/tmp/y", &corev3.SubstitutionFormatString{Format: &corev3.SubstitutionFormatString_TextFormatSource{TextFormatSource: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: src}}}}, nil), wantPath: "/tmp/y", wantMatch: true, wantLine: "HTTP/2\n"},
		{name: "stdout", al: stdout, wantPath: "/dev/stdout", wantMatch: true, wantLine: `[2026-03-04T05:06:07.891Z]`},
		{name: "status filter", al: fileLog(t, "/tmp/x", nil, ge500), wantPath: "/tmp/x", wantMatch: false},
		{name: "or filter on flags", al: fileLog(t, "/tmp/x", nil, or), wantPath: "/tmp/x", wantMatch: true},
		{name: "and filter", al: fileLog(t, "/tmp/x", nil, and), wantPath: "/tmp/x", wantMatch: false},
		{name: "unknown operator", al: fileLog(t, "/tmp/x", textFormat("%BOGUS%"), nil), wantErr: "access_log[0].typed_config.log_format.text_format: position 0: unknown command operator %BOGUS%"},
		{name: "no path", al: fileLog(t, "", nil, nil), wantErr: "access_log[0].typed_config.path: required"},
		{name: "unknown flag", al: fileLog(t, "/tmp/x", nil, &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_ResponseFlagFilter{ResponseFlagFilter: &accesslogv3.ResponseFlagFilter{Flags: []string{"ZZ"}}}}), wantErr: `access_log[0].filter.response_flag_filter.flags[0]: unknown response flag "ZZ"`},
		{name: "unsupported filter", al: fileLog(t, "/tmp/x", nil, &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_TraceableFilter{TraceableFilter: &accesslogv3.TraceableFilter{}}}), wantErr: "access_log[0].filter.*accesslogv3.AccessLogFilter_TraceableFilter: not supported"},
		{name: "unsupported logger", al: &accesslogv3.AccessLog{ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: mustAny(t, wrapperspb.String("x"))}}, wantErr: "access logger google.protobuf.StringValue is not supported"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ls, err := Compile([]*accesslogv3.AccessLog{tc.al})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			l := ls[0]
			if l.Path != tc.wantPath {
				t.Errorf("path %q, want %q", l.Path, tc.wantPath)
			}
			if got := l.Filter == nil || l.Filter.Match(i); got != tc.wantMatch {
				t.Errorf("match %v, want %v", got, tc.wantMatch)
			}
			if tc.wantLine != "" {
				line, _ := l.Format.Append(nil, nil, i)
				if !strings.HasPrefix(string(line), tc.wantLine) {
					t.Errorf("line %q, want prefix %q", line, tc.wantLine)
				}
			}
		})
	}
}
