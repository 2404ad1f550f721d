// Command build-controlplane builds (once) and caches the binaries of the
// control plane the e2e tests start: etcd, kube-apiserver,
// kube-controller-manager and kubectl, from the Go module proxy. It prints the
// binaries' paths. The cache is $KUBETUN_CACHE or ~/.cache/kubetun.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/kubetun/kubetun/test/controlplane"
)

func main() {
	log.SetFlags(log.Ltime)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	bins, err := controlplane.Build(ctx, log.Printf)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("etcd                    %s\nkube-apiserver          %s\nkube-controller-manager %s\nkubectl                 %s\n",
		bins.Etcd, bins.KubeAPIServer, bins.KubeControllerManager, bins.Kubectl)
}
