// Package kube runs a real kube-apiserver on Axon (or, with E2E_BACKEND=etcd,
// on the etcd control) and drives a workload through client-go. Each part
// prints one "E2E SUMMARY" line with its numbers.
package kube

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	apiextclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/axon-kv/axon/deploy/e2e/harness"
)

// cluster is what every part works with.
type cluster struct {
	kind       harness.Kind
	main       *harness.Server // everything but events
	events     *harness.Server // --etcd-servers-overrides=/events#...
	kas        *harness.KubeAPIServer
	cs         *kubernetes.Clientset
	dyn        *dynamic.DynamicClient
	ext        *apiextclient.Clientset
	mainKV     *clientv3.Client
	eventsKV   *clientv3.Client
	compaction time.Duration
	eventTTL   time.Duration

	// Left by earlier parts for later ones.
	objNamespaces []string
	pageCounts    map[string]int // resource -> objects created in the pagination namespace
}

const (
	pageNS     = "e2e-page"
	progressNI = 5 * time.Second
)

func TestKube(t *testing.T) {
	kind := harness.Backend()
	dir := harness.WorkDir(t, "kube-"+string(kind))
	start := time.Now()
	main := harness.StartServer(t, harness.ServerConfig{Kind: kind, Name: "main", Dir: dir, ProgressNotify: progressNI})
	events := harness.StartServer(t, harness.ServerConfig{Kind: kind, Name: "events", Dir: dir, Memory: true, ProgressNotify: progressNI})
	storeReady := time.Since(start)
	c := &cluster{
		kind:       kind,
		main:       main,
		events:     events,
		compaction: harness.Pick(30*time.Second, 20*time.Second),
		eventTTL:   harness.Pick(30*time.Second, 20*time.Second),
		pageCounts: map[string]int{},
	}
	kasStart := time.Now()
	c.kas = harness.StartKubeAPIServer(t, harness.KubeAPIServerConfig{
		Dir:                dir,
		EtcdServers:        main.URL(),
		Overrides:          []string{"/events#" + events.URL()},
		CompactionInterval: c.compaction,
		EventTTL:           c.eventTTL,
		// podtemplates bypass the watch cache: their lists and watches go
		// straight to the store, so the parts below exercise both paths.
		ExtraArgs: []string{"--watch-cache-sizes=podtemplates#0"},
	})
	kasReady := time.Since(kasStart)
	c.cs = c.kas.Clientset(t)
	var err error
	if c.dyn, err = dynamic.NewForConfig(c.kas.Config); err != nil {
		t.Fatal(err)
	}
	if c.ext, err = apiextclient.NewForConfig(c.kas.Config); err != nil {
		t.Fatal(err)
	}
	c.mainKV = main.Client(t)
	c.eventsKV = events.Client(t)
	ver, _ := c.cs.Discovery().ServerVersion()
	harness.Summary("setup", "backend %s (profile %s): main+events stores ready in %s; kube-apiserver %s ready (/readyz) in %s",
		kind, harness.Pick("full", "ci"), storeReady.Round(time.Millisecond), ver, kasReady.Round(100*time.Millisecond))

	parts := []struct {
		name string
		run  func(t *testing.T, c *cluster)
	}{
		{"objects", partObjects},
		{"conflicts", partConflicts},
		{"pagination", partPagination},
		{"watch", partWatch},
		{"events", partEvents},
		{"deletes", partDeletes},
		{"compaction", partCompaction},
		{"restart", partRestart},
	}
	only := map[string]bool{}
	for _, p := range strings.Split(os.Getenv("E2E_KUBE_PARTS"), ",") {
		if p != "" {
			only[p] = true
		}
	}
	for _, p := range parts {
		if len(only) > 0 && !only[p.name] {
			continue
		}
		ps := time.Now()
		ok := t.Run(p.name, func(t *testing.T) { p.run(t, c) })
		t.Logf("part %s: %v in %s", p.name, map[bool]string{true: "ok", false: "FAILED"}[ok], time.Since(ps).Round(time.Millisecond))
		if c.kas.Exited() {
			t.Fatalf("kube-apiserver exited; log: %s", c.kas.LogPath)
		}
	}
}

// ctxT returns a context bounded by d and cancelled with the test.
func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// parallel runs fn(0..n-1) on workers goroutines and returns the first error.
func parallel(n, workers int, fn func(i int) error) error {
	var next atomic.Int64
	var first error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					mu.Lock()
					if first == nil {
						first = fmt.Errorf("item %d: %w", i, err)
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// countKeys counts the keys under prefix on a store.
func countKeys(ctx context.Context, kv *clientv3.Client, prefix string) (int64, error) {
	resp, err := kv.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return resp.Count, nil
}

func mustCount(t *testing.T, kv *clientv3.Client, prefix string) int64 {
	t.Helper()
	n, err := countKeys(ctxT(t, 30*time.Second), kv, prefix)
	if err != nil {
		t.Fatalf("count %s: %v", prefix, err)
	}
	return n
}
