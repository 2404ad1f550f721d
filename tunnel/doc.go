// Package tunnel owns kubetun's TUN device: it creates the device with
// wireguard-go's tun package (virtio-net headers and TSO on Linux, batched
// reads and writes), keeps the host routes that send service addresses into
// it, and pumps packets between the device and a gVisor link endpoint.
package tunnel
