package server

import (
	"log/slog"
	"math"
	"time"

	"github.com/axon-kv/axon/backend"
)

// Config is everything `axon serve` can set. Defaults mirror etcd's.
type Config struct {
	// ListenClientURLs are http:// (or later https://) URLs; port 0 picks a
	// free port, see Server.ClientURLs.
	ListenClientURLs []string
	// DataDir is created if missing (ignored by the memory backend).
	DataDir string
	// Backend is "badger" (default) or "memory" (Badger in-memory mode).
	Backend string
	// MaxRequestBytes is etcd's --max-request-bytes (1.5 MiB).
	MaxRequestBytes int
	// MaxTxnOps is etcd's --max-txn-ops (128).
	MaxTxnOps int
	// WatchProgressNotifyInterval is etcd's
	// --experimental-watch-progress-notify-interval (10m).
	WatchProgressNotifyInterval time.Duration
	// AutoCompactionRetention keeps this much history (periodic mode); 0 off.
	AutoCompactionRetention time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger

	// PDEndpoints are the TiKV placement driver addresses (--backend tikv).
	PDEndpoints []string
	// NodeID names this node among those sharing a backend.
	NodeID string
	// AdvertiseClientURL is where other nodes forward writes to this one
	// when it leads (defaults to the first listen URL).
	AdvertiseClientURL string
	// LeaderLease is how long a leader holds leadership without renewing.
	LeaderLease time.Duration
	// FollowerPoll is how often a follower tails the revision log.
	FollowerPoll time.Duration
	// MaxGroupRequests bounds how many writes share one commit.
	MaxGroupRequests int
	// SharedBackend, when set, is used instead of opening one, and the node
	// elects a leader among those sharing it (tests run several nodes on
	// one mock TiKV cluster this way). Its owner closes it.
	SharedBackend backend.Backend

	// Operations (see tls.go, http.go, quota.go, limits.go, metrics.go).

	// CertFile and KeyFile are the server certificate for https:// client
	// URLs (etcd's --cert-file, --key-file); reloaded when they change.
	CertFile, KeyFile string
	// TrustedCAFile verifies client certificates (--trusted-ca-file). As in
	// etcd, setting it (or ClientCertAuth) makes a client certificate
	// signed by it mandatory on https:// URLs.
	TrustedCAFile string
	// ClientCertAuth is etcd's --client-cert-auth.
	ClientCertAuth bool
	// ListenMetricsURLs are plain http:// URLs serving /metrics, /health,
	// /livez, /readyz (and /debug/pprof with EnablePprof).
	ListenMetricsURLs []string
	// EnablePprof serves net/http/pprof under /debug/pprof/ on the metrics
	// URLs.
	EnablePprof bool
	// MaxConcurrentStreams bounds concurrent gRPC streams per client
	// connection (etcd's --max-concurrent-streams); 0 means math.MaxUint32.
	MaxConcurrentStreams uint32
	// MaxWatchersPerStream bounds the watchers one Watch stream may hold;
	// 0 means unlimited, as in etcd.
	MaxWatchersPerStream int
	// WriteQueueLength bounds the writer's queue (revision.Options.
	// QueueLength); writers beyond it wait. 0 means the writer's default.
	WriteQueueLength int
	// QuotaBackendBytes raises the NOSPACE alarm when the backend grows
	// past it (etcd's --quota-backend-bytes); 0 means 2 GiB, negative
	// turns the quota off.
	QuotaBackendBytes int64
	// MaxReadBytesInFlight bounds the memory read answers hold while they
	// are built and sent (see readBudget); 0 means the default, negative
	// no bound.
	MaxReadBytesInFlight int64
	// ReadWaitTimeout is how long a read waits for room in
	// MaxReadBytesInFlight before it fails with "too many requests".
	ReadWaitTimeout time.Duration
}

// Defaults as etcd has them.
const (
	DefaultListenClientURL             = "http://127.0.0.1:2379"
	DefaultDataDir                     = "./axon-data"
	DefaultBackend                     = "badger"
	DefaultMaxRequestBytes             = 1536 * 1024
	DefaultMaxTxnOps                   = 128
	DefaultWatchProgressNotifyInterval = 10 * time.Minute
	DefaultLeaderLease                 = 3 * time.Second
	DefaultMaxConcurrentStreams        = math.MaxUint32
	DefaultQuotaBackendBytes           = 2 << 30
	DefaultMaxReadBytesInFlight        = 64 << 20
	DefaultReadWaitTimeout             = 30 * time.Second
)

// WithDefaults fills unset fields.
func (c Config) WithDefaults() Config {
	if len(c.ListenClientURLs) == 0 {
		c.ListenClientURLs = []string{DefaultListenClientURL}
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if c.Backend == "" {
		c.Backend = DefaultBackend
	}
	if c.MaxRequestBytes <= 0 {
		c.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if c.MaxTxnOps <= 0 {
		c.MaxTxnOps = DefaultMaxTxnOps
	}
	if c.WatchProgressNotifyInterval <= 0 {
		c.WatchProgressNotifyInterval = DefaultWatchProgressNotifyInterval
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.LeaderLease <= 0 {
		c.LeaderLease = DefaultLeaderLease
	}
	if c.MaxConcurrentStreams == 0 {
		c.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	if c.MaxReadBytesInFlight == 0 {
		c.MaxReadBytesInFlight = DefaultMaxReadBytesInFlight
	}
	if c.ReadWaitTimeout <= 0 {
		c.ReadWaitTimeout = DefaultReadWaitTimeout
	}
	if c.QuotaBackendBytes == 0 {
		c.QuotaBackendBytes = DefaultQuotaBackendBytes
	}
	if c.FollowerPoll <= 0 {
		c.FollowerPoll = 20 * time.Millisecond
	}
	return c
}
