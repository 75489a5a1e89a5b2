package stats

import (
	"bytes"
	"strings"
	"testing"
)

// TestRefresh checks that Refresh functions run before every read of the
// store, in registration order, and stop once removed.
func TestRefresh(t *testing.T) {
	s := NewStore()
	g := s.Root().Scope("server").Gauge("uptime")
	var order []string
	n := int64(0)
	removeA := s.Refresh(func() { n++; g.Set(n); order = append(order, "a") })
	removeB := s.Refresh(func() { order = append(order, "b") })

	var out bytes.Buffer
	if err := s.WriteText(&out, Filter{}); err != nil {
		t.Fatalf("WriteText: %v", err)
	}
	if !strings.Contains(out.String(), "server.uptime: 1\n") {
		t.Errorf("text after one refresh:\n%s\nwant server.uptime: 1", out.String())
	}
	out.Reset()
	if err := s.WritePrometheus(&out, Filter{}); err != nil {
		t.Fatalf("WritePrometheus: %v", err)
	}
	if !strings.Contains(out.String(), "\nenvoy_server_uptime 2\n") {
		t.Errorf("prometheus after two refreshes:\n%s\nwant envoy_server_uptime 2", out.String())
	}
	if got, want := strings.Join(order, ""), "abab"; got != want {
		t.Errorf("refresh order %q, want %q", got, want)
	}

	removeA()
	removeA() // a second call does nothing
	removeB()
	s.Visit(nil, nil, nil)
	if g.Value() != 2 || len(order) != 4 {
		t.Errorf("after remove: uptime %d, %d refreshes; want 2 and 4 (no more refreshes)", g.Value(), len(order))
	}
}
