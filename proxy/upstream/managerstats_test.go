package upstream

import (
	"log/slog"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"meshd.dev/meshd/internal/testutil"
	"meshd.dev/meshd/proxy/stats"
)

// TestManagerStats checks the cluster manager's stats over a sequence of
// Apply calls: cluster_added for a new name, cluster_modified for a name
// whose config changed, cluster_removed for a name gone, nothing for an
// unchanged cluster, and active_clusters the live count after each.
func TestManagerStats(t *testing.T) {
	testutil.CheckGoroutines(t)
	store := stats.NewStore()
	m := NewManager(store, slog.New(slog.DiscardHandler))
	defer m.Close()
	spec := func(name string, timeout time.Duration) *Spec {
		cp := testClusterProto(t, "127.0.0.1:1")
		cp.Name = name
		cp.LoadAssignment.ClusterName = name
		cp.ConnectTimeout = durationpb.New(timeout)
		s, err := CompileCluster(cp)
		if err != nil {
			t.Fatalf("CompileCluster: %v", err)
		}
		return s
	}
	value := func(name string) int64 {
		var v int64 = -1
		store.Visit(func(c *stats.Counter) {
			if c.FlatName() == name {
				v = int64(c.Value())
			}
		}, func(g *stats.Gauge) {
			if g.FlatName() == name {
				v = g.Value()
			}
		}, func(*stats.Histogram) {})
		return v
	}
	steps := []struct {
		name  string
		specs []*Spec
		// want: active_clusters, cluster_added, cluster_modified,
		// cluster_removed after the step (counters are cumulative).
		active, added, modified, removed int64
	}{
		{"two added", []*Spec{spec("a", time.Second), spec("b", time.Second)}, 2, 2, 0, 0},
		{"unchanged", []*Spec{spec("a", time.Second), spec("b", time.Second)}, 2, 2, 0, 0},
		{"one modified", []*Spec{spec("a", 2*time.Second), spec("b", time.Second)}, 2, 2, 1, 0},
		{"one removed, one added", []*Spec{spec("a", 2*time.Second), spec("c", time.Second)}, 2, 3, 1, 1},
		{"all removed", nil, 0, 3, 1, 3},
	}
	for _, st := range steps {
		m.Apply(st.specs)
		for stat, want := range map[string]int64{
			"cluster_manager.active_clusters":  st.active,
			"cluster_manager.cluster_added":    st.added,
			"cluster_manager.cluster_modified": st.modified,
			"cluster_manager.cluster_removed":  st.removed,
		} {
			if got := value(stat); got != want {
				t.Errorf("after %q: %s = %d, want %d", st.name, stat, got, want)
			}
		}
	}
}
