// Command etcd-embed runs a real single-member etcd (go.etcd.io/etcd/server/v3
// embed, the same release Axon speaks) for benchmark comparisons: fsync on,
// its own data directory, loopback listeners.
//
//	go build -o bin/axon-bench-etcd ./etcd-embed    (from benchmark/tools)
//	bin/axon-bench-etcd --data-dir /tmp/etcd --listen-client 127.0.0.1:2381 --listen-peer 127.0.0.1:2382
//
// It prints "etcd ready on <client URL>" once serving and shuts down cleanly
// on SIGINT or SIGTERM.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

func main() {
	var (
		dataDir     = flag.String("data-dir", "bench-results/etcd-data", "data directory (created if missing)")
		client      = flag.String("listen-client", "127.0.0.1:2381", "client host:port")
		peer        = flag.String("listen-peer", "127.0.0.1:2382", "peer host:port")
		quota       = flag.Int64("quota-backend-bytes", 8<<30, "backend quota in bytes")
		noFsync     = flag.Bool("unsafe-no-fsync", false, "skip fsync (not for comparisons)")
		logLevel    = flag.String("log-level", "warn", "log level: debug, info, warn, error")
		logFile     = flag.String("log-file", "", "log to this file instead of stderr")
		readyWithin = flag.Duration("ready-timeout", 60*time.Second, "give up if not ready within this long")
		snapCount   = flag.Uint64("snapshot-count", 0, "raft entries between snapshots (0: etcd's default)")
	)
	flag.Parse()

	cfg := embed.NewConfig()
	cfg.Name = "bench-etcd"
	cfg.Dir = *dataDir
	cfg.LogLevel = *logLevel
	if *logFile != "" {
		if err := os.MkdirAll(filepath.Dir(*logFile), 0o755); err != nil {
			log.Fatal(err)
		}
		cfg.LogOutputs = []string{*logFile}
	}
	cfg.UnsafeNoFsync = *noFsync
	cfg.QuotaBackendBytes = *quota
	if *snapCount > 0 {
		cfg.SnapshotCount = *snapCount
	}
	cu := mustURL("http://" + *client)
	pu := mustURL("http://" + *peer)
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		log.Fatalf("start etcd: %v", err)
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	select {
	case <-e.Server.ReadyNotify():
		fmt.Printf("etcd ready on %s (data dir %s, fsync %v)\n", cu.String(), *dataDir, !*noFsync)
	case err := <-e.Err():
		log.Fatalf("etcd failed: %v", err)
	case <-time.After(*readyWithin):
		e.Close()
		log.Fatalf("etcd not ready after %v", *readyWithin)
	case <-sigs:
		e.Close()
		return
	}
	select {
	case <-sigs:
	case err := <-e.Err():
		log.Printf("etcd error: %v", err)
	}
	e.Close()
}

func mustURL(s string) url.URL {
	u, err := url.Parse(s)
	if err != nil {
		log.Fatalf("bad address %q: %v", s, err)
	}
	return *u
}
