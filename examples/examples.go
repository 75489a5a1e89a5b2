// Package examples holds the example configuration files embedded in the
// meshd binary.
package examples

import _ "embed"

// Mesh is examples/mesh.yaml: the built-in mesh file `meshd up` runs when
// given no -f (a greeter gRPC server and client, each with a sidecar, on
// loopback). It is valid for meshd.dev/meshd/xds/model.Parse and raises no
// warnings (xds/model tests check both).
//
//go:embed mesh.yaml
var Mesh []byte
