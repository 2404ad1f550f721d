package resolver

import "slices"

// Topology is where this kubetun runs: the node for
// internalTrafficPolicy: Local and node hints, the node's zone for zone
// hints.
type Topology struct {
	NodeName string
	Zone     string
}

// Usable returns the endpoints new connections to a Service port may go to,
// by kube-proxy's rules (pkg/proxy/topology.go):
//
//   - internalTrafficPolicy Cluster (local false): the ready endpoints,
//     narrowed by topology hints when every ready endpoint has a hint and one
//     is meant for this node (forNodes) or zone (forZones); when none is
//     ready anywhere, the serving and terminating ones (KEP-1669);
//   - Local (local true): the ready endpoints on this node, else the serving
//     and terminating ones on this node, else none: the connection is
//     refused rather than sent to another node.
//
// A non-serving endpoint is never used. Usable is a pure function.
func Usable(eps []Endpoint, local bool, topo Topology) []Endpoint {
	var keep func(Endpoint) bool
	if local {
		keep = func(ep Endpoint) bool { return ep.NodeName != "" && ep.NodeName == topo.NodeName }
	} else {
		keep = hintFilter(eps, topo)
	}
	if ready := filter(eps, func(ep Endpoint) bool { return ep.Ready && keep(ep) }); len(ready) > 0 {
		return ready
	}
	if !local {
		// Hints apply to ready endpoints only: with none ready, any serving
		// terminating endpoint in the cluster will do.
		keep = func(Endpoint) bool { return true }
	}
	return filter(eps, func(ep Endpoint) bool { return ep.Serving && ep.Terminating && keep(ep) })
}

// hintFilter decides whether topology hints apply, and returns the filter
// they call for: same node if every ready endpoint has a node hint and one
// names this node; otherwise same zone if every ready endpoint has a zone
// hint and one names this zone; otherwise no filter.
func hintFilter(eps []Endpoint, topo Topology) func(Endpoint) bool {
	any := func(Endpoint) bool { return true }
	allNode, allZone, forNode, forZone, ready := true, true, false, false, false
	for _, ep := range eps {
		if !ep.Ready {
			continue
		}
		ready = true
		allNode = allNode && len(ep.ForNodes) > 0
		allZone = allZone && len(ep.ForZones) > 0
		forNode = forNode || slices.Contains(ep.ForNodes, topo.NodeName) && topo.NodeName != ""
		forZone = forZone || slices.Contains(ep.ForZones, topo.Zone) && topo.Zone != ""
	}
	switch {
	case !ready:
		return any
	case allNode && forNode:
		return func(ep Endpoint) bool { return slices.Contains(ep.ForNodes, topo.NodeName) }
	case allZone && forZone:
		return func(ep Endpoint) bool { return slices.Contains(ep.ForZones, topo.Zone) }
	}
	return any
}

func filter(eps []Endpoint, keep func(Endpoint) bool) []Endpoint {
	var out []Endpoint
	for _, ep := range eps {
		if keep(ep) {
			out = append(out, ep)
		}
	}
	return out
}
