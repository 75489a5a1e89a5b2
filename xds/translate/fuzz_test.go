package translate_test

import (
	"os"
	"path/filepath"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"meshd.dev/meshd/examples"
	"meshd.dev/meshd/proxy/config"
	"meshd.dev/meshd/xds/model"
	"meshd.dev/meshd/xds/translate"
)

// FuzzTranslate runs mesh files the model accepts through the translator:
// it never panics, it is deterministic (equal input, equal Version), and
// every sidecar's resources and bootstrap pass the sidecar's own validators
// (what a meshd sidecar would NACK or refuse to start with). Seeds: the
// built-in example and the golden inputs.
func FuzzTranslate(f *testing.F) {
	f.Add(examples.Mesh)
	files, _ := filepath.Glob("testdata/*.yaml")
	for _, p := range files {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(data)
		}
	}
	opts := config.ResourceOptions{Dynamic: true}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := model.Parse(data, "fuzz.yaml")
		if err != nil {
			return
		}
		res, err := translate.Translate(m)
		if err != nil {
			return
		}
		again, err := translate.Translate(m)
		if err != nil || again.Version != res.Version {
			t.Fatalf("Translate is not deterministic: version %s then %v (%v)", res.Version, again, err)
		}
		for id, r := range res.Nodes {
			for _, list := range [][]types.Resource{r.Listeners, r.Routes, r.Clusters} {
				for _, msg := range list {
					var err error
					switch msg := msg.(type) {
					case *listenerv3.Listener:
						err = config.ValidateListener(msg, opts)
					case *clusterv3.Cluster:
						err = config.ValidateCluster(msg, opts)
					case *routev3.RouteConfiguration:
						err = config.ValidateRouteConfiguration(msg, opts)
					}
					if err != nil {
						t.Fatalf("node %s: the sidecar would reject %T: %v", id, msg, err)
					}
				}
			}
			b, err := translate.Bootstrap(m, id, "127.0.0.1:15010")
			if err != nil {
				t.Fatalf("Bootstrap(%s): %v", id, err)
			}
			if err := config.ValidateBootstrap(b); err != nil {
				t.Fatalf("node %s: the sidecar would refuse its bootstrap: %v", id, err)
			}
		}
	})
}
