package server_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/axon-kv/axon/server"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

var opsCertSerial int64 = 1

func opsNewKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func opsNewCA(t testing.TB, name string) *testCA {
	t.Helper()
	key := opsNewKey(t)
	opsCertSerial++
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(opsCertSerial),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue signs a leaf certificate valid from notBefore to notAfter and
// returns its PEM certificate and key.
func (ca *testCA) issue(t testing.TB, cn string, server bool, notBefore, notAfter time.Time) (certPEM, keyPEM []byte) {
	t.Helper()
	key := opsNewKey(t)
	opsCertSerial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(opsCertSerial),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		tmpl.DNSNames = []string{"localhost"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func opsWriteFile(t testing.TB, path string, data []byte) string {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// tlsFiles are a CA and a server certificate on disk.
type tlsFiles struct {
	ca                 *testCA
	caFile, cert, key  string
	dir                string
	clientCert, client string // a good client certificate and key
}

func opsNewTLSFiles(t testing.TB) *tlsFiles {
	t.Helper()
	dir := t.TempDir()
	ca := opsNewCA(t, "axon-test-ca")
	now := time.Now()
	c, k := ca.issue(t, "axon-server", true, now.Add(-time.Hour), now.Add(24*time.Hour))
	cc, ck := ca.issue(t, "kube-apiserver", false, now.Add(-time.Hour), now.Add(24*time.Hour))
	return &tlsFiles{
		ca: ca, dir: dir,
		caFile:     opsWriteFile(t, filepath.Join(dir, "ca.pem"), ca.pem),
		cert:       opsWriteFile(t, filepath.Join(dir, "server.pem"), c),
		key:        opsWriteFile(t, filepath.Join(dir, "server-key.pem"), k),
		clientCert: opsWriteFile(t, filepath.Join(dir, "client.pem"), cc),
		client:     opsWriteFile(t, filepath.Join(dir, "client-key.pem"), ck),
	}
}

// startServer starts an Axon member with cfg (memory backend, quiet,
// loopback URLs by default) and closes it on cleanup.
func opsStartServer(t testing.TB, cfg server.Config) *server.Server {
	t.Helper()
	if cfg.Backend == "" {
		cfg.Backend = "memory"
	}
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if len(cfg.ListenClientURLs) == 0 {
		cfg.ListenClientURLs = []string{"http://127.0.0.1:0"}
	}
	if cfg.Logger == nil && !testing.Verbose() {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		s.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// tlsClient connects clientv3 over TLS; it does not wait for the
// connection.
func opsTLSClient(t testing.TB, endpoint string, tc *tls.Config) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, TLS: tc, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func opsHostOf(t testing.TB, u string) string {
	p, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	return p.Host
}

func TestTLSClientCertAuth(t *testing.T) {
	f := opsNewTLSFiles(t)
	s := opsStartServer(t, server.Config{
		ListenClientURLs: []string{"https://127.0.0.1:0", "http://127.0.0.1:0"},
		CertFile:         f.cert, KeyFile: f.key, TrustedCAFile: f.caFile, ClientCertAuth: true,
	})
	urls := s.ClientURLs()
	if !strings.HasPrefix(urls[0], "https://") || !strings.HasPrefix(urls[1], "http://") {
		t.Fatalf("client URLs %v", urls)
	}
	ctx := context.Background()

	good, err := server.ClientTLSConfig(f.clientCert, f.client, f.caFile)
	if err != nil {
		t.Fatal(err)
	}
	c := opsTLSClient(t, urls[0], good)
	if _, err := c.Put(ctx, "/registry/tls/ok", "v"); err != nil {
		t.Fatalf("put with a good client certificate: %v", err)
	}

	// The plain listener of the same member still serves.
	plain := opsTLSClient(t, urls[1], nil)
	if r, err := plain.Get(ctx, "/registry/tls/ok"); err != nil || len(r.Kvs) != 1 {
		t.Fatalf("get over http: %v %v", r, err)
	}

	now := time.Now()
	other := opsNewCA(t, "other-ca")
	wrongCert, wrongKey := other.issue(t, "intruder", false, now.Add(-time.Hour), now.Add(time.Hour))
	expCert, expKey := f.ca.issue(t, "expired", false, now.Add(-48*time.Hour), now.Add(-24*time.Hour))
	pair := func(c, k []byte) []tls.Certificate {
		p, err := tls.X509KeyPair(c, k)
		if err != nil {
			t.Fatal(err)
		}
		return []tls.Certificate{p}
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(f.ca.pem)
	bad := map[string]*tls.Config{
		"no certificate": {RootCAs: roots},
		"wrong CA":       {RootCAs: roots, Certificates: pair(wrongCert, wrongKey)},
		"expired":        {RootCAs: roots, Certificates: pair(expCert, expKey)},
	}
	for name, tc := range bad {
		t.Run(name, func(t *testing.T) {
			// Refused at the handshake: the server's alert ends the
			// connection before any HTTP/2 frame is read.
			opsAssertHandshakeRefused(t, opsHostOf(t, urls[0]), tc)

			c := opsTLSClient(t, urls[0], tc)
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			if _, err := c.Put(cctx, "/registry/tls/"+name, "v"); err == nil {
				t.Fatal("put without a trusted client certificate succeeded")
			}
		})
	}
	// Nothing was written by the refused clients.
	r, err := plain.Get(ctx, "/registry/tls/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) != 1 {
		t.Fatalf("keys after refused clients: %v", r.Kvs)
	}

	// TLS below 1.2 is refused.
	old := good.Clone()
	old.MinVersion, old.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	if conn, err := tls.Dial("tcp", opsHostOf(t, urls[0]), old); err == nil {
		conn.Close()
		t.Fatal("TLS 1.1 handshake succeeded")
	}

	// The gRPC health service answers over mTLS.
	cc, err := grpc.NewClient(opsHostOf(t, urls[0]), grpc.WithTransportCredentials(credentials.NewTLS(good)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	opsWaitFor(t, "gRPC health SERVING", func() bool {
		r, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		return err == nil && r.Status == healthpb.HealthCheckResponse_SERVING
	})
}

// assertHandshakeRefused dials with tc and expects the connection to fail
// during the handshake: with TLS 1.3 the client learns of the refusal on
// its first read.
func opsAssertHandshakeRefused(t *testing.T, addr string, tc *tls.Config) {
	t.Helper()
	tc = tc.Clone()
	tc.NextProtos = []string{"h2"}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, tc)
	if err != nil {
		return // refused in the handshake proper (TLS 1.2 style)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	_, err = conn.Read(make([]byte, 1))
	var alert tls.AlertError
	if err == nil || !(errors.As(err, &alert) || strings.Contains(err.Error(), "certificate") || strings.Contains(err.Error(), "reset")) {
		t.Fatalf("read after handshake: %v, want a TLS alert", err)
	}
}

func TestTLSCertificateReload(t *testing.T) {
	f := opsNewTLSFiles(t)
	s := opsStartServer(t, server.Config{
		ListenClientURLs: []string{"https://127.0.0.1:0"},
		CertFile:         f.cert, KeyFile: f.key, TrustedCAFile: f.caFile, ClientCertAuth: true,
	})
	addr := opsHostOf(t, s.ClientURLs()[0])
	good, err := server.ClientTLSConfig(f.clientCert, f.client, f.caFile)
	if err != nil {
		t.Fatal(err)
	}
	served := func() string {
		conn, err := tls.Dial("tcp", addr, good)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	if cn := served(); cn != "axon-server" {
		t.Fatalf("served certificate %q", cn)
	}
	// Rotate: new pair written over the files (key first; a handshake in
	// between keeps the old pair, which still loads... or not: either way
	// it must not break).
	now := time.Now()
	c, k := f.ca.issue(t, "axon-server-rotated", true, now.Add(-time.Hour), now.Add(24*time.Hour))
	opsWriteFile(t, f.key, k)
	served() // mismatched pair on disk: the previous one is kept
	opsWriteFile(t, f.cert, c)
	future := now.Add(time.Minute)
	os.Chtimes(f.cert, future, future)
	os.Chtimes(f.key, future, future)
	opsWaitFor(t, "rotated certificate served", func() bool { return served() == "axon-server-rotated" })

	cl := opsTLSClient(t, s.ClientURLs()[0], good)
	if _, err := cl.Put(context.Background(), "k", "v"); err != nil {
		t.Fatalf("put after rotation: %v", err)
	}
}

// waitFor polls cond for up to 30 s.
func opsWaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
