// Package resolver answers "where does this connection go?".
//
// It turns Services and EndpointSlices (from any source: the static manifest
// source in resolver/manifest today, client-go informers later) into an
// immutable [Snapshot], publishes it through a [Table], and picks an endpoint
// for each new flow. The packet path only ever loads the current snapshot
// through an atomic pointer; it never takes a lock owned by the control plane.
package resolver
