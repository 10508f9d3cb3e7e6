package server_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/axon-kv/axon/internal/testenv"
	"github.com/axon-kv/axon/server"
)

// A watch from the compaction revision gets that revision's event without
// prev_kv (the previous revision is compacted), as from etcd: kube-apiserver
// turns the missing prev_kv into 410 Gone and relists. Found by
// kube-apiserver's storage suite (RunTestWatchFromZero).
func TestWatchPrevKVAtCompactRevision(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	_, axon := testenv.StartAxon(t, server.Config{Backend: "badger"})
	for name, c := range map[string]*clientv3.Client{"etcd": etcd, "axon": axon} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := c.Put(ctx, "k", "v1"); err != nil {
			t.Fatal(err)
		}
		r, err := c.Put(ctx, "k", "v2")
		if err != nil {
			t.Fatal(err)
		}
		rev := r.Header.Revision
		if _, err := c.Put(ctx, "k", "v3"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Compact(ctx, rev); err != nil {
			t.Fatal(err)
		}
		wr := <-c.Watch(ctx, "k", clientv3.WithRev(rev), clientv3.WithPrevKV())
		if err := wr.Err(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(wr.Events) == 0 {
			t.Fatalf("%s: no events", name)
		}
		if ev := wr.Events[0]; ev.Kv.ModRevision != rev || ev.PrevKv != nil {
			t.Errorf("%s: first event at %d prev_kv %v; want revision %d without prev_kv", name, ev.Kv.ModRevision, ev.PrevKv, rev)
		}
		if len(wr.Events) > 1 && wr.Events[1].PrevKv == nil {
			t.Errorf("%s: the event after the compaction revision lost its prev_kv", name)
		}
	}
}
