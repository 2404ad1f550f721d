// Package resolver answers "where does this connection go?".
//
// [Build] turns Services and EndpointSlices, from either source kubetun has
// (the manifest files of resolver/manifest, or the Kubernetes API's
// informers in resolver/kube), into an immutable [Snapshot]: each Service
// port by ClusterIP, external IP and node port, with the endpoints its
// traffic policies and topology leave usable, and the names and addresses
// the cluster DNS (resolver/dns) answers from. The sources record what
// changes, object by object, in a [ChangeTracker] (as kube-proxy's
// pkg/proxy change trackers do); [Update] applies the [Changes] to the
// snapshot it replaces and works out again only the keys changed and what
// depends on them, so a change costs what changed. A
// [Table] publishes the current snapshot, and a [ServicePort] picks an
// endpoint for each new flow: round-robin, or by ClientIP session affinity.
// The packet path only ever loads the current snapshot through an atomic
// pointer; it never takes a lock owned by the control plane.
package resolver
