// Package tunnel owns kubetun's TUN device: it creates the device with
// wireguard-go's tun package (virtio-net headers, TCP segmentation offload),
// keeps the host routes that send service addresses into it (a persistent
// device keeps them across a restart, see Persist and Cleanup), and carries
// packets between the device and gVisor itself, not through the tun
// package's Read and Write.
//
// Inbound, a pump reads each frame behind its virtio-net header, checks its
// checksums, hands UDP to a handler first (the UDP fast path) and the rest
// to gVisor, large TCP segments whole and others through gVisor's GRO.
// Outbound, the gVisor link endpoint it provides (Link) queues what gVisor
// sends for one writer goroutine, which writes each packet with writev(2)
// as one frame, TCP segments of up to 64 KiB for the kernel to split (GSO).
package tunnel
