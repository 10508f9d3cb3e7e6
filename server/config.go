package server

import (
	"log/slog"
	"time"
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
}

// Defaults as etcd has them.
const (
	DefaultListenClientURL             = "http://127.0.0.1:2379"
	DefaultDataDir                     = "./axon-data"
	DefaultBackend                     = "badger"
	DefaultMaxRequestBytes             = 1536 * 1024
	DefaultMaxTxnOps                   = 128
	DefaultWatchProgressNotifyInterval = 10 * time.Minute
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
	return c
}
