// Package nodeport serves Services' node ports and health check node ports
// without netfilter: kernel sockets on the node's addresses, one per node
// port and address, TCP and UDP, that forward through the same service
// table and balancer as ClusterIPs.
//
// Where kube-proxy rewrites packets to a node port in the kernel, kubetun
// accepts them: the pod sees the node's address as the client's, not the
// client's own, also with externalTrafficPolicy: Local.
package nodeport
