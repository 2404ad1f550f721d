//go:build !linux

package controlplane

import (
	"context"
	"errors"
	"net"
)

var errNotLinux = errors.New("controlplane: network namespaces need Linux")

func dialIn(ctx context.Context, ns, network, addr string) (net.Conn, error) { return nil, errNotLinux }

func freePorts(ns string, n int) ([]int, error) { return nil, errNotLinux }

func listenIn(ns, network, addr string) (net.Listener, error) { return nil, errNotLinux }
