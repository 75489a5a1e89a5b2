package translate

import (
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// FileAccessLogName is Envoy's file access logger.
const FileAccessLogName = "envoy.access_loggers.file"

// accessLogs is the access_log of every HTTP connection manager: the
// Mesh's spec.accessLog as an envoy.access_loggers.file, or none.
func (t *translator) accessLogs() []*accesslogv3.AccessLog {
	spec := t.m.Spec.AccessLog
	if spec == nil {
		return nil
	}
	fl := &filev3.FileAccessLog{Path: spec.Path}
	switch {
	case len(spec.JSON) > 0:
		fields := make(map[string]any, len(spec.JSON))
		for k, v := range spec.JSON {
			fields[k] = v
		}
		s, err := structpb.NewStruct(fields)
		if err != nil {
			t.fail(err)
			return nil
		}
		fl.AccessLogFormat = &filev3.FileAccessLog_LogFormat{LogFormat: &corev3.SubstitutionFormatString{
			Format: &corev3.SubstitutionFormatString_JsonFormat{JsonFormat: s},
		}}
	case spec.Format != "":
		fl.AccessLogFormat = &filev3.FileAccessLog_LogFormat{LogFormat: &corev3.SubstitutionFormatString{
			Format: &corev3.SubstitutionFormatString_TextFormatSource{TextFormatSource: &corev3.DataSource{
				Specifier: &corev3.DataSource_InlineString{InlineString: spec.Format},
			}},
		}}
	}
	// json_format is a map: marshal deterministically so that equal
	// meshes translate to equal versions.
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, fl, proto.MarshalOptions{Deterministic: true}); err != nil {
		t.fail(err)
		return nil
	}
	return []*accesslogv3.AccessLog{{
		Name:       FileAccessLogName,
		ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: a},
	}}
}
