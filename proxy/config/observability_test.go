package config

import (
	"strings"
	"testing"
	"time"
)

func TestCompileStatsSinks(t *testing.T) {
	const collector = `
  clusters:
  - name: otel
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: otel
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 4317}}}}]}]
`
	sink := func(cluster, extra string) string {
		return `
stats_sinks:
- name: envoy.stat_sinks.open_telemetry
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.stat_sinks.open_telemetry.v3.SinkConfig
    grpc_service: {envoy_grpc: {cluster_name: ` + cluster + `}}
` + extra
	}
	for _, tc := range []struct {
		name    string
		doc     string
		want    *StatsSinkConfig
		wantErr string
	}{
		{name: "none", doc: "static_resources:\n" + collector},
		{name: "defaults", doc: sink("otel", "") + "static_resources:\n" + collector,
			want: &StatsSinkConfig{Cluster: "otel", Endpoint: "127.0.0.1:4317", Interval: 5 * time.Second, UseTagExtractedName: true, EmitTagsAsAttributes: true}},
		{name: "fields", doc: sink("otel", "    use_tag_extracted_name: false\n    emit_tags_as_attributes: false\n    prefix: mesh\nstats_flush_interval: 0.25s\n") + "static_resources:\n" + collector,
			want: &StatsSinkConfig{Cluster: "otel", Endpoint: "127.0.0.1:4317", Interval: 250 * time.Millisecond, Prefix: "mesh"}},
		{name: "missing cluster", doc: sink("nope", "") + "static_resources:\n" + collector,
			wantErr: `stats_sinks[0].typed_config.grpc_service.envoy_grpc.cluster_name: no static cluster "nope"`},
		{name: "deltas are not supported", doc: sink("otel", "    report_counters_as_deltas: true\n") + "static_resources:\n" + collector,
			wantErr: "stats_sinks[0].typed_config.report_counters_as_deltas"},
		{name: "other sink type", doc: `
stats_sinks:
- name: envoy.stat_sinks.statsd
  typed_config:
    "@type": type.googleapis.com/envoy.config.metrics.v3.StatsdSink
    address: {socket_address: {address: 127.0.0.1, port_value: 8125}}
`, wantErr: `unsupported typed_config type "type.googleapis.com/envoy.config.metrics.v3.StatsdSink" for extension point "stats sink"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := ParseBootstrap([]byte(tc.doc), "x.yaml")
			if err == nil {
				var got *StatsSinkConfig
				got, err = CompileStatsSinks(b)
				if err == nil {
					if tc.wantErr != "" {
						t.Fatalf("no error, want %q", tc.wantErr)
					}
					if (got == nil) != (tc.want == nil) || got != nil && *got != *tc.want {
						t.Fatalf("got %+v, want %+v", got, tc.want)
					}
					return
				}
			}
			if tc.wantErr == "" || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err %v, want %q", err, tc.wantErr)
			}
		})
	}
}
