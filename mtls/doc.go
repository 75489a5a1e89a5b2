// Package mtls holds meshd's workload identity: SPIFFE IDs, X.509-SVID
// verification per the SPIFFE specification, rotating SVID and bundle
// sources, tls.Config builders fed by those sources, and authorizers that
// decide which peer SPIFFE IDs may connect.
//
// # Sources
//
// A [Source] yields the workload's current X.509-SVID (chain and key) and
// the trust bundles by trust domain, and announces every change through
// [Source.Watch]. The tls.Config values built by [ServerConfig] and
// [ClientConfig] read the source on every handshake, so a rotation applies
// to the next handshake while established connections keep flowing.
//
//   - [StaticSource] is set by code: the sidecar's SDS secrets and the
//     built-in CA client call [StaticSource.Update].
//   - [FileSource] polls a certificate chain, key and bundle file and
//     reloads them atomically, keeping the last good SVID when a file is bad.
//   - [WorkloadAPISource] follows the SPIFFE Workload API (a SPIRE agent)
//     through go-spiffe's workloadapi.X509Source.
//
// # Selecting the Workload API in a bootstrap
//
// The sidecar's proxy/identity implements it, keeping the bootstrap valid
// for Envoy: a TLS context names an SDS secret
// whose sds_config points at a static cluster called
// "meshd_spiffe_workload_api" with a pipe (Unix socket) address. Envoy
// would speak SDS to it, which the SPIRE agent also serves; meshd instead
// recognises the cluster name and opens a [WorkloadAPISource] on that
// socket, for example:
//
//	tls_certificate_sds_secret_configs:
//	- name: default
//	  sds_config:
//	    api_config_source:
//	      api_type: GRPC
//	      grpc_services:
//	      - envoy_grpc: {cluster_name: meshd_spiffe_workload_api}
//	clusters:
//	- name: meshd_spiffe_workload_api
//	  load_assignment:
//	    cluster_name: meshd_spiffe_workload_api
//	    endpoints:
//	    - lb_endpoints:
//	      - endpoint: {address: {pipe: {path: /run/spire/agent.sock}}}
//
// The secret name "default" is the SVID and "ROOTCA" (or a trust domain's
// ID) the bundle, as in SPIRE's own SDS conventions.
//
// # Verification
//
// [VerifySVID] runs go-spiffe's x509svid.Verify and adds the checks the
// SPIFFE X509-SVID specification requires that Verify leaves out: the leaf's
// ID has a non-empty path, the leaf carries the digitalSignature key usage,
// and the ID fits the specification's length limits. Every rejection is a
// [*VerifyError] whose [Reason] says why, so a listener can log a handshake
// failure with the peer address and a reason an operator can act on.
package mtls
