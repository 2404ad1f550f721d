package controlplane

import "k8s.io/client-go/rest"

// RESTConfig returns a client-go config for the control plane as the admin,
// usable from any network namespace: it dials through DialContext. (Inside
// the control plane's namespace, the Kubeconfig file works as well.)
func (cp *ControlPlane) RESTConfig() *rest.Config {
	return &rest.Config{
		Host:            cp.Server,
		BearerToken:     cp.Token,
		TLSClientConfig: rest.TLSClientConfig{CAData: cp.CACert},
		Dial:            cp.DialContext,
		QPS:             100,
		Burst:           200,
	}
}
