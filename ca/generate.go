package ca

// The Go code of the CA protocol (proto/meshd/ca/v1/ca.proto) is generated
// with buf and the protoc-gen-go / protoc-gen-go-grpc plugins, all run
// through `go run` at pinned versions; see proto/README.md.
//go:generate go run github.com/bufbuild/buf/cmd/buf@v1.57.0 generate proto --template proto/buf.gen.yaml
