package accesslog

import (
	"fmt"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	otelalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/open_telemetry/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	"google.golang.org/protobuf/proto"

	"meshd.dev/meshd/proxy/datasource"
)

// The access loggers meshd implements, by Envoy type URL.
const (
	FileType   = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
	StdoutType = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
	StderrType = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog"
)

// Logger is one compiled AccessLog entry: which streams (Filter), how
// (Format) and where (Path, a Manager sink; or OTLP, an OpenTelemetry
// collector). Immutable.
type Logger struct {
	Name   string
	Filter Filter // nil: every stream
	Format *Formatter
	Path   string
	// OTLP is set for envoy.access_loggers.open_telemetry, whose records
	// are formatted by its own body and attribute formats (Format and
	// Path are unused).
	OTLP *OTLPConfig
}

// Compile compiles an HCM's (or any) access_log list. Errors name the
// field: "access_log[1].typed_config.log_format.text_format: position 4:
// unknown command operator %FOO%".
func Compile(logs []*accesslogv3.AccessLog) ([]*Logger, error) {
	out := make([]*Logger, 0, len(logs))
	for k, al := range logs {
		l, err := compileOne(al)
		if err != nil {
			return nil, fmt.Errorf("access_log[%d].%w", k, err)
		}
		out = append(out, l)
	}
	return out, nil
}

func compileOne(al *accesslogv3.AccessLog) (*Logger, error) {
	l := &Logger{Name: al.GetName()}
	if f := al.GetFilter(); f != nil {
		c, err := compileFilter(f)
		if err != nil {
			return nil, fmt.Errorf("filter.%w", err)
		}
		l.Filter = c
	}
	tc := al.GetTypedConfig()
	if tc == nil {
		return nil, fmt.Errorf("typed_config: required")
	}
	msg, err := tc.UnmarshalNew()
	if err != nil {
		return nil, fmt.Errorf("typed_config: %w", err)
	}
	var lf *corev3.SubstitutionFormatString
	switch m := msg.(type) {
	case *filev3.FileAccessLog:
		if m.GetPath() == "" {
			return nil, fmt.Errorf("typed_config.path: required")
		}
		l.Path = m.GetPath()
		switch f := m.GetAccessLogFormat().(type) {
		case *filev3.FileAccessLog_LogFormat:
			lf = f.LogFormat
		case *filev3.FileAccessLog_Format:
			//lint:ignore SA1019 deprecated in Envoy's API but still honoured by Envoy; the sidecar honours it for control planes that send it
			ft, err := CompileText(f.Format)
			if err != nil {
				return nil, fmt.Errorf("typed_config.format: %w", err)
			}
			l.Format = ft
		case *filev3.FileAccessLog_JsonFormat:
			//lint:ignore SA1019 deprecated in Envoy's API but still honoured by Envoy; the sidecar honours it for control planes that send it
			fj, err := CompileJSON(f.JsonFormat)
			if err != nil {
				return nil, fmt.Errorf("typed_config.json_format: %w", err)
			}
			l.Format = fj
		case nil:
		default:
			return nil, fmt.Errorf("typed_config: %T is not supported (log_format, format, json_format)", f)
		}
	case *otelalsv3.OpenTelemetryAccessLogConfig:
		c, err := compileOTLP(m)
		if err != nil {
			return nil, fmt.Errorf("typed_config.%w", err)
		}
		l.OTLP = c
	case *streamv3.StdoutAccessLog:
		l.Path = "/dev/stdout"
		lf = m.GetLogFormat()
	case *streamv3.StderrAccessLog:
		l.Path = "/dev/stderr"
		lf = m.GetLogFormat()
	default:
		return nil, fmt.Errorf("typed_config: access logger %s is not supported (%s, %s, %s, %s)",
			proto.MessageName(msg), FileType, StdoutType, StderrType, OpenTelemetryType)
	}
	if lf != nil {
		f, err := CompileFormat(lf)
		if err != nil {
			return nil, fmt.Errorf("typed_config.log_format.%w", err)
		}
		l.Format = f
	}
	if l.Format == nil {
		f, err := CompileText(DefaultFormat)
		if err != nil {
			panic("accesslog: DefaultFormat does not compile: " + err.Error())
		}
		l.Format = f
	}
	return l, nil
}

// CompileFormat compiles a SubstitutionFormatString (text_format,
// text_format_source, json_format; omit_empty_values). Errors name the
// field.
func CompileFormat(sf *corev3.SubstitutionFormatString) (*Formatter, error) {
	if len(sf.GetFormatters()) > 0 {
		return nil, fmt.Errorf("formatters: formatter extensions are not supported")
	}
	var f *Formatter
	var err error
	switch t := sf.GetFormat().(type) {
	case *corev3.SubstitutionFormatString_TextFormat:
		//lint:ignore SA1019 deprecated in Envoy's API but still honoured by Envoy; the sidecar honours it for control planes that send it
		if f, err = CompileText(t.TextFormat); err != nil {
			return nil, fmt.Errorf("text_format: %w", err)
		}
	case *corev3.SubstitutionFormatString_TextFormatSource:
		b, rerr := datasource.Read(t.TextFormatSource)
		if rerr != nil {
			return nil, fmt.Errorf("text_format_source: %w", rerr)
		}
		if f, err = CompileText(string(b)); err != nil {
			return nil, fmt.Errorf("text_format_source: %w", err)
		}
	case *corev3.SubstitutionFormatString_JsonFormat:
		if f, err = CompileJSON(t.JsonFormat); err != nil {
			return nil, fmt.Errorf("json_format.%w", err)
		}
	default:
		return nil, fmt.Errorf("format: one of text_format, text_format_source, json_format is required")
	}
	f.omitEmpty = sf.GetOmitEmptyValues()
	return f, nil
}
