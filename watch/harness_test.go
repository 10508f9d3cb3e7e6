package watch

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// fakeHistory is an in-memory History: every revision the test writer
// published, a compaction point, and optional hooks to slow or gate reads.
type fakeHistory struct {
	mu        sync.Mutex
	revs      map[int64][]*mvccpb.Event
	compacted int64
	calls     int
	gate      chan struct{} // when set, each Events call waits for a token
	delay     time.Duration
}

func newFakeHistory() *fakeHistory {
	return &fakeHistory{revs: make(map[int64][]*mvccpb.Event)}
}

func (f *fakeHistory) add(rev int64, evs []*mvccpb.Event) {
	f.mu.Lock()
	f.revs[rev] = evs
	f.mu.Unlock()
}

func (f *fakeHistory) compact(rev int64) {
	f.mu.Lock()
	f.compacted = rev
	f.mu.Unlock()
}

func (f *fakeHistory) Events(from, to int64, withPrev bool, fn func(int64, []*mvccpb.Event) error) error {
	f.mu.Lock()
	gate, delay := f.gate, f.delay
	f.calls++
	f.mu.Unlock()
	if gate != nil {
		<-gate
	}
	if delay > 0 {
		time.Sleep(delay)
	}
	f.mu.Lock()
	if c := f.compacted; from < c {
		f.mu.Unlock()
		return fmt.Errorf("fake history: revision %d compacted at %d", from, c)
	}
	var revs []int64
	for r := range f.revs {
		if r >= from && r <= to {
			revs = append(revs, r)
		}
	}
	sort.Slice(revs, func(i, j int) bool { return revs[i] < revs[j] })
	out := make([][]*mvccpb.Event, len(revs))
	for i, r := range revs {
		out[i] = f.revs[r]
	}
	f.mu.Unlock()
	for i, r := range revs {
		evs := out[i]
		if !withPrev {
			cp := make([]*mvccpb.Event, len(evs))
			for j, ev := range evs {
				cp[j] = &mvccpb.Event{Type: ev.Type, Kv: ev.Kv}
			}
			evs = cp
		}
		if err := fn(r, evs); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeHistory) numCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// world is a tiny single writer: it keeps the latest state, builds events
// the way package revision does (PrevKv when the key existed, create
// events with CreateRevision == ModRevision), records them in the fake
// history and publishes them.
type world struct {
	mu   sync.Mutex
	rev  int64
	kvs  map[string]*mvccpb.KeyValue
	hist *fakeHistory
	hub  *Hub
	// all is every published revision, in order, for computing what a
	// watcher should have seen.
	all []revEvents
	// keep controls whether all is filled (off for memory tests).
	keep bool
}

type revEvents struct {
	rev int64
	evs []*mvccpb.Event
}

type op struct {
	del bool
	key string
	val string
}

func put(k, v string) op { return op{key: k, val: v} }
func del(k string) op    { return op{del: true, key: k} }

func newWorld(t testing.TB, opts Options) *world {
	w := &world{kvs: make(map[string]*mvccpb.KeyValue), hist: newFakeHistory(), keep: true}
	if opts.Logger == nil && !testing.Verbose() {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	w.hub = NewHub(w.hist, opts)
	w.rev = opts.CurrentRev
	t.Cleanup(w.hub.Close)
	return w
}

// write commits ops as one revision and publishes it.
func (w *world) write(ops ...op) int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.rev++
	rev := w.rev
	var evs []*mvccpb.Event
	for _, o := range ops {
		prev := w.kvs[o.key]
		if o.del {
			if prev == nil {
				continue
			}
			delete(w.kvs, o.key)
			evs = append(evs, &mvccpb.Event{
				Type:   mvccpb.Event_DELETE,
				Kv:     &mvccpb.KeyValue{Key: []byte(o.key), ModRevision: rev},
				PrevKv: prev,
			})
			continue
		}
		kv := &mvccpb.KeyValue{Key: []byte(o.key), Value: []byte(o.val), ModRevision: rev, CreateRevision: rev, Version: 1}
		if prev != nil {
			kv.CreateRevision = prev.CreateRevision
			kv.Version = prev.Version + 1
		}
		w.kvs[o.key] = kv
		evs = append(evs, &mvccpb.Event{Type: mvccpb.Event_PUT, Kv: kv, PrevKv: prev})
	}
	if w.keep {
		w.hist.add(rev, evs)
		w.all = append(w.all, revEvents{rev, evs})
	}
	w.hub.Publish(rev, evs)
	return rev
}

// settle waits until the dispatcher has handled every revision written, so
// that the ring holds only its last RingSize revisions.
func (w *world) settle(t testing.TB) {
	t.Helper()
	waitFor(t, "dispatch", func() bool { return w.hub.Dispatched() == w.hub.Rev() })
}

// compactionRevs holds every revision a test compacted at: an event at
// such a revision loses its prev_kv if it is delivered after the compaction
// (as etcd: the revision before it is gone), so either form is expected.
var compactionRevs sync.Map

func (w *world) compact(rev int64) {
	compactionRevs.Store(rev, true)
	w.hist.compact(rev)
	w.hub.Compacted(rev)
}

// expect is what a watcher created with req (after created revision
// createdRev) must receive, given everything written so far.
func (w *world) expect(req WatchRequest, createdRev int64) []*mvccpb.Event {
	w.mu.Lock()
	defer w.mu.Unlock()
	r := parseRange(req.Key, req.RangeEnd)
	start := req.StartRev
	if start == 0 {
		start = createdRev + 1
	}
	var out []*mvccpb.Event
	for _, re := range w.all {
		if re.rev < start {
			continue
		}
		for _, ev := range re.evs {
			if !r.contains(string(ev.Kv.Key)) {
				continue
			}
			if (req.NoPut && ev.Type == mvccpb.Event_PUT) || (req.NoDelete && ev.Type == mvccpb.Event_DELETE) {
				continue
			}
			e := &mvccpb.Event{Type: ev.Type, Kv: ev.Kv}
			if req.PrevKV {
				e.PrevKv = ev.PrevKv
			}
			out = append(out, e)
		}
	}
	return out
}

// collector drains a stream in the background like a gRPC sender.
type collector struct {
	st     *Stream
	mu     sync.Mutex
	resps  []Response
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

func collect(t testing.TB, st *Stream) *collector {
	ctx, cancel := context.WithCancel(context.Background())
	c := &collector{st: st, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for {
			rs, err := st.Next(ctx)
			if err != nil {
				c.mu.Lock()
				c.err = err
				c.mu.Unlock()
				return
			}
			c.mu.Lock()
			c.resps = append(c.resps, rs...)
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() { c.cancel(); <-c.done })
	return c
}

func (c *collector) snapshot() []Response {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Response(nil), c.resps...)
}

// events returns the events received for watch id, in order.
func (c *collector) events(id int64) []*mvccpb.Event {
	var out []*mvccpb.Event
	for _, r := range c.snapshot() {
		if r.WatchID == id {
			out = append(out, r.Events...)
		}
	}
	return out
}

func (c *collector) find(pred func(Response) bool) (Response, bool) {
	for _, r := range c.snapshot() {
		if pred(r) {
			return r, true
		}
	}
	return Response{}, false
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func evString(ev *mvccpb.Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %q@%d", ev.Type, ev.Kv.Key, ev.Kv.ModRevision)
	if ev.Type == mvccpb.Event_PUT {
		fmt.Fprintf(&b, "=%q(c%d,v%d)", ev.Kv.Value, ev.Kv.CreateRevision, ev.Kv.Version)
	}
	if ev.PrevKv != nil {
		fmt.Fprintf(&b, " prev=%q@%d", ev.PrevKv.Value, ev.PrevKv.ModRevision)
	}
	return b.String()
}

func sameEvents(a, b []*mvccpb.Event) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.Type != y.Type || !bytes.Equal(x.Kv.Key, y.Kv.Key) || x.Kv.ModRevision != y.Kv.ModRevision ||
			!bytes.Equal(x.Kv.Value, y.Kv.Value) {
			return false
		}
		if (x.PrevKv == nil) != (y.PrevKv == nil) {
			if _, compacted := compactionRevs.Load(x.Kv.ModRevision); !compacted {
				return false
			}
			continue
		}
		if x.PrevKv != nil && (x.PrevKv.ModRevision != y.PrevKv.ModRevision || !bytes.Equal(x.PrevKv.Value, y.PrevKv.Value)) {
			return false
		}
	}
	return true
}

func diffEvents(t testing.TB, name string, got, want []*mvccpb.Event) {
	t.Helper()
	if sameEvents(got, want) {
		return
	}
	n := 0
	for n < len(got) && n < len(want) && sameEvents(got[n:n+1], want[n:n+1]) {
		n++
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: got %d events, want %d; first difference at %d\n", name, len(got), len(want), n)
	for i := max(0, n-2); i < min(n+3, max(len(got), len(want))); i++ {
		g, w := "-", "-"
		if i < len(got) {
			g = evString(got[i])
		}
		if i < len(want) {
			w = evString(want[i])
		}
		fmt.Fprintf(&b, "  [%d] got %s\n       want %s\n", i, g, w)
	}
	t.Fatal(b.String())
}

// created returns the created response of watch id.
func (c *collector) created(t testing.TB, id int64) Response {
	t.Helper()
	var r Response
	waitFor(t, fmt.Sprintf("created response of watch %d", id), func() bool {
		var ok bool
		r, ok = c.find(func(r Response) bool { return r.Created && r.WatchID == id })
		return ok
	})
	return r
}
