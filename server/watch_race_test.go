package server_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/axon-kv/axon/internal/testenv"
	"github.com/axon-kv/axon/server"
)

// TestWatchRacingCompaction opens watches just below, at and above a
// revision while a physical compaction to it runs and writes go on (etcd
// issues 18089 and 19179 lost events here). Each watch must either be
// refused as compacted (only when it starts below the compacted revision)
// or deliver exactly the history from its start, with no revision missing,
// as a watch opened from revision 1 before anything saw it.
func TestWatchRacingCompaction(t *testing.T) {
	_, c := testenv.StartAxon(t, server.Config{Backend: "badger", DataDir: t.TempDir()})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var (
		refMu sync.Mutex
		ref   []*mvccpb.Event // every event, from a watch opened before any write
	)
	refCh := c.Watch(ctx, "/w/", clientv3.WithPrefix(), clientv3.WithRev(1), clientv3.WithPrevKV())
	go func() {
		for wr := range refCh {
			refMu.Lock()
			ref = append(ref, wr.Events...)
			refMu.Unlock()
		}
	}()

	stop := make(chan struct{})
	writerDone := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				writerDone <- nil
				return
			default:
			}
			k := fmt.Sprintf("/w/k%02d", i%40)
			var err error
			if i%9 == 0 {
				_, err = c.Delete(ctx, k)
			} else {
				_, err = c.Put(ctx, k, fmt.Sprintf("v%d", i))
			}
			if err != nil {
				writerDone <- err
				return
			}
		}
	}()

	type watchResult struct {
		start     int64
		events    []*mvccpb.Event
		compacted int64
	}
	refused, delivered := 0, 0
	for iter := 0; iter < 25; iter++ {
		time.Sleep(20 * time.Millisecond)
		g, err := c.Get(ctx, "/w/nothing")
		if err != nil {
			t.Fatal(err)
		}
		at := g.Header.Revision
		until := at + 30
		var wg sync.WaitGroup
		results := make(chan watchResult, 4)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Compact(ctx, at, clientv3.WithCompactPhysical()); err != nil {
				t.Errorf("compact %d: %v", at, err)
			}
		}()
		for _, start := range []int64{at - 2, at - 1, at, at + 1} {
			wg.Add(1)
			go func(start int64) {
				defer wg.Done()
				wctx, wcancel := context.WithCancel(ctx)
				defer wcancel()
				res := watchResult{start: start}
				for wr := range c.Watch(wctx, "/w/", clientv3.WithPrefix(), clientv3.WithRev(start), clientv3.WithPrevKV()) {
					if wr.CompactRevision != 0 {
						res.compacted = wr.CompactRevision
						break
					}
					if err := wr.Err(); err != nil {
						t.Errorf("watch from %d: %v", start, err)
						break
					}
					res.events = append(res.events, wr.Events...)
					if n := len(res.events); n > 0 && res.events[n-1].Kv.ModRevision >= until {
						break
					}
				}
				results <- res
			}(start)
		}
		wg.Wait()
		close(results)
		// The reference must have reached until before it is compared.
		for deadline := time.Now().Add(10 * time.Second); ; {
			refMu.Lock()
			n := len(ref)
			reached := n > 0 && ref[n-1].Kv.ModRevision >= until
			refMu.Unlock()
			if reached {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("reference watch stuck below %d", until)
			}
			time.Sleep(10 * time.Millisecond)
		}
		refMu.Lock()
		snapshot := append([]*mvccpb.Event(nil), ref...)
		refMu.Unlock()
		for res := range results {
			if res.compacted != 0 {
				refused++
				if res.start >= res.compacted {
					t.Errorf("watch from %d refused as compacted at %d", res.start, res.compacted)
				}
				continue
			}
			delivered++
			var want []*mvccpb.Event
			last := res.events[len(res.events)-1].Kv.ModRevision
			for _, ev := range snapshot {
				if ev.Kv.ModRevision >= res.start && ev.Kv.ModRevision <= last {
					want = append(want, ev)
				}
			}
			if len(res.events) != len(want) {
				t.Fatalf("watch from %d (compaction at %d): %d events up to %d, the history has %d", res.start, at, len(res.events), last, len(want))
			}
			for i, ev := range res.events {
				w := want[i]
				if ev.Type != w.Type || !bytes.Equal(ev.Kv.Key, w.Kv.Key) || ev.Kv.ModRevision != w.Kv.ModRevision ||
					!bytes.Equal(ev.Kv.Value, w.Kv.Value) || ev.Kv.Version != w.Kv.Version || ev.Kv.CreateRevision != w.Kv.CreateRevision {
					t.Fatalf("watch from %d: event %d is %v %s@%d, the history has %v %s@%d", res.start, i, ev.Type, ev.Kv.Key, ev.Kv.ModRevision, w.Type, w.Kv.Key, w.Kv.ModRevision)
				}
				// prev_kv may be missing only where the previous state
				// was compacted away (an event at the compacted revision).
				if ev.PrevKv == nil && w.PrevKv != nil && ev.Kv.ModRevision > at {
					t.Fatalf("watch from %d: event at %d lost prev_kv", res.start, ev.Kv.ModRevision)
				}
				if ev.PrevKv != nil && (w.PrevKv == nil || ev.PrevKv.ModRevision != w.PrevKv.ModRevision || !bytes.Equal(ev.PrevKv.Value, w.PrevKv.Value)) {
					t.Fatalf("watch from %d: event at %d has a wrong prev_kv", res.start, ev.Kv.ModRevision)
				}
			}
		}
	}
	close(stop)
	if err := <-writerDone; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d watches refused as compacted, %d delivered the history without a gap", refused, delivered)
	if delivered == 0 {
		t.Fatal("no watch was compared with the history")
	}
}
