package config

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// luaTypeURL names an Envoy type meshd does not implement and does not
// link, in the binaries or in this test (TestEnvoyMessageNames checks).
const luaTypeURL = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"

// TestEnvoyMessageNames: the generated table is sorted and unique, names
// every message of the Envoy configuration packages linked into this test
// (so a go-control-plane upgrade without `go generate ./proxy/config`
// fails here), and names Envoy types that are not linked, which
// isEnvoyMessage then tells from misspelt ones.
func TestEnvoyMessageNames(t *testing.T) {
	if !slices.IsSorted(envoyMessageNames) || len(slices.Compact(slices.Clone(envoyMessageNames))) != len(envoyMessageNames) {
		t.Fatal("envoyMessageNames is not sorted and unique: run go generate ./proxy/config")
	}
	dirs := []string{"envoy/config/", "envoy/extensions/", "envoy/type/", "envoy/data/", "envoy/watchdog/", "xds/type/", "udpa/type/"}
	linked := 0
	var walk func(ms protoreflect.MessageDescriptors)
	walk = func(ms protoreflect.MessageDescriptors) {
		for i := 0; i < ms.Len(); i++ {
			m := ms.Get(i)
			if m.IsMapEntry() {
				continue
			}
			linked++
			if !isEnvoyMessage(string(m.FullName())) {
				t.Errorf("linked Envoy message %s is not in envoyMessageNames: run go generate ./proxy/config", m.FullName())
			}
			walk(m.Messages())
		}
	}
	protoregistry.GlobalFiles.RangeFiles(func(f protoreflect.FileDescriptor) bool {
		for _, d := range dirs {
			if strings.HasPrefix(f.Path(), d) {
				walk(f.Messages())
				break
			}
		}
		return true
	})
	if linked < 100 || linked >= len(envoyMessageNames) {
		t.Errorf("%d Envoy messages linked into the test, %d in the table: the test should link the supported ones and not all", linked, len(envoyMessageNames))
	}

	if _, err := protoregistry.GlobalTypes.FindMessageByURL(luaTypeURL); err == nil {
		t.Fatalf("%s is linked into the test: pick another unlinked type for luaTypeURL", luaTypeURL)
	}
	for _, tc := range []struct {
		url  string
		want bool
	}{
		{luaTypeURL, true},
		{"envoy.extensions.filters.http.lua.v3.Lua", true},
		{"type.googleapis.com/envoy.config.route.v3.RouteAction.HashPolicy", true},
		{"type.googleapis.com/xds.type.v3.TypedStruct", true},
		{"type.googleapis.com/envoy.extensions.filters.http.lua.v3.Luaa", false},
		{"type.googleapis.com/google.protobuf.StringValue", false},
		{"", false},
	} {
		if got := isEnvoyMessage(tc.url); got != tc.want {
			t.Errorf("isEnvoyMessage(%q) = %v, want %v", tc.url, got, tc.want)
		}
	}
}
