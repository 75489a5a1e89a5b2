package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"
)

// fuzzSeeds returns the examples and every bad case of
// TestParseBootstrapRejects, by name.
func fuzzSeeds(t testing.TB) map[string][]byte {
	base := exampleFile(t, "sidecar.yaml")
	js, err := yaml.YAMLToJSON(base)
	if err != nil {
		t.Fatal(err)
	}
	seeds := map[string][]byte{
		"example-sidecar":      base,
		"example-sidecar-tls":  exampleFile(t, "sidecar-tls.yaml"),
		"example-sidecar-json": js,
	}
	for _, tc := range badCases {
		slug := strings.Map(func(r rune) rune {
			if 'a' <= r && r <= 'z' || '0' <= r && r <= '9' {
				return r
			}
			if 'A' <= r && r <= 'Z' {
				return r + 'a' - 'A'
			}
			return '-'
		}, tc.name)
		seeds["bad-"+slug] = []byte(mutate(t, string(base), tc.edits))
	}
	return seeds
}

// TestFuzzCorpus keeps testdata/fuzz/FuzzParseBootstrap's seed-* files in
// step with fuzzSeeds; -update rewrites them (and removes stale ones).
func TestFuzzCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzParseBootstrap")
	seeds := fuzzSeeds(t)
	existing, err := filepath.Glob(filepath.Join(dir, "seed-*"))
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range existing {
		if _, ok := seeds[strings.TrimPrefix(filepath.Base(path), "seed-")]; ok {
			continue
		}
		if !*update {
			t.Errorf("%s is not a seed any more; run go test ./proxy/config -run TestFuzzCorpus -update", path)
			continue
		}
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
	}
	for name, data := range seeds {
		path := filepath.Join(dir, "seed-"+name)
		want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
		got, err := os.ReadFile(path)
		if err == nil && string(got) == want {
			continue
		}
		if !*update {
			t.Errorf("%s is missing or stale; run go test ./proxy/config -run TestFuzzCorpus -update", path)
			continue
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// FuzzParseBootstrap checks that ParseBootstrap never panics, that its
// problems always say something, and that an accepted bootstrap survives a
// JSON round trip unchanged and still valid.
func FuzzParseBootstrap(f *testing.F) {
	for _, data := range fuzzSeeds(f) {
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := ParseBootstrap(data, "fuzz")
		if err != nil {
			if b != nil {
				t.Fatal("a bootstrap returned with an error")
			}
			var ve *ValidationError
			if errors.As(err, &ve) {
				if len(ve.Problems) == 0 {
					t.Fatal("a ValidationError without problems")
				}
				for _, p := range ve.Problems {
					if strings.TrimSpace(p.Reason) == "" {
						t.Fatalf("a problem without a reason at %q", p.Path)
					}
				}
			}
			return
		}
		js, err := protojson.Marshal(b)
		if err != nil {
			t.Fatalf("marshal an accepted bootstrap: %v", err)
		}
		again, err := ParseBootstrap(js, "round trip")
		if err != nil {
			t.Fatalf("the JSON of an accepted bootstrap is rejected: %v\n%s", err, js)
		}
		if !proto.Equal(b, again) {
			t.Fatalf("round trip changed the bootstrap:\n%v\n%v", b, again)
		}
	})
}
