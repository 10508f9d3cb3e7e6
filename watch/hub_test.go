package watch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

func mustWatch(t testing.TB, st *Stream, req WatchRequest) int64 {
	t.Helper()
	id, err := st.Watch(req)
	if err != nil {
		t.Fatalf("Watch(%+v): %v", req, err)
	}
	return id
}

// waitEvents waits until watch id received as many events as want, then
// compares them.
func waitEvents(t testing.TB, c *collector, id int64, want []*mvccpb.Event) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(c.events(id)) < len(want) {
		if time.Now().After(deadline) {
			for _, r := range c.snapshot() {
				if r.WatchID == id && len(r.Events) == 0 {
					t.Logf("response: %+v", r)
				}
			}
			diffEvents(t, fmt.Sprintf("watch %d (timed out)", id), c.events(id), want)
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(5 * time.Millisecond) // anything extra would show up now
	diffEvents(t, fmt.Sprintf("watch %d", id), c.events(id), want)
}

func TestLiveWatch(t *testing.T) {
	w := newWorld(t, Options{CurrentRev: 10})
	st := w.hub.NewStream()
	defer st.Close()
	c := collect(t, st)

	req := WatchRequest{Key: []byte("/a/"), RangeEnd: []byte("/a0"), PrevKV: true}
	id := mustWatch(t, st, req)
	if cr := c.created(t, id); cr.Revision != 10 || cr.Canceled {
		t.Fatalf("created response %+v, want revision 10", cr)
	}
	w.write(put("/a/1", "x"))
	w.write(put("/b/1", "y"))
	w.write(put("/a/1", "z"), put("/a/2", "w"))
	w.write(del("/a/1"))
	waitEvents(t, c, id, w.expect(req, 10))

	// One response per revision on the live path; the header revision is
	// the events' revision.
	for _, r := range c.snapshot() {
		if len(r.Events) > 0 && r.Events[len(r.Events)-1].Kv.ModRevision != r.Revision {
			t.Fatalf("response revision %d, last event at %d", r.Revision, r.Events[len(r.Events)-1].Kv.ModRevision)
		}
	}
}

func TestRanges(t *testing.T) {
	w := newWorld(t, Options{})
	st := w.hub.NewStream()
	defer st.Close()
	c := collect(t, st)

	reqs := []WatchRequest{
		{Key: []byte("k")},                                // one key
		{Key: []byte("k"), RangeEnd: []byte("l")},         // prefix k
		{Key: []byte("k2"), RangeEnd: []byte{0}},          // every key >= k2
		{Key: nil, RangeEnd: []byte{0}},                   // every key
		{Key: []byte("a"), RangeEnd: []byte("k1")},        // [a, k1)
		{Key: []byte("k"), RangeEnd: []byte("k\x00")},     // k as a range
		{Key: []byte("k1"), RangeEnd: []byte("l"), ID: 7}, // overlapping, chosen ID
		{Key: []byte("k"), NoPut: true},                   // deletes of k
	}
	ids := make([]int64, len(reqs))
	for i, r := range reqs {
		ids[i] = mustWatch(t, st, r)
	}
	if ids[0] != 0 || ids[1] != 1 || ids[6] != 7 || ids[7] != 6 {
		t.Fatalf("watch IDs %v: want automatic IDs from 0 and the chosen 7", ids)
	}
	w.write(put("k", "1"))
	w.write(put("k1", "2"), put("j", "3"), put("z", "4"))
	w.write(put("k2", "5"), del("k"))
	w.write(put("l", "6"), put("\x00", "7"))
	for i, r := range reqs {
		waitEvents(t, c, ids[i], w.expect(r, 0))
	}

	// An empty range is refused with etcd's reason and watch ID -1.
	if _, err := st.Watch(WatchRequest{Key: []byte("b"), RangeEnd: []byte("a")}); !errors.Is(err, ErrEmptyRange) {
		t.Fatalf("empty range: err %v", err)
	}
	waitFor(t, "empty range response", func() bool {
		_, ok := c.find(func(r Response) bool {
			return r.Created && r.Canceled && r.WatchID == InvalidWatchID && r.CancelReason == "mvcc: watcher range is empty"
		})
		return ok
	})
}

func TestIDs(t *testing.T) {
	w := newWorld(t, Options{})
	st := w.hub.NewStream()
	defer st.Close()
	c := collect(t, st)

	if id := mustWatch(t, st, WatchRequest{Key: []byte("a"), ID: 1}); id != 1 {
		t.Fatalf("chosen id: %d", id)
	}
	// Automatic IDs skip those taken.
	if id := mustWatch(t, st, WatchRequest{Key: []byte("a")}); id != 0 {
		t.Fatalf("auto id %d, want 0", id)
	}
	if id := mustWatch(t, st, WatchRequest{Key: []byte("a")}); id != 2 {
		t.Fatalf("auto id %d, want 2", id)
	}
	_, err := st.Watch(WatchRequest{Key: []byte("a"), ID: 2})
	if !errors.Is(err, ErrDuplicateID) {
		t.Fatalf("duplicate id: %v", err)
	}
	waitFor(t, "duplicate id response", func() bool {
		_, ok := c.find(func(r Response) bool {
			return r.Created && r.Canceled && r.WatchID == -1 &&
				r.CancelReason == "mvcc: duplicate watch ID provided on the WatchStream"
		})
		return ok
	})
	// A negative start revision gets etcd's compaction text.
	if _, err := st.Watch(WatchRequest{Key: []byte("a"), StartRev: -1}); err == nil {
		t.Fatal("negative start accepted")
	}
	waitFor(t, "negative start response", func() bool {
		_, ok := c.find(func(r Response) bool {
			return r.Created && r.Canceled && r.WatchID == -1 &&
				r.CancelReason == "etcdserver: mvcc: required revision has been compacted"
		})
		return ok
	})
	// IDs are per stream.
	st2 := w.hub.NewStream()
	defer st2.Close()
	if id := mustWatch(t, st2, WatchRequest{Key: []byte("a")}); id != 0 {
		t.Fatalf("second stream auto id %d", id)
	}
	// A canceled ID can be used again.
	if !st.Cancel(1) {
		t.Fatal("cancel 1")
	}
	if id := mustWatch(t, st, WatchRequest{Key: []byte("a"), ID: 1}); id != 1 {
		t.Fatalf("reused id %d", id)
	}
}

func TestCancel(t *testing.T) {
	w := newWorld(t, Options{})
	st := w.hub.NewStream()
	defer st.Close()
	c := collect(t, st)

	req := WatchRequest{Key: []byte("a")}
	id := mustWatch(t, st, req)
	other := mustWatch(t, st, req)
	w.write(put("a", "1"))
	waitEvents(t, c, id, w.expect(req, 0))
	if !st.Cancel(id) {
		t.Fatal("cancel failed")
	}
	if st.Cancel(id) || st.Cancel(99) {
		t.Fatal("cancel of an unknown watch reported success")
	}
	w.write(put("a", "2"))
	waitEvents(t, c, other, w.expect(req, 0))
	if got := len(c.events(id)); got != 1 {
		t.Fatalf("canceled watch got %d events", got)
	}
	acks := 0
	for _, r := range c.snapshot() {
		if r.WatchID == id && r.Canceled && !r.Created {
			acks++
			if r.Revision != 1 {
				t.Fatalf("cancel ack revision %d, want 1", r.Revision)
			}
		}
	}
	if acks != 1 {
		t.Fatalf("%d cancel acks", acks)
	}
	if n := w.hub.Metrics.Watchers.Load(); n != 1 {
		t.Fatalf("watchers gauge %d", n)
	}
	st.Close()
	if n := w.hub.Metrics.Watchers.Load(); n != 0 {
		t.Fatalf("watchers gauge after close %d", n)
	}
	if w.hub.live.size != 0 {
		t.Fatalf("index still holds %d watchers", w.hub.live.size)
	}
}

func TestFiltersAndPrevKV(t *testing.T) {
	w := newWorld(t, Options{RingSize: 4})
	st := w.hub.NewStream()
	defer st.Close()
	c := collect(t, st)

	var reqs []WatchRequest
	for _, prev := range []bool{false, true} {
		for _, noPut := range []bool{false, true} {
			for _, noDel := range []bool{false, true} {
				reqs = append(reqs, WatchRequest{Key: []byte("p/"), RangeEnd: []byte("p0"), PrevKV: prev, NoPut: noPut, NoDelete: noDel})
			}
		}
	}
	ids := make([]int64, len(reqs))
	for i, r := range reqs {
		ids[i] = mustWatch(t, st, r)
	}
	w.write(put("p/a", "1"))
	w.write(put("p/a", "2"), put("p/b", "1"))
	w.write(del("p/a"), put("q", "1"))
	w.write(del("p/b"), put("p/a", "3"))
	for i := 0; i < 10; i++ {
		w.write(put("p/c", fmt.Sprint(i)))
	}
	for i, r := range reqs {
		want := w.expect(r, 0)
		waitEvents(t, c, ids[i], want)
		for _, ev := range c.events(ids[i]) {
			if !r.PrevKV && ev.PrevKv != nil {
				t.Fatalf("watch %d did not ask for prev_kv but got it", ids[i])
			}
		}
	}
	// The same from the past: the ring holds 4 revisions, the rest comes
	// from History, with and without prev_kv.
	w.settle(t)
	st2 := w.hub.NewStream()
	defer st2.Close()
	c2 := collect(t, st2)
	for i, r := range reqs {
		r.StartRev = 1
		reqs[i] = r
		ids[i] = mustWatch(t, st2, r)
	}
	for i, r := range reqs {
		waitEvents(t, c2, ids[i], w.expect(r, 0))
	}
	if w.hist.numCalls() == 0 {
		t.Fatal("History was not read")
	}
}

// TestRingHistorySwitch starts watchers at every kind of position —
// compacted away from the ring into History, in the ring, at the current
// revision, in the future — while a writer keeps publishing, and checks
// each one sees every revision from its start exactly once, in order.
func TestRingHistorySwitch(t *testing.T) {
	for _, ring := range []int{1, 16, 1000} {
		t.Run(fmt.Sprintf("ring%d", ring), func(t *testing.T) {
			w := newWorld(t, Options{RingSize: ring, CatchUpRevisions: 7, MaxPendingEvents: 1000})
			keys := []string{"a", "b/1", "b/2", "c", "d/x"}
			write := func(i int) {
				k := keys[i%len(keys)]
				if i%7 == 3 {
					w.write(del(k))
				} else {
					w.write(put(k, fmt.Sprint(i)), put(keys[(i+2)%len(keys)], fmt.Sprint(-i)))
				}
			}
			for i := 0; i < 300; i++ {
				write(i)
			}
			w.hist.mu.Lock()
			w.hist.delay = 200 * time.Microsecond // widen the window for the switch
			w.hist.mu.Unlock()

			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 300; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					write(i)
					if i%10 == 0 {
						time.Sleep(time.Millisecond)
					}
				}
			}()

			st := w.hub.NewStream()
			defer st.Close()
			c := collect(t, st)
			type made struct {
				id  int64
				req WatchRequest
			}
			var ws []made
			ranges := [][2]string{{"a", ""}, {"b/", "b0"}, {"", "\x00"}, {"c", "\x00"}}
			for _, start := range []int64{1, 2, 50, 150, 280, 299, 300, 301, 0, 2000} {
				for _, r := range ranges {
					req := WatchRequest{Key: []byte(r[0]), RangeEnd: []byte(r[1]), StartRev: start, PrevKV: start%2 == 0}
					ws = append(ws, made{mustWatch(t, st, req), req})
				}
				time.Sleep(time.Millisecond)
			}
			waitFor(t, "revision 2500", func() bool { return w.hub.Rev() >= 2500 })
			close(stop)
			wg.Wait()
			for _, m := range ws {
				created := c.created(t, m.id)
				waitEvents(t, c, m.id, w.expect(m.req, created.Revision))
			}
			if n := w.hub.Metrics.CatchingUp.Load(); n != 0 {
				t.Fatalf("%d watchers still catching up", n)
			}
		})
	}
}

func TestCompactedStart(t *testing.T) {
	w := newWorld(t, Options{RingSize: 2})
	for i := 0; i < 10; i++ {
		w.write(put("k", fmt.Sprint(i)))
	}
	w.settle(t)
	w.compact(5)
	st := w.hub.NewStream()
	defer st.Close()
	c := collect(t, st)

	below := mustWatch(t, st, WatchRequest{Key: []byte("k"), StartRev: 4, ID: 3})
	at := WatchRequest{Key: []byte("k"), StartRev: 5}
	atID := mustWatch(t, st, at)

	// etcd: a created response, then a canceled one with the compaction
	// revision (and no reason), for the watch's own ID.
	waitFor(t, "compaction cancel", func() bool {
		_, ok := c.find(func(r Response) bool { return r.WatchID == below && r.Canceled })
		return ok
	})
	var seen []Response
	for _, r := range c.snapshot() {
		if r.WatchID == below {
			seen = append(seen, r)
		}
	}
	if len(seen) != 2 || !seen[0].Created || seen[0].Canceled || seen[1].CompactRevision != 5 ||
		!seen[1].Canceled || seen[1].CancelReason != "" || len(seen[1].Events) != 0 {
		t.Fatalf("responses of the compacted watch: %+v", seen)
	}
	// The compaction revision itself is still served.
	waitEvents(t, c, atID, w.expect(at, 0))
	// Like etcd, the compacted watch keeps its ID until the client cancels.
	if _, err := st.Watch(WatchRequest{Key: []byte("k"), ID: below}); !errors.Is(err, ErrDuplicateID) {
		t.Fatalf("compacted watch's ID reusable before cancel: %v", err)
	}
	if !st.Cancel(below) {
		t.Fatal("cancel of the compacted watch")
	}
	if n := w.hub.Metrics.CompactCancels.Load(); n != 1 {
		t.Fatalf("compact cancels %d", n)
	}
}

// TestCompactionDuringCatchUp: a watcher reading History that is behind
// the compaction point when its next read comes is canceled after the
// events it already got, which are in order and complete.
func TestCompactionDuringCatchUp(t *testing.T) {
	w := newWorld(t, Options{RingSize: 2, CatchUpRevisions: 10})
	for i := 0; i < 100; i++ {
		w.write(put("k", fmt.Sprint(i)))
	}
	w.settle(t)
	gate := make(chan struct{})
	w.hist.mu.Lock()
	w.hist.gate = gate
	w.hist.mu.Unlock()

	st := w.hub.NewStream()
	defer st.Close()
	c := collect(t, st)
	req := WatchRequest{Key: []byte("k"), StartRev: 1}
	id := mustWatch(t, st, req)
	gate <- struct{}{} // first read: revisions 1..10
	waitFor(t, "first batch", func() bool { return len(c.events(id)) == 10 })
	w.compact(50)
	close(gate)
	waitFor(t, "compaction cancel", func() bool {
		_, ok := c.find(func(r Response) bool { return r.WatchID == id && r.CompactRevision == 50 && r.Canceled })
		return ok
	})
	got := c.events(id)
	diffEvents(t, "before compaction", got, w.expect(req, 0)[:len(got)])
	if len(got) >= 50 {
		t.Fatalf("got %d events, some from compacted revisions served after the compaction", len(got))
	}
	if n := w.hub.Metrics.Watchers.Load(); n != 0 {
		t.Fatalf("watchers gauge %d", n)
	}
}

// TestSlowWatcher: a live watcher whose stream never reads is canceled with
// a reason once its buffer is full; its memory is released, writes never
// wait, and a watcher on another stream gets everything.
func TestSlowWatcher(t *testing.T) {
	const (
		revs     = 20000
		valSize  = 4 << 10
		maxBytes = 1 << 20
	)
	w := newWorld(t, Options{RingSize: 64, MaxPendingBytes: maxBytes})
	w.keep = false // the writer keeps nothing: the heap is the hub's

	slow := w.hub.NewStream()
	defer slow.Close()
	slowID := mustWatch(t, slow, WatchRequest{Key: []byte("k"), RangeEnd: []byte("l")})

	fast := w.hub.NewStream()
	defer fast.Close()
	mustWatch(t, fast, WatchRequest{Key: []byte("k"), RangeEnd: []byte("l")})
	var got atomic.Int64
	var lastRev atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for {
			rs, err := fast.Next(ctx)
			if err != nil {
				return
			}
			for _, r := range rs {
				for _, ev := range r.Events {
					if ev.Kv.ModRevision != lastRev.Load()+1 {
						panic(fmt.Sprintf("fast watcher: event at %d after %d", ev.Kv.ModRevision, lastRev.Load()))
					}
					lastRev.Store(ev.Kv.ModRevision)
					got.Add(1)
				}
			}
		}
	}()

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	val := strings.Repeat("v", valSize)
	start := time.Now()
	for i := 0; i < revs; i++ {
		w.write(put(fmt.Sprintf("k%d", i%100), val))
		if i%50 == 0 {
			// Pace the writer to the fast watcher (well inside its 1 MiB),
			// never to the slow one.
			for got.Load() < int64(i-50) {
				time.Sleep(50 * time.Microsecond)
			}
		}
	}
	publishTime := time.Since(start)
	waitFor(t, "fast watcher", func() bool { return got.Load() == revs })
	waitFor(t, "dispatch", func() bool { return w.hub.Dispatched() == revs })

	if n := w.hub.Metrics.SlowCancels.Load(); n != 1 {
		t.Fatalf("slow cancels %d, want 1", n)
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	// 80 MB went through; the hub may hold the ring (64 revisions) and a
	// few buffers, not the slow watcher's backlog.
	if grow := int64(after.HeapAlloc) - int64(before.HeapAlloc); grow > 8<<20 {
		t.Fatalf("heap grew by %d bytes", grow)
	}
	t.Logf("published %d revisions of %d bytes in %v; heap %d -> %d", revs, valSize, publishTime, before.HeapAlloc, after.HeapAlloc)

	// The slow stream finally reads: the cancel with its reason, nothing
	// else for that watch after its created response.
	rs, err := slow.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var cancelResp *Response
	for i, r := range rs {
		if r.WatchID == slowID && r.Canceled {
			cancelResp = &rs[i]
		}
		if r.WatchID == slowID && len(r.Events) > 0 {
			t.Fatalf("slow watcher's dropped events were sent")
		}
	}
	if cancelResp == nil || !strings.Contains(cancelResp.CancelReason, "too slow") {
		t.Fatalf("no cancel with a reason in %+v", rs)
	}
	// Its ID is free again: a client re-watches.
	if _, err := slow.Watch(WatchRequest{Key: []byte("k"), ID: slowID}); err != nil {
		t.Fatal(err)
	}
}

// TestCatchUpBounded: a catching-up watcher whose stream is slow does not
// get canceled; it reads on as its buffer empties.
func TestCatchUpBounded(t *testing.T) {
	w := newWorld(t, Options{RingSize: 8, MaxPendingEvents: 10, CatchUpRevisions: 25})
	for i := 0; i < 200; i++ {
		w.write(put("k", fmt.Sprint(i)))
	}
	st := w.hub.NewStream()
	defer st.Close()
	req := WatchRequest{Key: []byte("k"), StartRev: 1}
	id := mustWatch(t, st, req)
	ctx := context.Background()
	var got []*mvccpb.Event
	for len(got) < 200 {
		time.Sleep(2 * time.Millisecond)
		rs, err := st.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, r := range rs {
			if r.WatchID == id {
				if r.Canceled {
					t.Fatalf("catching-up watcher canceled: %+v", r)
				}
				n += len(r.Events)
				got = append(got, r.Events...)
			}
		}
		if n > 10 {
			t.Fatalf("%d events buffered, bound is 10", n)
		}
	}
	diffEvents(t, "catch-up", got, w.expect(req, 0))
}

// TestProgressRequest: the -1 answer comes only after every event up to its
// revision, its revision is at least the current revision at the request,
// it waits while a watcher catches up, and a stream without watchers gets
// none (etcd).
func TestProgressRequest(t *testing.T) {
	w := newWorld(t, Options{RingSize: 2})
	st := w.hub.NewStream()
	defer st.Close()
	c := collect(t, st)

	st.RequestProgress() // no watchers: no answer
	time.Sleep(20 * time.Millisecond)
	if len(c.snapshot()) != 0 {
		t.Fatalf("answer without watchers: %+v", c.snapshot())
	}

	req := WatchRequest{Key: []byte("a"), RangeEnd: []byte("b")}
	id := mustWatch(t, st, req)
	for i := 0; i < 50; i++ {
		w.write(put("a", fmt.Sprint(i)))
		w.write(put("z", fmt.Sprint(i)))
		st.RequestProgress()
	}
	waitFor(t, "50 progress answers", func() bool {
		n := 0
		for _, r := range c.snapshot() {
			if r.WatchID == -1 {
				n++
			}
		}
		return n == 50
	})
	checkProgressOrder(t, c.snapshot())
	waitEvents(t, c, id, w.expect(req, 0))

	// While a watcher catches up from History, requests are dropped, as
	// etcd drops them while a watcher is unsynced; once it is live they are
	// answered.
	w.settle(t)
	gate := make(chan struct{})
	w.hist.mu.Lock()
	w.hist.gate = gate
	w.hist.mu.Unlock()
	old := WatchRequest{Key: []byte("a"), StartRev: 1}
	oldID := mustWatch(t, st, old)
	before := len(c.snapshot())
	st.RequestProgress()
	close(gate)
	waitEvents(t, c, oldID, w.expect(old, 0))
	time.Sleep(20 * time.Millisecond)
	for _, r := range c.snapshot()[before:] {
		if r.WatchID == -1 {
			t.Fatalf("progress request made while a watcher caught up was answered: %+v", r)
		}
	}
	waitFor(t, "catch-up done", func() bool { return w.hub.Metrics.CatchingUp.Load() == 0 })
	st.RequestProgress()
	waitFor(t, "answer", func() bool {
		_, ok := c.find(func(r Response) bool { return r.WatchID == -1 && r.Revision == 100 })
		return ok
	})
	checkProgressOrder(t, c.snapshot())
}

// checkProgressOrder checks that no watcher receives an event at or below
// the revision of a progress response that came after it was created, and
// that stream-wide progress never goes back.
func checkProgressOrder(t *testing.T, rs []Response) {
	t.Helper()
	progress := map[int64]int64{}
	var last int64
	for _, r := range rs {
		switch {
		case r.Created && !r.Canceled:
			progress[r.WatchID] = 0
		case r.WatchID == InvalidWatchID && len(r.Events) == 0 && !r.Created:
			if r.Revision < last {
				t.Fatalf("progress went back from %d to %d", last, r.Revision)
			}
			last = r.Revision
			for id := range progress {
				progress[id] = max(progress[id], r.Revision)
			}
		case len(r.Events) == 0 && !r.Canceled:
			progress[r.WatchID] = max(progress[r.WatchID], r.Revision)
		}
		for _, ev := range r.Events {
			if ev.Kv.ModRevision <= progress[r.WatchID] {
				t.Fatalf("watch %d: event at %d after progress %d", r.WatchID, ev.Kv.ModRevision, progress[r.WatchID])
			}
		}
	}
}

// TestProgressFutureStart: like etcd, a progress request is dropped while
// a watcher's start revision is ahead of the store, and answered once the
// store got there.
func TestProgressFutureStart(t *testing.T) {
	w := newWorld(t, Options{CurrentRev: 5})
	st := w.hub.NewStream()
	defer st.Close()
	c := collect(t, st)
	mustWatch(t, st, WatchRequest{Key: []byte("a"), StartRev: 7})
	st.RequestProgress()
	w.write(put("b", "1"))
	st.RequestProgress()
	w.write(put("b", "2"))
	time.Sleep(20 * time.Millisecond)
	if _, ok := c.find(func(r Response) bool { return r.WatchID == -1 }); ok {
		t.Fatal("progress answered before the start revision")
	}
	st.RequestProgress()
	waitFor(t, "answer at 7", func() bool {
		r, ok := c.find(func(r Response) bool { return r.WatchID == -1 })
		return ok && r.Revision == 7
	})
}

// TestProgressCompactedWatcher: like etcd, a watcher canceled by compaction
// that the client has not canceled yet keeps the stream from answering
// progress requests.
func TestProgressCompactedWatcher(t *testing.T) {
	w := newWorld(t, Options{})
	for i := 0; i < 5; i++ {
		w.write(put("a", fmt.Sprint(i)))
	}
	w.compact(3)
	st := w.hub.NewStream()
	defer st.Close()
	c := collect(t, st)
	mustWatch(t, st, WatchRequest{Key: []byte("a")})
	mustWatch(t, st, WatchRequest{Key: []byte("a"), StartRev: 1, ID: 9})
	st.RequestProgress()
	time.Sleep(20 * time.Millisecond)
	if _, ok := c.find(func(r Response) bool { return r.WatchID == -1 }); ok {
		t.Fatal("progress answered with a compacted watcher registered")
	}
	st.Cancel(9)
	st.RequestProgress()
	waitFor(t, "answer", func() bool {
		r, ok := c.find(func(r Response) bool { return r.WatchID == -1 })
		return ok && r.Revision == 5
	})
}

// TestProgressNotify: the periodic tick gives a progress response to idle
// watchers that asked for it, at a revision all their events were sent up
// to, and skips those that got events since the last tick.
func TestProgressNotify(t *testing.T) {
	w := newWorld(t, Options{})
	st := w.hub.NewStream()
	defer st.Close()
	c := collect(t, st)
	busy := mustWatch(t, st, WatchRequest{Key: []byte("a"), ProgressNotify: true})
	idle := mustWatch(t, st, WatchRequest{Key: []byte("b"), ProgressNotify: true})
	quiet := mustWatch(t, st, WatchRequest{Key: []byte("b")})

	w.write(put("a", "1"))
	waitFor(t, "event", func() bool { return len(c.events(busy)) == 1 })
	st.TickProgress()
	waitFor(t, "progress for the idle watcher", func() bool {
		_, ok := c.find(func(r Response) bool { return r.WatchID == idle && !r.Created })
		return ok
	})
	time.Sleep(10 * time.Millisecond)
	for _, r := range c.snapshot() {
		if !r.Created && len(r.Events) == 0 && (r.WatchID == busy || r.WatchID == quiet) {
			t.Fatalf("unexpected progress %+v", r)
		}
		if r.WatchID == idle && !r.Created && r.Revision != 1 {
			t.Fatalf("progress at %d, want 1", r.Revision)
		}
	}
	// Next tick: busy was idle since.
	st.TickProgress()
	waitFor(t, "progress for the busy watcher", func() bool {
		_, ok := c.find(func(r Response) bool { return r.WatchID == busy && len(r.Events) == 0 && !r.Created })
		return ok
	})

	// Under a stream of writes the notifications never run ahead of the
	// events sent.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			w.write(put("a", fmt.Sprint(i)))
			if i%10 == 0 {
				st.TickProgress()
				st.TickProgress()
			}
		}
	}()
	time.Sleep(50 * time.Millisecond)
	close(stop)
	<-done
	rs := c.snapshot()
	var progress int64
	for _, r := range rs {
		if r.WatchID != busy {
			continue
		}
		if len(r.Events) == 0 && !r.Created {
			progress = max(progress, r.Revision)
		}
		for _, ev := range r.Events {
			if ev.Kv.ModRevision <= progress {
				t.Fatalf("event at %d after progress at %d", ev.Kv.ModRevision, progress)
			}
		}
	}
}

// TestPublishNeverBlocks: with streams that never read, Publish stays fast.
func TestPublishNeverBlocks(t *testing.T) {
	w := newWorld(t, Options{RingSize: 128, MaxPendingEvents: 1000})
	w.keep = false
	for i := 0; i < 50; i++ {
		st := w.hub.NewStream()
		defer st.Close()
		for j := 0; j < 20; j++ {
			mustWatch(t, st, WatchRequest{Key: []byte(""), RangeEnd: []byte{0}})
		}
	}
	start := time.Now()
	var worst time.Duration
	for i := 0; i < 20000; i++ {
		t0 := time.Now()
		w.write(put(fmt.Sprintf("k%d", i%10), "v"))
		worst = max(worst, time.Since(t0))
	}
	waitFor(t, "dispatch", func() bool { return w.hub.Dispatched() == 20000 })
	if n := w.hub.Metrics.SlowCancels.Load(); n != 1000 {
		t.Fatalf("slow cancels %d, want 1000", n)
	}
	t.Logf("20000 publishes in %v, slowest %v", time.Since(start), worst)
	w.hub.ringMu.Lock()
	held := len(w.hub.ring) - w.hub.head
	w.hub.ringMu.Unlock()
	if held > 128 {
		t.Fatalf("ring holds %d revisions", held)
	}
}

// TestRandomized runs random writes, watch creations at random starts
// (including compacted ones) and cancellations, on a few streams, and
// checks every watcher against the model.
func TestRandomized(t *testing.T) {
	for seed := uint64(1); seed <= 4; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rnd := rand.New(rand.NewPCG(seed, 7))
			w := newWorld(t, Options{RingSize: 1 + rnd.IntN(50), CatchUpRevisions: 1 + rnd.IntN(20), MaxPendingEvents: 1 << 20})
			keys := []string{"a", "a/1", "a/2", "b", "b/1", "c", "\x00", "zz"}
			type made struct {
				st  *Stream
				c   *collector
				id  int64
				req WatchRequest
			}
			var streams []*Stream
			var cols []*collector
			for i := 0; i < 3; i++ {
				st := w.hub.NewStream()
				defer st.Close()
				streams = append(streams, st)
				cols = append(cols, collect(t, st))
			}
			var ws []made
			var canceled []made
			compacted := int64(0)
			for step := 0; step < 3000; step++ {
				switch x := rnd.IntN(100); {
				case x < 80:
					var ops []op
					for n := 1 + rnd.IntN(3); n > 0; n-- {
						k := keys[rnd.IntN(len(keys))]
						if rnd.IntN(4) == 0 {
							ops = append(ops, del(k))
						} else {
							ops = append(ops, put(k, fmt.Sprint(step)))
						}
					}
					w.write(ops...)
				case x < 92:
					i := rnd.IntN(len(streams))
					k := keys[rnd.IntN(len(keys))]
					req := WatchRequest{Key: []byte(k), PrevKV: rnd.IntN(2) == 0, NoPut: rnd.IntN(8) == 0, NoDelete: rnd.IntN(8) == 0,
						ProgressNotify: rnd.IntN(2) == 0}
					switch rnd.IntN(3) {
					case 0:
						req.RangeEnd = []byte(k + "\xff")
					case 1:
						req.RangeEnd = []byte{0}
					}
					// Stream 0 only has watchers from now, so that its
					// progress requests are answered.
					if rev := w.hub.Rev(); rev > 0 && i > 0 && rnd.IntN(3) > 0 {
						req.StartRev = max(1, rev-int64(rnd.IntN(200)))
					}
					ws = append(ws, made{streams[i], cols[i], mustWatch(t, streams[i], req), req})
				case x < 95 && len(ws) > 0:
					j := rnd.IntN(len(ws))
					m := ws[j]
					if m.st.Cancel(m.id) {
						canceled = append(canceled, m)
					}
					ws = append(ws[:j], ws[j+1:]...)
				case x < 96:
					if rev := w.hub.Rev(); rev > compacted+50 {
						compacted = rev - 50
						w.compact(compacted)
					}
				case x < 98:
					streams[rnd.IntN(len(streams))].RequestProgress()
				default:
					streams[rnd.IntN(len(streams))].TickProgress()
				}
			}
			// Catching-up watchers may still meet a compaction: wait until
			// none is left, then for the streams to have taken everything.
			waitFor(t, "catch-up", func() bool { return w.hub.Metrics.CatchingUp.Load() == 0 })
			for _, st := range streams {
				waitFor(t, "streams drained", func() bool {
					st.mu.Lock()
					defer st.mu.Unlock()
					return len(st.ready) == 0 && len(st.ctrl) == 0
				})
			}
			time.Sleep(10 * time.Millisecond) // for the collectors to record it
			for _, m := range ws {
				created := m.c.created(t, m.id)
				if r, ok := m.c.find(func(r Response) bool { return r.WatchID == m.id && r.CompactRevision > 0 }); ok {
					if m.req.StartRev >= r.CompactRevision {
						t.Fatalf("watch from %d canceled by compaction at %d", m.req.StartRev, r.CompactRevision)
					}
					got := m.c.events(m.id)
					diffEvents(t, "compacted watch prefix", got, w.expect(m.req, created.Revision)[:len(got)])
					continue
				}
				waitEvents(t, m.c, m.id, w.expect(m.req, created.Revision))
			}
			var all, one int
			for _, c := range cols {
				rs := c.snapshot()
				checkProgressOrder(t, rs)
				for _, r := range rs {
					if len(r.Events) == 0 && !r.Created && !r.Canceled {
						if r.WatchID == InvalidWatchID {
							all++
						} else {
							one++
						}
					}
				}
			}
			t.Logf("%d watchers, %d progress answers, %d progress notifications", len(ws), all, one)
			for _, m := range canceled {
				got := m.c.events(m.id)
				want := w.expect(m.req, m.c.created(t, m.id).Revision)
				if len(got) > len(want) {
					t.Fatalf("canceled watch got more than it should")
				}
				diffEvents(t, "canceled watch prefix", got, want[:len(got)])
			}
		})
	}
}

// BenchmarkFanout: 10,000 watchers on 100 prefixes (100 per prefix, half
// with prev_kv), spread over 100 streams or multiplexed on one (as a
// kube-apiserver does), each stream drained by its own goroutine. Each op
// publishes one revision with one event, which 100 watchers receive; the
// time is per revision until every watcher has been handed its event.
func BenchmarkFanout(b *testing.B) {
	for _, numStreams := range []int{100, 1} {
		b.Run(fmt.Sprintf("streams=%d", numStreams), func(b *testing.B) {
			benchFanout(b, numStreams)
		})
	}
}

func benchFanout(b *testing.B, numStreams int) {
	const (
		prefixes  = 100
		perPrefix = 100
	)
	w := newWorld(b, Options{RingSize: 10000, MaxPendingEvents: 1 << 20, MaxPendingBytes: 1 << 40})
	w.keep = false
	var received atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var streams []*Stream
	for i := 0; i < numStreams; i++ {
		st := w.hub.NewStream()
		defer st.Close()
		streams = append(streams, st)
		go func() {
			for {
				rs, err := st.Next(ctx)
				if err != nil {
					return
				}
				n := 0
				for _, r := range rs {
					n += len(r.Events)
				}
				received.Add(int64(n))
			}
		}()
	}
	n := 0
	for p := 0; p < prefixes; p++ {
		for j := 0; j < perPrefix; j++ {
			pre := fmt.Sprintf("/registry/r%03d/", p)
			mustWatch(b, streams[n%numStreams], WatchRequest{Key: []byte(pre), RangeEnd: []byte(pre[:len(pre)-1] + "0"), PrevKV: j%2 == 0})
			n++
		}
	}
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprintf("/registry/r%03d/obj%d", i%prefixes, i)
	}
	val := strings.Repeat("x", 256)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		w.write(put(keys[i%len(keys)], val))
	}
	want := int64(b.N) * perPrefix
	for received.Load() < want {
		time.Sleep(50 * time.Microsecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(want)/b.Elapsed().Seconds(), "events/s")
	if c := w.hub.Metrics.SlowCancels.Load(); c != 0 {
		b.Fatalf("%d slow cancels", c)
	}
}

// TestRingBytes: the ring also stays under its byte bound; what it dropped
// is read from History.
func TestRingBytes(t *testing.T) {
	w := newWorld(t, Options{RingBytes: 64 << 10})
	val := strings.Repeat("v", 4<<10)
	for i := 0; i < 100; i++ {
		w.write(put("k", val+fmt.Sprint(i)))
	}
	w.settle(t)
	w.hub.ringMu.Lock()
	held, bytes, from := len(w.hub.ring)-w.hub.head, w.hub.ringBytes, w.hub.ringFrom
	w.hub.ringMu.Unlock()
	if bytes > 64<<10 || held > 8 || from < 90 {
		t.Fatalf("ring holds %d revisions, %d bytes, from %d", held, bytes, from)
	}
	st := w.hub.NewStream()
	defer st.Close()
	c := collect(t, st)
	req := WatchRequest{Key: []byte("k"), StartRev: 1, PrevKV: true}
	waitEvents(t, c, mustWatch(t, st, req), w.expect(req, 0))
}

// TestPublishGaps: a follower tailing History publishes only revisions that
// changed something; the skipped ones count as empty.
func TestPublishGaps(t *testing.T) {
	hub := NewHub(newFakeHistory(), Options{CurrentRev: 1, Logger: slog.New(slog.DiscardHandler)})
	defer hub.Close()
	st := hub.NewStream()
	defer st.Close()
	c := collect(t, st)
	live := mustWatch(t, st, WatchRequest{Key: []byte("k")})
	ev := func(rev int64) []*mvccpb.Event {
		return []*mvccpb.Event{{Type: mvccpb.Event_PUT, Kv: &mvccpb.KeyValue{Key: []byte("k"), ModRevision: rev, CreateRevision: 2}}}
	}
	hub.Publish(2, ev(2))
	hub.Publish(5, ev(5))
	hub.Publish(9, ev(9))
	from3 := mustWatch(t, st, WatchRequest{Key: []byte("k"), StartRev: 3})
	revs := func(id int64) (out []int64) {
		for _, e := range c.events(id) {
			out = append(out, e.Kv.ModRevision)
		}
		return out
	}
	waitFor(t, "events", func() bool { return len(revs(live)) == 3 && len(revs(from3)) == 2 })
	if fmt.Sprint(revs(live), revs(from3)) != "[2 5 9] [5 9]" {
		t.Fatalf("got %v and %v", revs(live), revs(from3))
	}
	waitFor(t, "catch-up", func() bool { return hub.Metrics.CatchingUp.Load() == 0 })
	st.RequestProgress()
	waitFor(t, "progress at 9", func() bool {
		r, ok := c.find(func(r Response) bool { return r.WatchID == InvalidWatchID })
		return ok && r.Revision == 9
	})
}
