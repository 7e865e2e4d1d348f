package sandbox

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
)

// Kube is a real etcd and kube-apiserver (built by hack/kube/build.sh),
// listening on the loopback of the kernel in which the sandbox runs. Both
// run inside the test bed's guest, next to the agent: that keeps the
// networking trivial (127.0.0.1) and the guest self-contained, and it was
// measured fast enough (docs/demo.md).
type Kube struct {
	dir     string
	assets  string
	certDir string
	caFile  string
	port    int
	etcdURL string
	etcdP2P string
	admin   *rest.Config

	mu        sync.Mutex
	apiserver *exec.Cmd
	apiDone   chan struct{}
	etcd      *exec.Cmd
	etcdDone  chan struct{}
}

// StartKube starts etcd and kube-apiserver from the binaries in assets, with
// their state under dir, and waits until the API server is ready.
func StartKube(ctx context.Context, dir, assets string) (*Kube, error) {
	k := &Kube{dir: dir, assets: assets, certDir: filepath.Join(dir, "pki")}
	if err := os.MkdirAll(k.certDir, 0o700); err != nil {
		return nil, err
	}
	if err := k.writePKI(); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	k.etcdURL = fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	k.etcdP2P = fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	k.port = ports[2]
	if err := k.startEtcd(ctx); err != nil {
		k.Stop()
		return nil, err
	}
	if err := k.StartAPIServer(ctx); err != nil {
		k.Stop()
		return nil, err
	}
	return k, nil
}

func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func (k *Kube) start(name string, args ...string) (*exec.Cmd, chan struct{}, error) {
	log, err := os.OpenFile(filepath.Join(k.dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(filepath.Join(k.assets, name), args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = log.Close()
		return nil, nil, fmt.Errorf("start %s: %w", name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); _ = log.Close(); close(done) }()
	return cmd, done, nil
}

func (k *Kube) startEtcd(ctx context.Context) error {
	cmd, done, err := k.start("etcd",
		"--name=default",
		"--data-dir="+filepath.Join(k.dir, "etcd"),
		"--listen-client-urls="+k.etcdURL,
		"--advertise-client-urls="+k.etcdURL,
		"--listen-peer-urls="+k.etcdP2P,
		"--initial-advertise-peer-urls="+k.etcdP2P,
		"--initial-cluster=default="+k.etcdP2P,
		"--unsafe-no-fsync=true",
		"--quota-backend-bytes=268435456",
		"--log-level=warn",
	)
	if err != nil {
		return err
	}
	k.etcd, k.etcdDone = cmd, done
	return k.waitHealthy(ctx, "etcd", done, http.DefaultClient, k.etcdURL+"/health")
}

// StartAPIServer (re)starts kube-apiserver on its port and waits for
// /readyz. The port stays the same across restarts so clients reconnect.
func (k *Kube) StartAPIServer(ctx context.Context) error {
	cmd, done, err := k.start("kube-apiserver",
		"--etcd-servers="+k.etcdURL,
		"--bind-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(k.port),
		"--cert-dir="+k.certDir,
		"--tls-cert-file="+filepath.Join(k.certDir, "serving.crt"),
		"--tls-private-key-file="+filepath.Join(k.certDir, "serving.key"),
		"--client-ca-file="+k.caFile,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+filepath.Join(k.certDir, "sa.pub"),
		"--service-account-signing-key-file="+filepath.Join(k.certDir, "sa.key"),
		"--service-cluster-ip-range=10.96.0.0/24",
		// No controller-manager runs: nothing creates default
		// ServiceAccounts or maintains the kubernetes Service's endpoints.
		"--disable-admission-plugins=ServiceAccount",
		"--endpoint-reconciler-type=none",
		"--v=0",
	)
	if err != nil {
		return err
	}
	k.mu.Lock()
	k.apiserver, k.apiDone = cmd, done
	k.mu.Unlock()
	return k.waitHealthy(ctx, "kube-apiserver", done, k.httpsClient(), k.Host()+"/readyz")
}

// StopAPIServer stops kube-apiserver (an outage); etcd keeps the data.
func (k *Kube) StopAPIServer() {
	k.mu.Lock()
	cmd, done := k.apiserver, k.apiDone
	k.apiserver = nil
	k.mu.Unlock()
	stopProcess(cmd, done)
}

// Stop stops both.
func (k *Kube) Stop() {
	k.StopAPIServer()
	stopProcess(k.etcd, k.etcdDone)
	k.etcd = nil
}

func stopProcess(cmd *exec.Cmd, done chan struct{}) {
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

func (k *Kube) waitHealthy(ctx context.Context, name string, done chan struct{}, c *http.Client, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var last error
	for {
		resp, err := c.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(body))
		}
		last = err
		select {
		case <-done:
			return fmt.Errorf("%s exited:\n%s", name, k.Tail(name))
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %v\n%s", name, last, k.Tail(name))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Tail returns the end of a component's log (etcd, kube-apiserver).
func (k *Kube) Tail(name string) string {
	b, _ := os.ReadFile(filepath.Join(k.dir, name+".log"))
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// Host is the API server's URL.
func (k *Kube) Host() string { return fmt.Sprintf("https://127.0.0.1:%d", k.port) }

// CAFile is the cluster CA.
func (k *Kube) CAFile() string { return k.caFile }

func (k *Kube) httpsClient() *http.Client {
	pool := x509.NewCertPool()
	ca, _ := os.ReadFile(k.caFile)
	pool.AppendCertsFromPEM(ca)
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
}

// Admin is a client configuration of group system:masters.
func (k *Kube) Admin() *rest.Config {
	c := rest.CopyConfig(k.admin)
	c.Host = k.Host()
	return c
}

// WriteKubeconfig writes a kubeconfig that authenticates with token.
func (k *Kube) WriteKubeconfig(path, token string) error {
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: sandbox
  cluster: {server: %q, certificate-authority: %q}
users:
- name: agent
  user: {token: %q}
contexts:
- name: sandbox
  context: {cluster: sandbox, user: agent}
current-context: sandbox
`, k.Host(), k.caFile, token)
	return os.WriteFile(path, []byte(cfg), 0o600)
}

// resources maps the kinds of deploy/ and of the NAD CRD to their API
// resources, so the manifests are installed as they are.
var resources = map[string]schema.GroupVersionResource{
	"CustomResourceDefinition": {Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"},
	"Namespace":                {Version: "v1", Resource: "namespaces"},
	"ServiceAccount":           {Version: "v1", Resource: "serviceaccounts"},
	"ClusterRole":              {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
	"ClusterRoleBinding":       {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
	"DaemonSet":                {Group: "apps", Version: "v1", Resource: "daemonsets"},
}

// ApplyFile creates every object of a multi-document YAML file and returns
// them; CRDs are waited for until Established.
func (k *Kube) ApplyFile(ctx context.Context, path string) ([]*unstructured.Unstructured, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(k.Admin())
	if err != nil {
		return nil, err
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var out []*unstructured.Unstructured
	for doc := 1; ; doc++ {
		obj := &unstructured.Unstructured{}
		if err := dec.Decode(&obj.Object); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, fmt.Errorf("%s: document %d: %w", path, doc, err)
		}
		if len(obj.Object) == 0 {
			continue
		}
		gvr, ok := resources[obj.GetKind()]
		if !ok {
			return nil, fmt.Errorf("%s: document %d: kind %s not known to the sandbox", path, doc, obj.GetKind())
		}
		var ri dynamic.ResourceInterface = dyn.Resource(gvr)
		if ns := obj.GetNamespace(); ns != "" {
			ri = dyn.Resource(gvr).Namespace(ns)
		}
		if _, err := ri.Create(ctx, obj, metav1.CreateOptions{FieldValidation: "Strict"}); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("%s: document %d (%s %s): %w", path, doc, obj.GetKind(), obj.GetName(), err)
		}
		out = append(out, obj)
		if obj.GetKind() == "CustomResourceDefinition" {
			if err := waitEstablished(ctx, dyn, obj.GetName()); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

func waitEstablished(ctx context.Context, dyn dynamic.Interface, name string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		crd, err := dyn.Resource(resources["CustomResourceDefinition"]).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			for _, c := range conds {
				m, _ := c.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("CRD %s not established: %v", name, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// writePKI creates a CA, the API server's serving certificate for
// 127.0.0.1, an admin client certificate (system:masters) and the
// ServiceAccount signing key. 2048-bit RSA keys are generated once per
// sandbox; in the UML guest that takes a second or so.
func (k *Kube) writePKI() error {
	caKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sandbox-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true, IsCA: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, _ := x509.ParseCertificate(caDER)
	k.caFile = filepath.Join(k.certDir, "ca.crt")
	if err := writePEM(k.caFile, "CERTIFICATE", caDER); err != nil {
		return err
	}
	issue := func(name string, tmpl *x509.Certificate) (certPEM, keyPEM []byte, err error) {
		key, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, nil, err
		}
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return nil, nil, err
		}
		keyDER := x509.MarshalPKCS1PrivateKey(key)
		if err := writePEM(filepath.Join(k.certDir, name+".crt"), "CERTIFICATE", der); err != nil {
			return nil, nil, err
		}
		if err := writePEM(filepath.Join(k.certDir, name+".key"), "RSA PRIVATE KEY", keyDER); err != nil {
			return nil, nil, err
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: keyDER}), nil
	}
	if _, _, err := issue("serving", &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return err
	}
	adminCert, adminKey, err := issue("admin", &x509.Certificate{
		SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "admin", Organization: []string{"system:masters"}},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return err
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(k.certDir, "sa.key"), "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey)); err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(k.certDir, "sa.pub"), "PUBLIC KEY", pub); err != nil {
		return err
	}
	k.admin = &rest.Config{
		TLSClientConfig: rest.TLSClientConfig{CAFile: k.caFile, CertData: adminCert, KeyData: adminKey},
		QPS:             200, Burst: 400,
	}
	return nil
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}
