package mtls

import (
	"strings"
	"testing"
)

func TestParseID(t *testing.T) {
	longTD := strings.Repeat("a", MaxTrustDomainLength+1)
	okTD := strings.Repeat("a", MaxTrustDomainLength)
	longPath := "/" + strings.Repeat("p", MaxIDLength)
	tests := []struct {
		name     string
		in       string
		wantErr  string // substring; "" means valid
		workload bool   // also valid as a workload (X509-SVID) ID
	}{
		{"workload", "spiffe://example.org/ns/default/sa/web", "", true},
		{"trust domain ID", "spiffe://example.org", "", false},
		{"segment chars", "spiffe://ex-am_ple.org/a.b/c-d/e_f/G9", "", true},
		{"max trust domain", "spiffe://" + okTD + "/w", "", true},
		{"empty", "", "cannot be empty", false},
		{"bad scheme", "http://example.org/w", "scheme is missing or invalid", false},
		{"uppercase scheme", "SPIFFE://example.org/w", "scheme is missing or invalid", false},
		{"no trust domain", "spiffe:///w", "trust domain is missing", false},
		{"uppercase trust domain", "spiffe://Example.org/w", "trust domain characters", false},
		{"port", "spiffe://example.org:8080/w", "trust domain characters", false},
		{"userinfo", "spiffe://user@example.org/w", "trust domain characters", false},
		{"query", "spiffe://example.org/w?x=1", "path segment characters", false},
		{"fragment", "spiffe://example.org/w#frag", "path segment characters", false},
		{"percent-encoded", "spiffe://example.org/w%20x", "path segment characters", false},
		{"percent-encoded trust domain", "spiffe://ex%41mple.org/w", "trust domain characters", false},
		{"empty segment", "spiffe://example.org/a//b", "empty segments", false},
		{"trailing slash", "spiffe://example.org/a/", "trailing slash", false},
		{"dot segment", "spiffe://example.org/a/./b", "dot segments", false},
		{"dot-dot segment", "spiffe://example.org/a/../b", "dot segments", false},
		{"trust domain too long", "spiffe://" + longTD + "/w", "longer than the 255 allowed", false},
		{"ID too long", "spiffe://example.org" + longPath, "longer than the 2048 allowed", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := ParseID("principals[0]", tt.in)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseID(%q) = %v, want error containing %q", tt.in, id, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "principals[0]: ") {
					t.Fatalf("ParseID(%q) error %q, want prefix %q and %q", tt.in, err, "principals[0]: ", tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseID(%q): %v", tt.in, err)
			}
			if id.String() != tt.in {
				t.Fatalf("ParseID(%q) = %q", tt.in, id)
			}
			_, err = ParseWorkloadID("svid", tt.in)
			if tt.workload && err != nil {
				t.Fatalf("ParseWorkloadID(%q): %v", tt.in, err)
			}
			if !tt.workload && (err == nil || !strings.Contains(err.Error(), "non-empty path")) {
				t.Fatalf("ParseWorkloadID(%q) error %v, want the non-empty path rule", tt.in, err)
			}
		})
	}
}

func TestParseTrustDomain(t *testing.T) {
	tests := []struct {
		in, want, wantErr string
	}{
		{"example.org", "example.org", ""},
		{"spiffe://example.org", "example.org", ""},
		{"Example.org", "", "trust domain characters"},
		{"", "", "trust domain is missing"},
		{strings.Repeat("a", 256), "", "longer than the 255 allowed"},
	}
	for _, tt := range tests {
		td, err := ParseTrustDomain("mesh.trustDomain", tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "mesh.trustDomain: ") {
				t.Errorf("ParseTrustDomain(%q) error %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || td.Name() != tt.want {
			t.Errorf("ParseTrustDomain(%q) = %v, %v; want %s", tt.in, td, err, tt.want)
		}
	}
}
