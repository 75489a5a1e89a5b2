package doctor

import (
	"encoding/json"
	"io"
	"math"
	"strconv"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	"meshd.dev/meshd/examples"
	"meshd.dev/meshd/xds/model"
)

// FuzzParseProtoDuration checks parseProtoDuration against protobuf's own
// JSON reading of a google.protobuf.Duration: the same duration for a
// value protojson accepts, 0 for anything else (as its doc promises).
func FuzzParseProtoDuration(f *testing.F) {
	for _, s := range []string{"1.5s", "0s", "-2s", "315576000000s", "0.000000001s", "1e3s", "NaNs", "1", "s", "+1s", "1.0000000001s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var want durationpb.Duration
		err := protojson.Unmarshal(strconv.AppendQuote(nil, s), &want)
		got := parseProtoDuration(s)
		switch {
		case err != nil && got != 0:
			t.Fatalf("parseProtoDuration(%q) = %v, want 0: protojson rejects it (%v)", s, got, err)
		case err == nil && got != want.AsDuration():
			t.Fatalf("parseProtoDuration(%q) = %v, want %v", s, got, want.AsDuration())
		}
	})
}

// FuzzParseAdmin feeds arbitrary bodies to the parsers of a sidecar's
// admin answers (stats, clusters, config dump) that `meshd doctor --admin`
// reads: none may panic, and an error must say something.
func FuzzParseAdmin(f *testing.F) {
	f.Add([]byte(configDump))
	f.Add([]byte(`{"stats":[{"name":"a","value":3},{"histograms":{"supported_quantiles":[50,99],"computed_quantiles":[{"name":"h","values":[{"cumulative":1},{"cumulative":2}]}]}}]}`))
	f.Add([]byte(`{"cluster_statuses":[{"name":"c","host_statuses":[{"address":{"socket_address":{"address":"127.0.0.1","port_value":80}},"stats":[{"name":"rq_active","value":"2"}]}]}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, err := range []error{
			func() error { _, _, err := parseStatsJSON(body); return err }(),
			func() error { _, err := parseClustersJSON(body); return err }(),
			func() error { _, err := parseConfigDump(body); return err }(),
		} {
			if err != nil && err.Error() == "" {
				t.Fatal("empty error")
			}
		}
	})
}

// FuzzStaticBytes feeds arbitrary mesh files to `meshd doctor -f`'s
// checks: no panic; a file that does not load gives only invalid-mesh
// errors and one that loads gives none; every finding names its rule,
// subject and evidence with finite values; and the report renders as
// text and as JSON.
func FuzzStaticBytes(f *testing.F) {
	f.Add(examples.Mesh)
	f.Add([]byte(meshFile("", healthy)))
	f.Add([]byte(http3Service(meshFile("    http2: {keepalive: {interval: 1s, timeout: 5s}, maxConcurrentStreams: 1000}\n", "  connectionPool: {maxConnections: 1, maxPendingRequests: 0, idleTimeout: 100ms}\n  timeout: 0s\n"))))
	f.Add([]byte("apiVersion: meshd.dev/v1alpha1\nkind: Service\nmetadata: {name: a}\nspec: {protocol: grpc, port: 0}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, loadErr := model.Parse(data, "fuzz.yaml")
		r := StaticBytes(data, "fuzz.yaml")
		for _, fd := range r.Findings {
			if (fd.Rule == "invalid-mesh") != (loadErr != nil) {
				t.Fatalf("finding %+v for a file whose load error is %v", fd, loadErr)
			}
			if fd.Rule == "" || fd.Subject == "" || fd.Evidence == "" {
				t.Fatalf("finding without rule, subject or evidence: %+v", fd)
			}
			for k, v := range fd.Values {
				if math.IsNaN(v) || math.IsInf(v, 0) {
					t.Fatalf("finding %s: value %s = %v", fd.Rule, k, v)
				}
			}
		}
		if loadErr != nil && r.Worst() != Error {
			t.Fatalf("a file that does not load (%v) gives worst severity %v", loadErr, r.Worst())
		}
		if _, err := json.Marshal(r); err != nil {
			t.Fatalf("report does not marshal: %v", err)
		}
		if err := r.WriteText(io.Discard); err != nil {
			t.Fatalf("report does not render: %v", err)
		}
	})
}
