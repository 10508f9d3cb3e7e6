package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// Transport security for https:// client URLs, as kube-apiserver uses it:
// a server certificate and key, and (with a trusted CA file or
// --client-cert-auth) mandatory client certificates signed by that CA.
// TLS 1.2 is the minimum. The files are checked on every handshake and
// re-read when one of them changed (modification time or size), so a
// rotated certificate applies to new connections without a restart; a
// rotation caught half-written keeps the previous pair until the files
// parse again.

// certStore hands out the current server TLS configuration.
type certStore struct {
	certFile, keyFile, caFile string
	requireClientCert         bool
	lg                        *slog.Logger

	mu     sync.Mutex
	stamps [3]fileStamp
	cur    *tls.Config
	// failed is the stamp set whose load failed, so that it is logged once.
	failed [3]fileStamp
}

// fileStamp identifies one version of a file.
type fileStamp struct {
	mod  time.Time
	size int64
}

func stampOf(path string) (fileStamp, error) {
	if path == "" {
		return fileStamp{}, nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{fi.ModTime(), fi.Size()}, nil
}

// newCertStore loads the files once; an error here is a configuration
// error.
func newCertStore(cfg Config) (*certStore, error) {
	if cfg.CertFile == "" || cfg.KeyFile == "" {
		return nil, errors.New("https:// client URLs need --cert-file and --key-file (TLS)")
	}
	if cfg.ClientCertAuth && cfg.TrustedCAFile == "" {
		return nil, errors.New("--client-cert-auth needs --trusted-ca-file")
	}
	cs := &certStore{
		certFile:          cfg.CertFile,
		keyFile:           cfg.KeyFile,
		caFile:            cfg.TrustedCAFile,
		requireClientCert: cfg.ClientCertAuth || cfg.TrustedCAFile != "",
		lg:                cfg.Logger,
	}
	stamps, err := cs.stat()
	if err != nil {
		return nil, err
	}
	c, err := cs.load()
	if err != nil {
		return nil, err
	}
	cs.cur, cs.stamps = c, stamps
	return cs, nil
}

func (cs *certStore) stat() ([3]fileStamp, error) {
	var st [3]fileStamp
	for i, p := range []string{cs.certFile, cs.keyFile, cs.caFile} {
		s, err := stampOf(p)
		if err != nil {
			return st, err
		}
		st[i] = s
	}
	return st, nil
}

// load reads the files into a fresh per-connection configuration.
func (cs *certStore) load() (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(cs.certFile, cs.keyFile)
	if err != nil {
		return nil, fmt.Errorf("load --cert-file/--key-file: %w", err)
	}
	c := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{pair},
		NextProtos:   []string{"h2"}, // gRPC is HTTP/2; clients check ALPN
		ClientAuth:   tls.NoClientCert,
	}
	if cs.caFile != "" {
		pem, err := os.ReadFile(cs.caFile)
		if err != nil {
			return nil, fmt.Errorf("read --trusted-ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--trusted-ca-file %s: no PEM certificates", cs.caFile)
		}
		c.ClientCAs = pool
	}
	if cs.requireClientCert {
		c.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return c, nil
}

// current returns the configuration for a new connection, reloading the
// files first when they changed.
func (cs *certStore) current() *tls.Config {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	st, err := cs.stat()
	if err != nil || st == cs.stamps || st == cs.failed {
		if err != nil && cs.failed != st {
			cs.failed = st
			cs.lg.Warn("TLS files unreadable; keeping the loaded certificate", "err", err)
		}
		return cs.cur
	}
	c, err := cs.load()
	if err != nil {
		cs.failed = st
		cs.lg.Warn("TLS files changed but do not load; keeping the previous certificate", "err", err)
		return cs.cur
	}
	cs.cur, cs.stamps, cs.failed = c, st, [3]fileStamp{}
	cs.lg.Info("reloaded TLS certificate", "cert-file", cs.certFile)
	return c
}

// serverConfig is the listener configuration: every handshake asks for
// the current files.
func (cs *certStore) serverConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2"},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return cs.current(), nil
		},
	}
}

// tlsListener marks the connections it accepts as needing the TLS
// handshake, so that one gRPC server can serve http:// and https:// URLs.
type tlsListener struct{ net.Listener }

type tlsMarkedConn struct{ net.Conn }

func (l tlsListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return tlsMarkedConn{c}, nil
}

// listenerCreds does the TLS handshake on connections from https://
// listeners and none on the others.
type listenerCreds struct {
	tls credentials.TransportCredentials
}

func newListenerCreds(cs *certStore) credentials.TransportCredentials {
	return listenerCreds{tls: credentials.NewTLS(cs.serverConfig())}
}

func (c listenerCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if m, ok := conn.(tlsMarkedConn); ok {
		return c.tls.ServerHandshake(m.Conn)
	}
	return insecure.NewCredentials().ServerHandshake(conn)
}

func (c listenerCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("axon: server-side credentials used to dial")
}

func (c listenerCreds) Info() credentials.ProtocolInfo { return c.tls.Info() }

func (c listenerCreds) Clone() credentials.TransportCredentials {
	return listenerCreds{tls: c.tls.Clone()}
}

func (c listenerCreds) OverrideServerName(string) error { return nil }

// ClientTLSConfig builds the client side for the axon subcommands and for
// forwarding to a leader over https: caFile verifies the server (system
// roots when empty), certFile and keyFile are the client certificate
// (none when empty).
func ClientTLSConfig(certFile, keyFile, caFile string) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if certFile != "" || keyFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		c.Certificates = []tls.Certificate{pair}
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: no PEM certificates", caFile)
		}
		c.RootCAs = pool
	}
	return c, nil
}

// DialCreds are the transport credentials a node uses to reach another
// node's client URL (write forwarding): TLS with the node's own
// certificate as client certificate and the trusted CA for https://
// addresses, plain text otherwise.
func (s *Server) DialCreds(addr string) credentials.TransportCredentials {
	if len(addr) < 8 || addr[:8] != "https://" {
		return insecure.NewCredentials()
	}
	c, err := ClientTLSConfig(s.cfg.CertFile, s.cfg.KeyFile, s.cfg.TrustedCAFile)
	if err != nil {
		s.cfg.Logger.Warn("TLS for forwarding", "err", err)
		c = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return credentials.NewTLS(c)
}
