package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The kubelet stand-in: no kubelet, scheduler or service-account controller
// runs, so the test does their part of the job through the API. Pods are
// created with spec.nodeName set (nothing schedules them); their containers
// are whatever the test starts in the pod's network namespace; the status
// posted here is what makes the EndpointSlice controller list them.

// Content types of the API's patches.
const (
	mergePatch     = "application/merge-patch+json"
	strategicPatch = "application/strategic-merge-patch+json"
)

// CreateNamespace creates Kubernetes namespace name, if missing, and its
// "default" ServiceAccount, without which the ServiceAccount admission
// plugin refuses Pods (no controller creates it here). It is safe to repeat
// and works for the existing "default" namespace.
func (cp *ControlPlane) CreateNamespace(ctx context.Context, name string) error {
	ns := corev1.Namespace{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
		ObjectMeta: metav1.ObjectMeta{Name: name},
	}
	if err := cp.create(ctx, "/api/v1/namespaces", ns); err != nil {
		return err
	}
	sa := corev1.ServiceAccount{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: name},
	}
	return cp.create(ctx, "/api/v1/namespaces/"+name+"/serviceaccounts", sa)
}

// CreateNode creates Node name, if missing, labelled
// kubernetes.io/hostname=name, kubernetes.io/os=linux and labels (e.g.
// topology.kubernetes.io/zone), and posts a Ready status for it, with the
// kubelet stand-in's address (InternalIP 127.0.0.1, port KubeletPort) for
// pods/portforward. An existing Node is left as it is, so each test may
// call it.
func (cp *ControlPlane) CreateNode(ctx context.Context, name string, labels map[string]string) error {
	node := corev1.Node{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Node"},
		ObjectMeta: metav1.ObjectMeta{
			Name:   name,
			Labels: map[string]string{"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
		},
	}
	maps.Copy(node.Labels, labels)
	body, err := json.Marshal(node)
	if err != nil {
		return fmt.Errorf("controlplane: marshal Node %s: %w", name, err)
	}
	_, err = cp.Do(ctx, http.MethodPost, "/api/v1/nodes", "application/json", body)
	if isExists(err) {
		return nil
	}
	if err != nil {
		return err
	}
	now := metav1.Now()
	return cp.patchStatus(ctx, "/api/v1/nodes/"+name+"/status", mergePatch, corev1.NodeStatus{
		Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			Message: "kubetun test kubelet stand-in", LastHeartbeatTime: now, LastTransitionTime: now,
		}},
		Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: kubeletAddr}},
		DaemonEndpoints: corev1.NodeDaemonEndpoints{
			KubeletEndpoint: corev1.DaemonEndpoint{Port: KubeletPort},
		},
	})
}

// SetPodRunning posts the status a kubelet posts once Pod namespace/name runs:
// phase Running, podIP and podIPs from ips (the first is podIP), every
// container started, and conditions PodScheduled, Initialized,
// ContainersReady and Ready, the last two ready. The Pod must exist and have
// spec.nodeName (nothing else binds it). Calling it again replaces the status.
func (cp *ControlPlane) SetPodRunning(ctx context.Context, namespace, name string, ready bool, ips ...string) error {
	if len(ips) == 0 {
		return fmt.Errorf("controlplane: SetPodRunning %s/%s: no pod IP", namespace, name)
	}
	pod, err := cp.getPod(ctx, namespace, name)
	if err != nil {
		return err
	}
	if pod.Spec.NodeName == "" {
		return fmt.Errorf("controlplane: SetPodRunning %s/%s: spec.nodeName is empty; a kubelet only runs bound Pods", namespace, name)
	}
	now := metav1.Now()
	status := corev1.PodStatus{
		Phase:     corev1.PodRunning,
		StartTime: &now,
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
		},
	}
	status.Conditions = append(status.Conditions, readyConditions(ready, now)...)
	for _, ip := range ips {
		a, err := netip.ParseAddr(ip)
		if err != nil {
			return fmt.Errorf("controlplane: SetPodRunning %s/%s: pod IP: %w", namespace, name, err)
		}
		status.PodIPs = append(status.PodIPs, corev1.PodIP{IP: a.String()})
	}
	status.PodIP = status.PodIPs[0].IP
	started := true
	for _, c := range pod.Spec.Containers {
		status.ContainerStatuses = append(status.ContainerStatuses, corev1.ContainerStatus{
			Name:    c.Name,
			Image:   c.Image,
			ImageID: c.Image,
			Ready:   ready,
			Started: &started,
			State:   corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		})
	}
	// A merge patch replaces each list whole, so a second call leaves no stale IP.
	return cp.patchStatus(ctx, podPath(namespace, name)+"/status", mergePatch, status)
}

// SetPodReady flips Pod namespace/name's Ready and ContainersReady conditions
// and its containers' ready flags, as a kubelet does when a readiness probe
// starts or stops passing. Ready false is how a test makes a pod unhealthy;
// the EndpointSlice controller then marks its endpoint not ready.
func (cp *ControlPlane) SetPodReady(ctx context.Context, namespace, name string, ready bool) error {
	pod, err := cp.getPod(ctx, namespace, name)
	if err != nil {
		return err
	}
	// A strategic merge patch merges conditions by type and container
	// statuses by name, leaving the rest of the status alone. The container
	// statuses are maps: a ContainerStatus struct would also send its zero
	// image and restartCount.
	var containers []map[string]any
	for _, c := range pod.Spec.Containers {
		containers = append(containers, map[string]any{"name": c.Name, "ready": ready})
	}
	status := map[string]any{
		"conditions":        readyConditions(ready, metav1.Now()),
		"containerStatuses": containers,
	}
	return cp.patchStatus(ctx, podPath(namespace, name)+"/status", strategicPatch, status)
}

// FinishPodTermination deletes Pod namespace/name with grace period 0, as a
// kubelet does once a terminating Pod's containers have stopped; it is also
// how a test removes a Pod at once. A missing Pod is not an error.
func (cp *ControlPlane) FinishPodTermination(ctx context.Context, namespace, name string) error {
	body := []byte(`{"apiVersion":"v1","kind":"DeleteOptions","gracePeriodSeconds":0}`)
	_, err := cp.Do(ctx, http.MethodDelete, podPath(namespace, name), "application/json", body)
	var apiErr *APIError
	if errors.As(err, &apiErr) && apiErr.Code == http.StatusNotFound {
		return nil
	}
	return err
}

// readyConditions are the Ready and ContainersReady conditions.
func readyConditions(ready bool, now metav1.Time) []corev1.PodCondition {
	status, reason := corev1.ConditionTrue, ""
	if !ready {
		status, reason = corev1.ConditionFalse, "ContainersNotReady"
	}
	return []corev1.PodCondition{
		{Type: corev1.ContainersReady, Status: status, Reason: reason, LastTransitionTime: now},
		{Type: corev1.PodReady, Status: status, Reason: reason, LastTransitionTime: now},
	}
}

// getPod reads Pod namespace/name.
func (cp *ControlPlane) getPod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	data, err := cp.Do(ctx, http.MethodGet, podPath(namespace, name), "", nil)
	if err != nil {
		return nil, err
	}
	var pod corev1.Pod
	if err := json.Unmarshal(data, &pod); err != nil {
		return nil, fmt.Errorf("controlplane: decode Pod %s/%s: %w", namespace, name, err)
	}
	return &pod, nil
}

// patchStatus patches the status subresource at path with {"status": status}.
func (cp *ControlPlane) patchStatus(ctx context.Context, path, contentType string, status any) error {
	body, err := json.Marshal(map[string]any{"status": status})
	if err != nil {
		return fmt.Errorf("controlplane: marshal status for %s: %w", path, err)
	}
	_, err = cp.Do(ctx, http.MethodPatch, path, contentType, body)
	return err
}

// create POSTs obj to the collection at path; an object that exists already
// is not an error.
func (cp *ControlPlane) create(ctx context.Context, path string, obj any) error {
	body, err := json.Marshal(obj)
	if err != nil {
		return fmt.Errorf("controlplane: marshal object for %s: %w", path, err)
	}
	if _, err := cp.Do(ctx, http.MethodPost, path, "application/json", body); err != nil && !isExists(err) {
		return err
	}
	return nil
}

// isExists reports whether err is the API's 409 Conflict for an object that
// exists already.
func isExists(err error) bool {
	var apiErr *APIError
	return errors.As(err, &apiErr) && apiErr.Code == http.StatusConflict
}

func podPath(namespace, name string) string {
	return "/api/v1/namespaces/" + namespace + "/pods/" + name
}
