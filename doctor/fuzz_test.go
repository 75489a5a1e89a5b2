package doctor

import (
	"strconv"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
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
