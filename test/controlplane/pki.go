package controlplane

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// pki is the key material of one control plane, written to files for the
// components' flags.
type pki struct {
	caCert     []byte // PEM; the kubeconfig's certificate-authority-data
	servingCrt string // kube-apiserver's --tls-cert-file, signed by the CA
	servingKey string // --tls-private-key-file
	saKey      string // RSA private key: --service-account-signing-key-file
	saPub      string // its public key: --service-account-key-file
	token      string // the admin's bearer token
	tokenFile  string // --token-auth-file: the token in group system:masters

	caFile           string          // the CA certificate: --kubelet-certificate-authority
	kubeletClientCrt string          // --kubelet-client-certificate, signed by the CA
	kubeletClientKey string          // --kubelet-client-key
	kubeletServing   tls.Certificate // the kubelet stand-in's, for 127.0.0.1
	caPool           *x509.CertPool  // the CA, as the kubelet's client CA
}

// writePKI generates a CA, a serving certificate for 127.0.0.1 and the
// in-cluster names of kube-apiserver (kubernetesIP is the first address of the
// service range, the "kubernetes" Service's), a service-account key pair and
// an admin token, into dir.
//
// The CA is ours rather than the self-signed one kube-apiserver writes into
// --cert-dir: the kubeconfig can then verify the server before it first
// starts, and across restarts.
func writePKI(dir string, kubernetesIP netip.Addr) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("controlplane: MkdirAll %s: %w", dir, err)
	}
	p := &pki{
		servingCrt: filepath.Join(dir, "apiserver.crt"),
		servingKey: filepath.Join(dir, "apiserver.key"),
		saKey:      filepath.Join(dir, "sa.key"),
		saPub:      filepath.Join(dir, "sa.pub"),
		tokenFile:  filepath.Join(dir, "tokens.csv"),

		caFile:           filepath.Join(dir, "ca.crt"),
		kubeletClientCrt: filepath.Join(dir, "apiserver-kubelet-client.crt"),
		kubeletClientKey: filepath.Join(dir, "apiserver-kubelet-client.key"),
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("controlplane: generate CA key: %w", err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kubetun-test-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("controlplane: create CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("controlplane: parse CA certificate: %w", err)
	}
	p.caCert = pemBlock("CERTIFICATE", caDER)

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("controlplane: generate serving key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), kubernetesIP.AsSlice()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("controlplane: create serving certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("controlplane: marshal serving key: %w", err)
	}

	// RSA, as kube-apiserver's default RS256 service-account tokens want.
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("controlplane: generate service-account key: %w", err)
	}
	saKeyDER, err := x509.MarshalPKCS8PrivateKey(saKey)
	if err != nil {
		return nil, fmt.Errorf("controlplane: marshal service-account key: %w", err)
	}
	saPubDER, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("controlplane: marshal service-account public key: %w", err)
	}

	// kube-apiserver's client certificate towards kubelets, and the kubelet
	// stand-in's serving certificate, as kubeadm makes them.
	clientCrt, clientKey, err := issue(ca, caKey, &x509.Certificate{
		SerialNumber: big.NewInt(3),
		Subject:      pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"kubeadm:cluster-admins"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, err
	}
	kubeletCrt, kubeletKey, err := issue(ca, caKey, &x509.Certificate{
		SerialNumber: big.NewInt(4),
		Subject:      pkix.Name{CommonName: "kubelet"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	})
	if err != nil {
		return nil, err
	}
	if p.kubeletServing, err = tls.X509KeyPair(kubeletCrt, kubeletKey); err != nil {
		return nil, fmt.Errorf("controlplane: kubelet serving key pair: %w", err)
	}
	p.caPool = x509.NewCertPool()
	p.caPool.AddCert(ca)

	tok := make([]byte, 24)
	if _, err := rand.Read(tok); err != nil {
		return nil, fmt.Errorf("controlplane: random token: %w", err)
	}
	p.token = hex.EncodeToString(tok)

	files := []struct {
		path string
		data []byte
	}{
		{p.caFile, p.caCert},
		{p.kubeletClientCrt, clientCrt},
		{p.kubeletClientKey, clientKey},
		{p.servingCrt, pemBlock("CERTIFICATE", der)},
		{p.servingKey, pemBlock("PRIVATE KEY", keyDER)},
		{p.saKey, pemBlock("PRIVATE KEY", saKeyDER)},
		{p.saPub, pemBlock("PUBLIC KEY", saPubDER)},
		// token,user,uid,"group,..."
		{p.tokenFile, []byte(p.token + `,admin,admin,"system:masters"` + "\n")},
	}
	for _, f := range files {
		if err := os.WriteFile(f.path, f.data, 0o600); err != nil {
			return nil, fmt.Errorf("controlplane: write %s: %w", f.path, err)
		}
	}
	return p, nil
}

// issue signs tmpl with the CA and returns the certificate and a new key,
// PEM.
func issue(ca *x509.Certificate, caKey *ecdsa.PrivateKey, tmpl *x509.Certificate) (crt, key []byte, err error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("controlplane: generate key for %s: %w", tmpl.Subject.CommonName, err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("controlplane: create certificate for %s: %w", tmpl.Subject.CommonName, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, nil, fmt.Errorf("controlplane: marshal key for %s: %w", tmpl.Subject.CommonName, err)
	}
	return pemBlock("CERTIFICATE", der), pemBlock("PRIVATE KEY", keyDER), nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
