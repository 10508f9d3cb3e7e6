package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/axon-kv/axon/internal/testenv"
	"github.com/axon-kv/axon/server"
)

// kvState is what migrate must carry over: key, value and whether a lease
// is attached (lease IDs are kept too).
type kvState struct {
	value string
	lease int64
}

func stateOf(t *testing.T, c *clientv3.Client) map[string]kvState {
	t.Helper()
	r, err := c.Get(context.Background(), "\x00", clientv3.WithFromKey())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]kvState{}
	for _, kv := range r.Kvs {
		out[string(kv.Key)] = kvState{string(kv.Value), kv.Lease}
	}
	return out
}

func sameState(a, b map[string]kvState) string {
	if len(a) != len(b) {
		return fmt.Sprintf("%d keys vs %d keys", len(a), len(b))
	}
	for k, v := range a {
		if b[k] != v {
			return fmt.Sprintf("key %q: %+v vs %+v", k, v, b[k])
		}
	}
	return ""
}

// seedEtcd writes n keys (binary values, some on a lease) and some history.
func seedEtcd(t *testing.T, c *clientv3.Client, n int) clientv3.LeaseID {
	t.Helper()
	ctx := context.Background()
	lease, err := c.Grant(ctx, 3600)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		var opts []clientv3.OpOption
		if i%9 == 0 {
			opts = append(opts, clientv3.WithLease(lease.ID))
		}
		if _, err := c.Put(ctx, fmt.Sprintf("/registry/secrets/ns%d/s%04d", i%4, i), fmt.Sprintf("v%d\x00\xfe", i), opts...); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < n; i += 10 {
		c.Put(ctx, fmt.Sprintf("/registry/secrets/ns%d/s%04d", i%4, i), "updated")
	}
	c.Delete(ctx, "/registry/secrets/ns3/", clientv3.WithPrefix())
	return lease.ID
}

// TestMigrateFromEtcd copies a running etcd (written to during the copy)
// into a running Axon member and follows it until they match.
func TestMigrateFromEtcd(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	_, axon := testenv.StartAxon(t, server.Config{})
	lease := seedEtcd(t, etcd, 1200)
	ctx := context.Background()

	// Writers change the source while the copy runs.
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				k := fmt.Sprintf("/registry/pods/w%d/p%03d", w, rand.IntN(100))
				if i%5 == 4 {
					etcd.Delete(ctx, k)
				} else if i%3 == 0 {
					etcd.Put(ctx, k, fmt.Sprint(i), clientv3.WithLease(lease))
				} else {
					etcd.Txn(ctx).Then(clientv3.OpPut(k, fmt.Sprint(i)), clientv3.OpPut(k+"-b", "b")).Commit()
				}
			}
		}()
	}

	mctx, cancel := context.WithCancel(ctx)
	defer cancel()
	o := &migrateOptions{pageSize: 250, batchOps: 64, batchBytes: 256 << 10, follow: true}
	o.from.endpoints, o.from.endpointsName = etcd.Endpoints(), "from-etcd"
	o.to.endpoints, o.to.endpointsName = axon.Endpoints(), "to"
	type result struct {
		st  migrateStats
		err error
	}
	done := make(chan result, 1)
	go func() { st, err := runMigrate(mctx, o); done <- result{st, err} }()

	time.Sleep(300 * time.Millisecond) // let writes land during the copy and the watch
	stop.Store(true)
	wg.Wait()
	want := stateOf(t, etcd)
	deadline := time.Now().Add(60 * time.Second)
	for diff := "x"; diff != ""; {
		select {
		case r := <-done:
			t.Fatalf("migrate ended early: %+v %v", r.st, r.err)
		default:
		}
		if diff = sameState(want, stateOf(t, axon)); diff != "" && time.Now().After(deadline) {
			t.Fatalf("target never matched the source: %s", diff)
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	r := <-done
	if r.err != nil {
		t.Fatalf("migrate: %v", r.err)
	}
	if r.st.Keys < 900 || r.st.Leases != 1 || r.st.Events == 0 {
		t.Errorf("stats %+v", r.st)
	}
	ttl, err := axon.TimeToLive(ctx, lease, clientv3.WithAttachedKeys())
	if err != nil || ttl.TTL <= 0 || len(ttl.Keys) == 0 {
		t.Errorf("lease on the target: %+v %v", ttl, err)
	}

	// A second run into the now non-empty member is refused.
	o2 := &migrateOptions{pageSize: 100, batchOps: 10, batchBytes: 1 << 20}
	o2.from.endpoints, o2.to.endpoints = etcd.Endpoints(), axon.Endpoints()
	if _, err := runMigrate(ctx, o2); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("migrate into a non-empty target: %v", err)
	}
}

// TestMigrateToDataDir copies into a new data dir: revisions continue above
// the source's, so old resourceVersions read as compacted.
func TestMigrateToDataDir(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	seedEtcd(t, etcd, 300)
	ctx := context.Background()
	src, err := etcd.Get(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(t.TempDir(), "axon")
	out, err := runAxon(t, "migrate", "--from-etcd", etcd.Endpoints()[0], "--to-data-dir", dataDir, "--page-size", "64")
	if err != nil {
		t.Fatalf("migrate: %v\n%s", err, out)
	}
	_, axon := testenv.StartAxon(t, server.Config{Backend: "badger", DataDir: dataDir})
	if d := sameState(stateOf(t, etcd), stateOf(t, axon)); d != "" {
		t.Fatalf("states differ: %s", d)
	}
	r, err := axon.Get(ctx, "\x00", clientv3.WithFromKey())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range r.Kvs {
		if kv.ModRevision <= src.Header.Revision {
			t.Fatalf("key %s at revision %d, not above the source's %d", kv.Key, kv.ModRevision, src.Header.Revision)
		}
	}
	if _, err := axon.Get(ctx, "x", clientv3.WithRev(src.Header.Revision-1)); err == nil || !strings.Contains(err.Error(), "compacted") {
		t.Errorf("read at an etcd revision: %v, want compacted", err)
	}
	// Watching from an etcd revision is canceled as compacted too.
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	wr := <-axon.Watch(wctx, "/registry/", clientv3.WithPrefix(), clientv3.WithRev(src.Header.Revision-5))
	if wr.CompactRevision == 0 {
		t.Errorf("watch from an etcd revision: %+v", wr)
	}
}
