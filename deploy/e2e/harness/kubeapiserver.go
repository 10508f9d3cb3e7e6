package harness

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// KubeAPIServerConfig describes one kube-apiserver process.
type KubeAPIServerConfig struct {
	Dir string
	// EtcdServers is --etcd-servers (one URL).
	EtcdServers string
	// Overrides are --etcd-servers-overrides entries, e.g. "/events#http://...".
	Overrides []string
	// CompactionInterval is --etcd-compaction-interval (0: the default 5m).
	CompactionInterval time.Duration
	// EventTTL is --event-ttl (0: the default 1h).
	EventTTL time.Duration
	// ExtraArgs are appended to the command line.
	ExtraArgs []string
}

// KubeAPIServer is a running kube-apiserver with an admin client.
type KubeAPIServer struct {
	Port    int
	LogPath string
	// Config authenticates as user "e2e-admin" in group system:masters
	// (bearer token) and trusts the self-signed serving certificate.
	Config *rest.Config
	// Args is the command line it was started with.
	Args []string

	cmd    *exec.Cmd
	exited chan struct{}
}

// StartKubeAPIServer generates service-account keys and an admin token,
// starts kube-apiserver and waits for /readyz. It is stopped when the test
// ends.
func StartKubeAPIServer(t testing.TB, cfg KubeAPIServerConfig) *KubeAPIServer {
	t.Helper()
	bin := KubeAPIServerBin(t)
	dir := filepath.Join(cfg.Dir, "kube-apiserver")
	certDir := filepath.Join(dir, "certs")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		t.Fatal(err)
	}
	saKey, saPub := filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	if err := writeServiceAccountKeys(saKey, saPub); err != nil {
		t.Fatal(err)
	}
	token := randomHex(16)
	tokenFile := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokenFile, []byte(token+`,e2e-admin,e2e-admin-uid,"system:masters"`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	k := &KubeAPIServer{Port: FreePort(t), LogPath: filepath.Join(cfg.Dir, "kube-apiserver.log")}
	args := []string{
		"--etcd-servers=" + cfg.EtcdServers,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", k.Port),
		"--cert-dir=" + certDir,
		"--token-auth-file=" + tokenFile,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + saPub,
		"--service-account-signing-key-file=" + saKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--endpoint-reconciler-type=none",
		"--profiling=false",
		"--v=1",
	}
	if len(cfg.Overrides) > 0 {
		args = append(args, "--etcd-servers-overrides="+strings.Join(cfg.Overrides, ","))
	}
	if cfg.CompactionInterval > 0 {
		args = append(args, "--etcd-compaction-interval="+cfg.CompactionInterval.String())
	}
	if cfg.EventTTL > 0 {
		args = append(args, "--event-ttl="+cfg.EventTTL.String())
	}
	args = append(args, cfg.ExtraArgs...)
	k.Args = args

	logf, err := os.Create(k.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(logf, "===== %s %s\n", bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	k.cmd = cmd
	k.exited = make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(k.exited)
	}()
	t.Cleanup(k.Stop)

	k.Config = &rest.Config{
		Host:            fmt.Sprintf("https://127.0.0.1:%d", k.Port),
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAFile: filepath.Join(certDir, "apiserver.crt")},
		QPS:             1000,
		Burst:           2000,
		Timeout:         60 * time.Second,
	}
	if err := k.WaitReady(180 * time.Second); err != nil {
		t.Fatalf("kube-apiserver: %v\n--- log tail:\n%s", err, tail(k.LogPath, 40))
	}
	return k
}

// Exited reports whether the process has exited.
func (k *KubeAPIServer) Exited() bool {
	select {
	case <-k.exited:
		return true
	default:
		return false
	}
}

// Readyz performs one GET /readyz and returns nil on 200.
func (k *KubeAPIServer) Readyz(ctx context.Context) error {
	if _, err := os.Stat(k.Config.TLSClientConfig.CAFile); err != nil {
		return fmt.Errorf("serving certificate not written yet")
	}
	cs, err := kubernetes.NewForConfig(k.Config)
	if err != nil {
		return err
	}
	body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").Param("verbose", "1").DoRaw(ctx)
	if err != nil {
		return fmt.Errorf("%v: %s", err, lastFailed(string(body)))
	}
	return nil
}

func lastFailed(body string) string {
	var bad []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "[-]") {
			bad = append(bad, l)
		}
	}
	return strings.Join(bad, "; ")
}

// WaitReady polls /readyz until it answers 200.
func (k *KubeAPIServer) WaitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if k.Exited() {
			return errors.New("kube-apiserver exited")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		last = k.Readyz(ctx)
		cancel()
		if last == nil {
			return nil
		}
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("/readyz not ok after %s: %v", timeout, last)
}

// Clientset returns a typed client.
func (k *KubeAPIServer) Clientset(t testing.TB) *kubernetes.Clientset {
	t.Helper()
	cs, err := kubernetes.NewForConfig(k.Config)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// Stop terminates kube-apiserver.
func (k *KubeAPIServer) Stop() {
	if k.cmd == nil || k.Exited() {
		return
	}
	k.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-k.exited:
	case <-time.After(20 * time.Second):
		k.cmd.Process.Signal(syscall.SIGKILL)
		<-k.exited
	}
}

// LogContains reports how many lines of the kube-apiserver log contain s.
func (k *KubeAPIServer) LogContains(s string) int {
	b, err := os.ReadFile(k.LogPath)
	if err != nil {
		return 0
	}
	return strings.Count(string(b), s)
}

func writeServiceAccountKeys(keyPath, pubPath string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	if err := os.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	return os.WriteFile(pubPath, pubPEM, 0o644)
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
