// Package testenv holds test-only helpers that start real servers — an
// embedded etcd member and an Axon server — inside the test process and hand
// back connected etcd v3 clients. Everything started here is torn down by
// t.Cleanup; nothing in this package is meant for production code.
package testenv

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/axon-kv/axon/server"
)

// readyTimeout bounds how long StartEtcd waits for the member to be ready.
const readyTimeout = 60 * time.Second

// dialTimeout is used for every client this package creates.
const dialTimeout = 5 * time.Second

// EtcdOption adjusts the embedded etcd configuration used by StartEtcd.
type EtcdOption func(*embed.Config)

// WithEtcdProgressNotifyInterval sets etcd's watch progress notify interval.
func WithEtcdProgressNotifyInterval(d time.Duration) EtcdOption {
	return func(c *embed.Config) { c.WatchProgressNotifyInterval = d }
}

// WithEtcdMaxTxnOps sets etcd's --max-txn-ops.
func WithEtcdMaxTxnOps(n uint) EtcdOption {
	return func(c *embed.Config) { c.MaxTxnOps = n }
}

// WithEtcdMaxRequestBytes sets etcd's --max-request-bytes.
func WithEtcdMaxRequestBytes(n uint) EtcdOption {
	return func(c *embed.Config) { c.MaxRequestBytes = n }
}

// WithEtcdAutoCompaction sets etcd's --auto-compaction-mode ("periodic" or
// "revision") and --auto-compaction-retention (a duration such as "5m" for
// periodic mode, a revision count such as "1000" for revision mode).
func WithEtcdAutoCompaction(mode, retention string) EtcdOption {
	return func(c *embed.Config) {
		c.AutoCompactionMode = mode
		c.AutoCompactionRetention = retention
	}
}

// WithEtcdConfig runs f on the embed configuration after every default has
// been set, for settings that have no dedicated option.
func WithEtcdConfig(f func(*embed.Config)) EtcdOption {
	return f
}

// StartEtcd starts a single-member etcd in the test process and returns a
// client connected to it. The member's data lives in t.TempDir(), its client
// and peer listeners are on free loopback ports (advertised as they are),
// fsync is off, and its logs (error level only) go to etcd.log in a
// temporary directory. It fails the test if the member is not ready within
// 60 s. The member and the client are closed on t.Cleanup.
func StartEtcd(t testing.TB, opts ...EtcdOption) *clientv3.Client {
	t.Helper()

	// Free ports are found by binding port 0 and closing the listener, so
	// that the member advertises its real URLs (MemberList, Status). If
	// another process takes a port in between, start again on new ports.
	var (
		e   *embed.Etcd
		err error
	)
	for attempt := 0; ; attempt++ {
		e, err = embed.StartEtcd(etcdConfig(t, opts))
		if err == nil || attempt == 4 || !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	if err != nil {
		t.Fatalf("testenv: start etcd: %v", err)
	}
	closed := false
	closeEtcd := func() {
		if !closed {
			closed = true
			e.Close()
		}
	}

	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		closeEtcd()
		t.Fatalf("testenv: etcd failed before becoming ready: %v", err)
	case <-time.After(readyTimeout):
		e.Server.Stop()
		closeEtcd()
		t.Fatalf("testenv: etcd not ready after %v", readyTimeout)
	}
	t.Cleanup(closeEtcd)

	if len(e.Clients) == 0 {
		t.Fatal("testenv: etcd has no client listener")
	}
	return NewClient(t, "http://"+e.Clients[0].Addr().String())
}

// etcdConfig is a single-member configuration on fresh loopback ports with
// its data in a new temporary directory.
func etcdConfig(t testing.TB, opts []EtcdOption) *embed.Config {
	t.Helper()
	dir := t.TempDir()
	cfg := embed.NewConfig()
	cfg.Name = "testenv"
	cfg.Dir = filepath.Join(dir, "data")
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(dir, "etcd.log")}
	// The data is throw-away; skipping fsync makes writes much cheaper.
	cfg.UnsafeNoFsync = true

	cu := mustURL(t, "http://"+freeAddr(t))
	pu := mustURL(t, "http://"+freeAddr(t))
	cfg.ListenClientUrls = []url.URL{cu}
	cfg.AdvertiseClientUrls = []url.URL{cu}
	cfg.ListenPeerUrls = []url.URL{pu}
	cfg.AdvertisePeerUrls = []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	initial := cfg.InitialCluster

	for _, o := range opts {
		o(cfg)
	}
	// An option may rename the member or move its peer URL.
	if cfg.InitialCluster == initial {
		cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	}
	return cfg
}

// freeAddr returns a loopback host:port that was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: find a free port: %v", err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatalf("testenv: find a free port: %v", err)
	}
	return addr
}

// StartAxon starts an Axon server with cfg and returns it with a client
// connected to it. Unset fields are filled for tests: ListenClientURLs
// defaults to one loopback URL on a free port, Backend to "memory", DataDir
// to t.TempDir(), and Logger to a discarding logger unless the test runs with
// -v (then the server's own default applies). On t.Cleanup the client is
// closed, then the server.
func StartAxon(t testing.TB, cfg server.Config) (*server.Server, *clientv3.Client) {
	t.Helper()

	if len(cfg.ListenClientURLs) == 0 {
		cfg.ListenClientURLs = []string{"http://127.0.0.1:0"}
	}
	if cfg.Backend == "" {
		cfg.Backend = "memory"
	}
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if cfg.Logger == nil && !testing.Verbose() {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}

	s, err := server.New(cfg)
	if err != nil {
		t.Fatalf("testenv: new axon server: %v", err)
	}
	if err := s.Start(); err != nil {
		_ = s.Close()
		t.Fatalf("testenv: start axon server: %v", err)
	}
	// Registered before NewClient's cleanup, so it runs after it: the client
	// is closed first, then the server.
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("testenv: close axon server: %v", err)
		}
	})

	urls := s.ClientURLs()
	if len(urls) == 0 {
		t.Fatal("testenv: axon server reports no client URLs (is it serving?)")
	}
	return s, NewClient(t, urls...)
}

// NewClient returns an etcd v3 client for endpoints (URLs such as
// "http://127.0.0.1:2379") with a 5 s dial timeout and a silent logger. It is
// closed on t.Cleanup.
func NewClient(t testing.TB, endpoints ...string) *clientv3.Client {
	t.Helper()
	if len(endpoints) == 0 {
		t.Fatal("testenv: NewClient needs at least one endpoint")
	}
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: dialTimeout,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("testenv: new client for %s: %v", strings.Join(endpoints, ","), err)
	}
	t.Cleanup(func() {
		// Closing an already-closed client, or one whose server went away,
		// returns context.Canceled; that is not a test failure.
		if err := c.Close(); err != nil && !errors.Is(err, context.Canceled) {
			t.Logf("testenv: close client: %v", err)
		}
	})
	return c
}

func mustURL(t testing.TB, s string) url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatalf("testenv: parse %q: %v", s, err)
	}
	return *u
}
