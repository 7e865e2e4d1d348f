package integration

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
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
	"testing"
	"time"

	"k8s.io/client-go/rest"
)

// kubeEnv is a real etcd and kube-apiserver, built by hack/kube/build.sh
// (KUBE_ASSETS names the directory holding both binaries), listening on
// 127.0.0.1 only. The admin client authenticates with a client certificate
// of group system:masters; the agent gets a real ServiceAccount token.
type kubeEnv struct {
	t         testing.TB
	dir       string
	assets    string
	etcdURL   string
	etcdPeer  string
	port      int
	admin     *rest.Config
	caFile    string
	certDir   string
	mu        sync.Mutex
	apiserver *exec.Cmd
	apiDone   chan struct{}
	etcd      *exec.Cmd
}

func kubeAssets(t testing.TB) string {
	dir := os.Getenv("KUBE_ASSETS")
	if dir == "" {
		t.Skip("KUBE_ASSETS is not set: run `make test-integration`, which builds kube-apiserver and etcd (hack/kube/build.sh) and sets it")
	}
	for _, b := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			t.Fatalf("KUBE_ASSETS=%s: %v", dir, err)
		}
	}
	return dir
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port
}

// startKube starts etcd and the API server and waits until /readyz is ok.
// Both are stopped when the test ends.
func startKube(t testing.TB) *kubeEnv {
	t.Helper()
	e := &kubeEnv{t: t, assets: kubeAssets(t), dir: t.TempDir()}
	e.certDir = filepath.Join(e.dir, "certs")
	if err := os.MkdirAll(e.certDir, 0o700); err != nil {
		t.Fatal(err)
	}
	e.writePKI()
	e.etcdURL = fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	e.etcdPeer = fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	e.startEtcd()
	e.port = freePort(t)
	e.startAPIServer()
	t.Cleanup(e.stop)
	return e
}

func (e *kubeEnv) startEtcd() {
	t := e.t
	cmd := exec.Command(filepath.Join(e.assets, "etcd"),
		"--name=default",
		"--data-dir="+filepath.Join(e.dir, "etcd"),
		"--listen-client-urls="+e.etcdURL,
		"--advertise-client-urls="+e.etcdURL,
		"--listen-peer-urls="+e.etcdPeer,
		"--initial-advertise-peer-urls="+e.etcdPeer,
		"--initial-cluster=default="+e.etcdPeer,
		"--unsafe-no-fsync=true",
		"--log-level=warn",
	)
	cmd.Stdout, cmd.Stderr = e.logFile("etcd.log"), e.logFile("etcd.log")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting etcd: %v", err)
	}
	e.etcd = cmd
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(e.etcdURL + "/health")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd not healthy after 30s: %v; log: %s", err, e.tail("etcd.log"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startAPIServer starts kube-apiserver on e.port (the same port after a
// restart, so clients reconnect) and waits for /readyz.
func (e *kubeEnv) startAPIServer() {
	t := e.t
	cmd := exec.Command(filepath.Join(e.assets, "kube-apiserver"),
		"--etcd-servers="+e.etcdURL,
		"--bind-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(e.port),
		"--cert-dir="+e.certDir,
		"--tls-cert-file="+filepath.Join(e.certDir, "serving.crt"),
		"--tls-private-key-file="+filepath.Join(e.certDir, "serving.key"),
		"--client-ca-file="+e.caFile,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+filepath.Join(e.certDir, "sa.pub"),
		"--service-account-signing-key-file="+filepath.Join(e.certDir, "sa.key"),
		"--service-cluster-ip-range=10.96.0.0/24",
		// No controller-manager runs: nothing creates default
		// ServiceAccounts or maintains the kubernetes Service endpoints.
		"--disable-admission-plugins=ServiceAccount",
		"--endpoint-reconciler-type=none",
		"--allow-privileged=true",
		"--v=0",
	)
	cmd.Stdout, cmd.Stderr = e.logFile("kube-apiserver.log"), e.logFile("kube-apiserver.log")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting kube-apiserver: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	e.mu.Lock()
	e.apiserver, e.apiDone = cmd, done
	e.mu.Unlock()

	client := e.httpsClient()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := client.Get(fmt.Sprintf("https://127.0.0.1:%d/readyz", e.port))
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			err = fmt.Errorf("%s: %s", resp.Status, body)
		}
		select {
		case <-done:
			t.Fatalf("kube-apiserver exited: %s", e.tail("kube-apiserver.log"))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("kube-apiserver not ready after 60s: %v; log: %s", err, e.tail("kube-apiserver.log"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stopAPIServer kills the API server (an outage); etcd keeps the data.
func (e *kubeEnv) stopAPIServer() {
	e.mu.Lock()
	cmd, done := e.apiserver, e.apiDone
	e.apiserver = nil
	e.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

func (e *kubeEnv) stop() {
	e.stopAPIServer()
	if e.etcd != nil {
		_ = e.etcd.Process.Kill()
		_ = e.etcd.Wait()
	}
}

func (e *kubeEnv) logFile(name string) io.Writer {
	f, err := os.OpenFile(filepath.Join(e.dir, name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = f.Close() })
	return f
}

func (e *kubeEnv) tail(name string) string {
	b, _ := os.ReadFile(filepath.Join(e.dir, name))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func (e *kubeEnv) host() string { return fmt.Sprintf("https://127.0.0.1:%d", e.port) }

func (e *kubeEnv) httpsClient() *http.Client {
	pool := x509.NewCertPool()
	ca, _ := os.ReadFile(e.caFile)
	pool.AppendCertsFromPEM(ca)
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
}

// tokenConfig is a client configuration authenticating with a bearer token.
func (e *kubeEnv) tokenConfig(token string) *rest.Config {
	return &rest.Config{
		Host:            e.host(),
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAFile: e.caFile},
		QPS:             100, Burst: 200,
	}
}

// writePKI creates a CA, the API server's serving certificate for
// 127.0.0.1, an admin client certificate (system:masters) and the
// ServiceAccount signing key.
func (e *kubeEnv) writePKI() {
	t := e.t
	caKey := newKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "integration-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	e.caFile = filepath.Join(e.certDir, "ca.crt")
	writePEM(t, e.caFile, "CERTIFICATE", caDER)

	issue := func(name string, tmpl *x509.Certificate) (certPEM, keyPEM []byte) {
		key := newKey(t)
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		writePEM(t, filepath.Join(e.certDir, name+".crt"), "CERTIFICATE", der)
		writePEM(t, filepath.Join(e.certDir, name+".key"), "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key))
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	}
	issue("serving", &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost"},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	adminCert, adminKey := issue("admin", &x509.Certificate{
		SerialNumber: big.NewInt(3),
		Subject:      pkix.Name{CommonName: "admin", Organization: []string{"system:masters"}},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	saKey := newKey(t)
	writePEM(t, filepath.Join(e.certDir, "sa.key"), "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey))
	pub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(e.certDir, "sa.pub"), "PUBLIC KEY", pub)
	e.admin = &rest.Config{
		Host: "", // set once the port is known
		TLSClientConfig: rest.TLSClientConfig{
			CAFile:   e.caFile,
			CertData: adminCert,
			KeyData:  adminKey,
		},
		QPS: 200, Burst: 400,
	}
}

func (e *kubeEnv) adminConfig() *rest.Config {
	c := rest.CopyConfig(e.admin)
	c.Host = e.host()
	return c
}

func newKey(t testing.TB) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	var b bytes.Buffer
	if err := pem.Encode(&b, &pem.Block{Type: typ, Bytes: der}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}
