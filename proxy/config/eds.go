package config

import (
	"fmt"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"

	"meshd.dev/meshd/proxy/upstream"
)

// ValidateClusterLoadAssignment applies to one EDS resource the checks
// ValidateCluster applies to a cluster's load_assignment: the generated
// protoc-gen-validate rules, only supported fields set, and endpoints that
// are IP addresses with ports. Paths are relative to the assignment.
func ValidateClusterLoadAssignment(cla *endpointv3.ClusterLoadAssignment) error {
	if cla == nil {
		return missing("cluster load assignment")
	}
	v := &validator{}
	v.pgvAll("", cla)
	v.walk("", cla.ProtoReflect(), OtherExtension)
	if len(v.probs) == 0 {
		if _, err := upstream.CompileAssignment(cla); err != nil {
			v.addf("", "%v", err)
		}
	}
	return v.result(fmt.Sprintf("cluster load assignment %q", cla.GetClusterName()))
}
