package server_test

// Slow consumers: 1,000 watchers, 200 of them on raw gRPC Watch streams that
// stop reading after their created responses. Phase 1 writes 5,000 puts of
// 1 KiB, phase 2 110,000 small puts in txns. Writes must keep completing,
// the watchers that read must get every event, the slow watchers must stay
// bounded (and be canceled, with a reason, once one of them passes the
// per-watcher buffer bound), and the heap must stay far below what
// per-watcher copies up to that bound would take. Numbers are logged;
// nothing is asserted about time.

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/axon-kv/axon/internal/testenv"
	"github.com/axon-kv/axon/server"
	"github.com/axon-kv/axon/watch"
)

const (
	swSubPrefixes   = 100 // "sw/k/NN/": phase-1 keys spread over these
	swPuts          = 5000
	swValueBytes    = 1 << 10
	swSlowStreams   = 10
	swSlowPerStream = 20 // half watch all of "sw/" with prev_kv, half one sub-prefix
	swFastClients   = 2
	swFastWatchers  = 800 // 2 of them watch all of "sw/", the rest one sub-prefix each
	// Phase 2: txns of swTxnPuts small puts, swTxns of them: more events
	// than one watcher may hold (watch.DefaultMaxPendingEvents).
	swTxns    = 110
	swTxnPuts = 1000
)

func TestSlowWatchers(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 115,000 events through 1,000 watchers; skipped with -short")
	}
	// Control: the same writes on a server without watchers, for the heap
	// the data itself takes (memory backend, event ring).
	ctrl := swControl(t)

	s, wcli := testenv.StartAxon(t, server.Config{MaxTxnOps: swTxnPuts})
	ctx, cancelAll := context.WithCancel(context.Background())
	defer cancelAll()
	metric := func(name string) float64 {
		mfs, err := s.Registry().Gather()
		if err != nil {
			t.Fatalf("gather metrics: %v", err)
		}
		for _, mf := range mfs {
			if mf.GetName() == name && len(mf.Metric) > 0 {
				m := mf.Metric[0]
				if m.Gauge != nil {
					return m.Gauge.GetValue()
				}
				return m.Counter.GetValue()
			}
		}
		t.Fatalf("metric %s not found", name)
		return 0
	}
	waitMetric := func(name string, want float64) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for metric(name) != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s = %v, want %v", name, metric(name), want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// A baseline write rate with no watcher (reported, not asserted).
	baseline := swWrite(t, wcli, "base/", 1000, 0)
	heap0 := swHeap()

	// Slow watchers: raw streams on one connection whose receive windows
	// are small (no BDP growth), so that a stream that is not read stops
	// the server's sends after a few KiB.
	cc := smallWindowConn(t, s.ClientURLs()[0], 64<<10, 1<<20)
	type slowStream struct {
		ws     pb.Watch_WatchClient
		cancel context.CancelFunc
		whole  map[int64]bool // watch ID -> watches all of sw/ (else one sub-prefix)
		sub    map[int64]int
	}
	var slow []*slowStream
	for i := range swSlowStreams {
		sctx, scancel := context.WithCancel(ctx)
		ws, err := pb.NewWatchClient(cc).Watch(sctx)
		if err != nil {
			t.Fatalf("slow stream %d: %v", i, err)
		}
		ss := &slowStream{ws: ws, cancel: scancel, whole: map[int64]bool{}, sub: map[int64]int{}}
		for j := range swSlowPerStream {
			req := &pb.WatchCreateRequest{WatchId: int64(j + 1)}
			if j%2 == 0 {
				req.Key, req.RangeEnd, req.PrevKv = []byte("sw/"), []byte(clientv3.GetPrefixRangeEnd("sw/")), true
				ss.whole[req.WatchId] = true
			} else {
				n := (i*swSlowPerStream + j) % swSubPrefixes
				p := fmt.Sprintf("sw/k/%02d/", n)
				req.Key, req.RangeEnd = []byte(p), []byte(clientv3.GetPrefixRangeEnd(p))
				ss.sub[req.WatchId] = n
			}
			if err := ws.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: req}}); err != nil {
				t.Fatal(err)
			}
		}
		for range swSlowPerStream {
			r, err := ws.Recv()
			if err != nil || !r.Created || r.Canceled {
				t.Fatalf("slow stream %d: created response %v, %v", i, r, err)
			}
		}
		// From here on nobody reads this stream until phase 3.
		slow = append(slow, ss)
	}
	nSlow := swSlowStreams * swSlowPerStream

	// Fast watchers: clientv3, all watches of a client on one stream.
	type fastWatch struct {
		prefix string
		n      atomic.Int64 // events received
		last   atomic.Int64 // last revision received
		bad    atomic.Value // string: first problem
	}
	fast := make([]*fastWatch, swFastWatchers)
	var fastWG sync.WaitGroup
	fcs := make([]*clientv3.Client, swFastClients)
	for i := range fcs {
		fcs[i] = testenv.NewClient(t, s.ClientURLs()...)
	}
	for i := range fast {
		f := &fastWatch{prefix: fmt.Sprintf("sw/k/%02d/", i%swSubPrefixes)}
		if i < 2 {
			f.prefix = "sw/"
		}
		fast[i] = f
		ch := fcs[i%swFastClients].Watch(ctx, f.prefix, clientv3.WithPrefix())
		fastWG.Add(1)
		go func() {
			defer fastWG.Done()
			for wr := range ch {
				if wr.Canceled {
					f.bad.CompareAndSwap(nil, fmt.Sprintf("canceled at revision %d: %v", wr.Header.Revision, wr.Err()))
					return
				}
				for _, ev := range wr.Events {
					if ev.Kv.ModRevision < f.last.Load() {
						f.bad.CompareAndSwap(nil, fmt.Sprintf("revision %d after %d", ev.Kv.ModRevision, f.last.Load()))
					}
					f.last.Store(ev.Kv.ModRevision)
					f.n.Add(1)
				}
			}
		}()
	}
	waitMetric("etcd_debugging_mvcc_watcher_total", float64(nSlow+swFastWatchers))
	heap1 := swHeap()

	// Phase 1: 5,000 puts of 1 KiB while 200 watchers do not read.
	phase1 := swWrite(t, wcli, "sw/k/", swPuts, swValueBytes)
	waitFast := func(want func(f *fastWatch) int64) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for _, f := range fast {
			for f.n.Load() < want(f) && f.bad.Load() == nil {
				if time.Now().After(deadline) {
					t.Fatalf("fast watcher on %s got %d events, want %d", f.prefix, f.n.Load(), want(f))
				}
				time.Sleep(10 * time.Millisecond)
			}
			if b := f.bad.Load(); b != nil {
				t.Fatalf("fast watcher on %s: %s", f.prefix, b)
			}
		}
	}
	waitFast(func(f *fastWatch) int64 {
		if f.prefix == "sw/" {
			return swPuts
		}
		return swPuts / swSubPrefixes
	})
	fastDone1 := time.Now()
	heap2 := swHeap()
	slowCanceled1 := metric("axon_watch_slow_canceled_total")
	watchers1 := metric("etcd_debugging_mvcc_watcher_total")

	// Phase 2: 110 txns of 1,000 small puts each. The 100 slow
	// whole-prefix watchers pass the 100,000-event bound and are canceled;
	// the sub-prefix ones see none of it; the fast ones see it all.
	phase2 := swWriteTxns(t, wcli, "sw/n/", swTxns, swTxnPuts)
	waitFast(func(f *fastWatch) int64 {
		if f.prefix == "sw/" {
			return swPuts + swTxns*swTxnPuts
		}
		return swPuts / swSubPrefixes
	})
	nWhole := swSlowStreams * swSlowPerStream / 2
	waitMetric("axon_watch_slow_canceled_total", float64(nWhole))
	waitMetric("etcd_debugging_mvcc_watcher_total", float64(nSlow+swFastWatchers-nWhole))
	heap3 := swHeap()

	// Phase 3: read the slow streams now. Each whole-prefix watcher got an
	// unbroken prefix of the events, then a cancel with a reason; each
	// sub-prefix watcher got all of its 50 events.
	var reason string
	for i, ss := range slow {
		got := map[int64][]*mvccpb.Event{}
		canceled := map[int64]string{}
		rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
		done := func() bool {
			for id := range ss.whole {
				if _, ok := canceled[id]; !ok {
					return false
				}
			}
			for id := range ss.sub {
				if len(got[id]) < swPuts/swSubPrefixes {
					return false
				}
			}
			return true
		}
		for !done() {
			if rctx.Err() != nil {
				t.Fatalf("slow stream %d: not all cancels and events arrived within 30s", i)
			}
			r, err := ss.ws.Recv()
			if err != nil {
				t.Fatalf("slow stream %d: %v", i, err)
			}
			got[r.WatchId] = append(got[r.WatchId], r.Events...)
			if r.Canceled {
				canceled[r.WatchId] = r.CancelReason
			}
		}
		rcancel()
		for id := range ss.whole {
			if canceled[id] == "" {
				t.Errorf("slow stream %d watch %d: canceled without a reason", i, id)
			}
			reason = canceled[id]
			evs := got[id]
			for j, ev := range evs {
				// Phase-1 keys are written in order, one revision each,
				// right after the baseline: the j-th event is put j.
				if want := fmt.Sprintf("sw/k/%02d/%04d", j%swSubPrefixes, j); j < swPuts && string(ev.Kv.Key) != want {
					t.Errorf("slow stream %d watch %d: event %d is %q, want %q (gap before the cancel)", i, id, j, ev.Kv.Key, want)
					break
				}
			}
			if len(evs) >= swPuts+swTxns*swTxnPuts {
				t.Errorf("slow stream %d watch %d: got all %d events, yet it was counted as canceled", i, id, len(evs))
			}
		}
		for id, n := range ss.sub {
			if reason, ok := canceled[id]; ok {
				t.Errorf("slow stream %d watch %d (sub-prefix %d) canceled: %q", i, id, n, reason)
			}
			if len(got[id]) != swPuts/swSubPrefixes {
				t.Errorf("slow stream %d watch %d: %d events, want %d", i, id, len(got[id]), swPuts/swSubPrefixes)
			}
		}
		ss.cancel()
	}
	waitMetric("etcd_debugging_mvcc_watch_stream_total", float64(swFastClients))

	// Phase 4: everything closed.
	cancelAll()
	fastWG.Wait()
	waitMetric("etcd_debugging_mvcc_watcher_total", 0)
	heap4 := swHeap()

	// The bounds. Without watchers the same writes grew the heap by
	// ctrl.heap[i] (the data: memory backend, event ring). What watchers
	// may add on top is their own structures: per slow watcher one queue
	// entry per revision it is behind (events themselves are shared), per
	// slow stream one blocked send (at most 1 MiB, watch/stream.go
	// maxResponseBytes) and the 64 KiB flow-control windows, and a little
	// per watcher. Per-watcher copies of events up to the per-watcher bound
	// (watch.DefaultMaxPendingEvents) would be nSlow x 100,000 events — the
	// heap must stay far below that.
	const (
		perQueued  = 96  // a queued chunk (48 B) with slice growth
		perEvent   = 512 // an Event with its KeyValue and prev KeyValue, allocated
		perWatcher = 32 << 10
		slack      = 64 << 20 // GC and allocator noise, memtable arenas
	)
	wholeRevs, subRevs := int64(swPuts+swTxns), int64(swPuts/swSubPrefixes)
	watcherBound := int64(nSlow/2)*(wholeRevs+subRevs)*perQueued + swSlowStreams*(2<<20) +
		int64(nSlow+swFastWatchers)*perWatcher + slack
	perWatcherCopies := int64(nSlow) * int64(watch.DefaultMaxPendingEvents) * perEvent
	mib := func(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
	t.Logf("writes: baseline %s; phase 1 (%d x %d B, %d slow watchers) %s; phase 2 (%d txns x %d puts) %s; fast watchers caught up %v after phase 1",
		baseline, swPuts, swValueBytes, nSlow, phase1, swTxns, swTxnPuts, phase2, fastDone1.Sub(phase1.end).Round(time.Millisecond))
	t.Logf("heap after GC: start %s, +1,000 watchers %s, after phase 1 %s, after phase 2 %s, all closed %s",
		mib(heap0), mib(heap1), mib(heap2), mib(heap3), mib(heap4))
	t.Logf("same writes without watchers: phase 1 %s, phase 2 %s; heap +%s after phase 1, +%s after phase 2",
		ctrl.phase[0], ctrl.phase[1], mib(ctrl.heap[0]), mib(ctrl.heap[1]))
	t.Logf("slow cancels after phase 1: %v (watchers %v); after phase 2: %v; reason: %q",
		slowCanceled1, watchers1, metric("axon_watch_slow_canceled_total"), reason)
	t.Logf("growth due to watchers: phase 1 %s, phase 2 %s, after closing them %s; bound %s; per-watcher copies up to the buffer bound would be %s",
		mib(heap2-heap0-ctrl.heap[0]), mib(heap3-heap0-ctrl.heap[1]), mib(heap4-heap0-ctrl.heap[1]), mib(watcherBound), mib(perWatcherCopies))
	for _, h := range []struct {
		name string
		v    int64
	}{{"after phase 1", heap2 - heap0 - ctrl.heap[0]}, {"after phase 2", heap3 - heap0 - ctrl.heap[1]}} {
		if h.v > watcherBound {
			t.Errorf("heap grew by %s more than without watchers %s, bound %s", mib(h.v), h.name, mib(watcherBound))
		}
	}
	// Once every watcher is closed, what they held is released: the heap
	// is back to about that of the run without watchers.
	if heap4 > heap3+16<<20 {
		t.Errorf("heap %s after every watcher was closed, %s before", mib(heap4), mib(heap3))
	}
	if g := heap4 - heap0 - ctrl.heap[1]; g > slack {
		t.Errorf("heap still %s above the run without watchers after every watcher was closed (slack %s)", mib(g), mib(slack))
	}
	if slowCanceled1 != 0 {
		t.Errorf("%v watchers canceled as slow after phase 1: 5,000 events are far below the per-watcher bound", slowCanceled1)
	}
}

// swControl runs the baseline and both write phases on a fresh server
// without watchers and returns the heap growth after each phase and the
// phases' write rates.
func swControl(t *testing.T) (out struct {
	heap  [2]int64
	phase [2]swResult
}) {
	t.Run("control-without-watchers", func(t *testing.T) {
		_, cli := testenv.StartAxon(t, server.Config{MaxTxnOps: swTxnPuts})
		swWrite(t, cli, "base/", 1000, 0)
		h0 := swHeap()
		out.phase[0] = swWrite(t, cli, "sw/k/", swPuts, swValueBytes)
		out.heap[0] = swHeap() - h0
		out.phase[1] = swWriteTxns(t, cli, "sw/n/", swTxns, swTxnPuts)
		out.heap[1] = swHeap() - h0
	})
	return out
}

// swResult is one write phase.
type swResult struct {
	n          int
	start, end time.Time
}

func (r swResult) String() string {
	d := r.end.Sub(r.start)
	return fmt.Sprintf("%d puts in %v (%.0f/s)", r.n, d.Round(time.Millisecond), float64(r.n)/d.Seconds())
}

// swWrite puts n keys prefix + "NN/IIII" one after the other (the key order
// check of phase 3 relies on it).
func swWrite(t *testing.T, cli *clientv3.Client, prefix string, n, size int) swResult {
	t.Helper()
	r := swResult{n: n, start: time.Now()}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	val := strings.Repeat("v", size)
	for i := range n {
		key := fmt.Sprintf("%s%02d/%04d", prefix, i%swSubPrefixes, i)
		if _, err := cli.Put(ctx, key, val); err != nil {
			t.Fatalf("put %d/%d %s: %v", i, n, key, err)
		}
	}
	r.end = time.Now()
	return r
}

// swWriteTxns writes n txns of m puts of small values to prefix + "%04d"
// (the same m keys every time), one after the other.
func swWriteTxns(t *testing.T, cli *clientv3.Client, prefix string, n, m int) swResult {
	t.Helper()
	r := swResult{n: n * m, start: time.Now()}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	ops := make([]clientv3.Op, m)
	for i := range n {
		for j := range ops {
			ops[j] = clientv3.OpPut(fmt.Sprintf("%s%04d", prefix, j), fmt.Sprintf("t%d", i))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatalf("txn %d/%d: %v", i, n, err)
		}
	}
	r.end = time.Now()
	return r
}

// swHeap is the live heap after the backend's background work (memtable
// flushes) has had a moment and two GCs ran.
func swHeap() int64 {
	var m runtime.MemStats
	time.Sleep(300 * time.Millisecond)
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}
