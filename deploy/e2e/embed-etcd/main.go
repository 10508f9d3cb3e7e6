// Command embed-etcd runs a single-member etcd (go.etcd.io/etcd/server/v3/embed)
// with the flags the e2e harness also gives Axon, so the same tests can run
// against a real etcd as their control.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

func main() {
	listen := flag.String("listen-client-urls", "http://127.0.0.1:2379", "client URL (one)")
	peerURL := flag.String("listen-peer-urls", "http://127.0.0.1:2380", "peer URL (one; embed needs a peer listener)")
	dataDir := flag.String("data-dir", "", "data directory (required)")
	backend := flag.String("backend", "bbolt", "accepted for flag parity with axon; 'memory' only skips fsync")
	progress := flag.Duration("watch-progress-notify-interval", 10*time.Minute, "progress notify interval")
	flag.Parse()
	if *dataDir == "" {
		log.Fatal("--data-dir is required")
	}
	u, err := url.Parse(*listen)
	if err != nil {
		log.Fatalf("--listen-client-urls: %v", err)
	}
	cfg := embed.NewConfig()
	cfg.Name = "control"
	cfg.Dir = *dataDir
	cfg.ListenClientUrls = []url.URL{*u}
	cfg.AdvertiseClientUrls = []url.URL{*u}
	peer, err := url.Parse(*peerURL)
	if err != nil {
		log.Fatalf("--listen-peer-urls: %v", err)
	}
	cfg.ListenPeerUrls = []url.URL{*peer}
	cfg.AdvertisePeerUrls = []url.URL{*peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.WatchProgressNotifyInterval = *progress
	cfg.UnsafeNoFsync = *backend == "memory"
	cfg.LogLevel = "error"
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		log.Fatalf("start etcd: %v", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		log.Fatal("etcd did not become ready in 60s")
	}
	fmt.Fprintf(os.Stderr, "ready to serve client requests urls=%s\n", u.String())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case <-sig:
	case err := <-e.Err():
		log.Fatalf("etcd: %v", err)
	}
	e.Close()
}
