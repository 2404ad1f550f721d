//go:build !amd64 && !arm64

package testbed

// sysSetns is unknown here; DialIn reports it.
const sysSetns = 0
