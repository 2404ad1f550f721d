package resolver

import (
	"context"
	"errors"
	"net/netip"
)

// ErrNoEndpoint is DialEndpoint's error when the Service port has no usable
// endpoint for the client (none at all, or none on this node with
// externalTrafficPolicy: Local).
var ErrNoEndpoint = errors.New("no usable endpoint")

// DialEndpoint is the one policy by which every path — a ClusterIP's flow
// in the userspace stack, a node port's kernel socket — reaches an endpoint
// of sp for client: dial the endpoint PickFor gives and, if that fails,
// one other (PickOtherFor), so that a pod that just died costs its clients
// a retry, not an error. Nothing is retried once ctx is done (the client
// gave up). It returns the connection, the endpoint it reached (or the last
// tried), and both dials' errors joined.
func DialEndpoint[C any](ctx context.Context, sp *ServicePort, client netip.Addr, dial func(context.Context, Endpoint) (C, error)) (C, Endpoint, error) {
	var zero C
	ep, ok := sp.PickFor(client)
	if !ok {
		return zero, ep, ErrNoEndpoint
	}
	c, err := dial(ctx, ep)
	if err == nil {
		return c, ep, nil
	}
	other, ok := sp.PickOtherFor(client, ep)
	if !ok || ctx.Err() != nil {
		return zero, ep, err
	}
	c, err2 := dial(ctx, other)
	if err2 != nil {
		return zero, other, errors.Join(err, err2)
	}
	return c, other, nil
}
