package sandbox

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
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

// Kube is a real etcd and kube-apiserver (built by hack/kube/build.sh).
// They run on the host, not in the test bed's guest: in User-Mode Linux,
// where every system call is a ptrace round trip, the API server did not
// even become ready in four minutes, against five seconds on the host (see
// docs/demo.md). The guest reaches the API server over a tap device (UML's
// tuntap transport) in a private network namespace of the host; see
// hack/sandbox/run.sh and Info.
type Kube struct {
	dir     string
	assets  string
	certDir string
	caFile  string
	ip      string // the API server's address
	port    int
	etcdURL string
	etcdP2P string
	admin   *rest.Config
	// control is, for a Kube running on the other side of the bed's tap
	// (see Info), the URL of its control endpoint.
	control string

	mu        sync.Mutex
	apiserver *exec.Cmd
	apiDone   chan struct{}
	etcd      *exec.Cmd
	etcdDone  chan struct{}
}

// StartKube starts etcd and kube-apiserver from the binaries in assets, with
// their state under dir, the API server listening on ip, and waits until
// it is ready.
func StartKube(ctx context.Context, dir, assets, ip string) (*Kube, error) {
	k := &Kube{dir: dir, assets: assets, certDir: filepath.Join(dir, "pki"), ip: ip}
	if err := os.MkdirAll(k.certDir, 0o700); err != nil {
		return nil, err
	}
	if err := k.writePKI(); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	ports, err := freePorts(ip, 3)
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

func freePorts(ip string, n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", ip+":0")
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
	if k.control != "" {
		return k.remote(ctx, "start")
	}
	cmd, done, err := k.start("kube-apiserver",
		"--etcd-servers="+k.etcdURL,
		"--bind-address="+k.ip,
		// There may be no default route to pick an address from.
		"--advertise-address="+k.ip,
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
	if k.control != "" {
		_ = k.remote(context.Background(), "stop")
		return
	}
	k.mu.Lock()
	cmd, done := k.apiserver, k.apiDone
	k.apiserver = nil
	k.mu.Unlock()
	stopProcess(cmd, done)
}

// Stop stops both.
func (k *Kube) Stop() {
	if k.control != "" {
		return // its owner on the host stops it
	}
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
	ctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
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
		case <-done: // nil for a remote one: never
			return fmt.Errorf("%s exited:\n%s", name, k.Tail(name))
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w\n%s", name, last, k.Tail(name))
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
func (k *Kube) Host() string {
	return fmt.Sprintf("https://%s", net.JoinHostPort(k.ip, strconv.Itoa(k.port)))
}

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

// TokenConfig is a client configuration that authenticates with a bearer
// token (a ServiceAccount's), for running the agent in-process.
func (k *Kube) TokenConfig(token string) *rest.Config {
	return &rest.Config{
		Host:            k.Host(),
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAFile: k.caFile},
		QPS:             100, Burst: 200,
	}
}

// InstallDeploy installs what a cluster running the agent has: the CRDs of
// repo's deploy/crds, the NAD CRD (as multus ships it) and everything in
// deploy/agent/deploy.yml (namespace, ServiceAccount, RBAC, DaemonSet). It
// returns deploy.yml's objects.
func (k *Kube) InstallDeploy(ctx context.Context, repo string) ([]*unstructured.Unstructured, error) {
	dir := filepath.Join(repo, "deploy", "crds")
	crds, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, fmt.Errorf("CRDs in %s: %w", dir, err)
	}
	if len(crds) == 0 {
		return nil, fmt.Errorf("no CRDs in %s", dir)
	}
	for _, f := range crds {
		if _, err := k.ApplyFile(ctx, f); err != nil {
			return nil, err
		}
	}
	if _, err := k.ApplyYAML(ctx, "the NAD CRD", nadCRD); err != nil {
		return nil, err
	}
	return k.ApplyFile(ctx, filepath.Join(repo, "deploy", "agent", "deploy.yml"))
}

// ApplyFile creates every object of a multi-document YAML file and returns
// them; CRDs are waited for until Established.
func (k *Kube) ApplyFile(ctx context.Context, path string) ([]*unstructured.Unstructured, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return k.ApplyYAML(ctx, path, data)
}

// ApplyYAML is ApplyFile for data read from source (named in errors).
func (k *Kube) ApplyYAML(ctx context.Context, source string, data []byte) ([]*unstructured.Unstructured, error) {
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
			return nil, fmt.Errorf("%s: document %d: %w", source, doc, err)
		}
		if len(obj.Object) == 0 {
			continue
		}
		gvr, ok := resources[obj.GetKind()]
		if !ok {
			return nil, fmt.Errorf("%s: document %d: kind %s not known to the sandbox", source, doc, obj.GetKind())
		}
		var ri dynamic.ResourceInterface = dyn.Resource(gvr)
		if ns := obj.GetNamespace(); ns != "" {
			ri = dyn.Resource(gvr).Namespace(ns)
		}
		if _, err := ri.Create(ctx, obj, metav1.CreateOptions{FieldValidation: "Strict"}); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("%s: document %d (%s %s): %w", source, doc, obj.GetKind(), obj.GetName(), err)
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
			if err == nil {
				err = ctx.Err()
			}
			return fmt.Errorf("CRD %s not established: %w", name, err)
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
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP(k.ip)}, DNSNames: []string{"localhost"},
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

// Info is what the guest needs to reach a Kube running on the host: written
// by the host side (test/sandbox/kubehost) as JSON, read in the guest. Paths
// are the host's; the guest sees them under /host.
type Info struct {
	Host      string `json:"host"`
	CAFile    string `json:"caFile"`
	AdminCert string `json:"adminCert"`
	AdminKey  string `json:"adminKey"`
	Control   string `json:"control"`
	// GuestAddress is the address (CIDR) the guest gives its eth0.
	GuestAddress string `json:"guestAddress"`
}

// Info describes k for the guest, with control the URL of its control
// endpoint (see ServeControl).
func (k *Kube) Info(control, guestAddress string) Info {
	return Info{Host: k.Host(), CAFile: k.caFile, AdminCert: filepath.Join(k.certDir, "admin.crt"),
		AdminKey: filepath.Join(k.certDir, "admin.key"), Control: control, GuestAddress: guestAddress}
}

// ServeControl serves POST /apiserver/stop and /apiserver/start on l, so
// that tests in the guest can take the API server down and up.
func (k *Kube) ServeControl(l net.Listener) error {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /apiserver/stop", func(w http.ResponseWriter, _ *http.Request) {
		k.StopAPIServer()
		fmt.Fprintln(w, "stopped")
	})
	mux.HandleFunc("POST /apiserver/start", func(w http.ResponseWriter, r *http.Request) {
		if err := k.StartAPIServer(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "started")
	})
	return (&http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}).Serve(l)
}

// RemoteKube is the guest's handle on a Kube described by the JSON file at
// path (a host path seen under root, "/host" in the bed).
func RemoteKube(path, root string) (*Kube, Info, error) {
	var info Info
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, info, err
	}
	if err := json.Unmarshal(b, &info); err != nil {
		return nil, info, fmt.Errorf("%s: %w", path, err)
	}
	cert, err := os.ReadFile(root + info.AdminCert)
	if err != nil {
		return nil, info, err
	}
	key, err := os.ReadFile(root + info.AdminKey)
	if err != nil {
		return nil, info, err
	}
	u, err := url.Parse(info.Host)
	if err != nil {
		return nil, info, err
	}
	port, _ := strconv.Atoi(u.Port())
	k := &Kube{caFile: root + info.CAFile, ip: u.Hostname(), port: port, control: info.Control,
		admin: &rest.Config{TLSClientConfig: rest.TLSClientConfig{CAFile: root + info.CAFile, CertData: cert, KeyData: key}, QPS: 200, Burst: 400}}
	return k, info, nil
}

func (k *Kube) remote(ctx context.Context, what string) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, k.control+"/apiserver/"+what, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s the API server: %w", what, err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s the API server: %s: %s", what, resp.Status, body)
	}
	return nil
}
