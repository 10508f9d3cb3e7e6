// Package watch owns the event ring, the watchers and the fan-out of
// committed revisions to them. It learns of new revisions through Publish
// (it implements revision.Publisher) and reads older ones back through
// History; it must not write to storage.
//
// A Hub keeps the last Options.RingSize revisions in memory (at most
// Options.RingBytes of them). Watchers live on a Stream (one per gRPC Watch
// stream). A watcher whose start revision is already published first
// catches up — from the ring when it still holds the start, else from
// History — and then joins the live path, where one dispatcher goroutine
// matches each revision against an index of watched ranges and appends the
// matching events to each watcher's bounded buffer.
// Publish never waits for watchers; a live watcher whose buffer overflows is
// canceled with a reason and its buffer released.
//
// Lock order: syncMu, then idxMu, then a Stream's mu. ringMu and pwMu are
// leaves.
package watch

import (
	"errors"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// History reads committed revisions back from storage.
type History interface {
	// Events calls fn for every revision r with from <= r <= to that changed
	// something, in order, with its events (PrevKv filled when withPrev).
	// Revisions below the compaction point return an error. The hub keeps
	// the event slices it is given; History must not reuse them.
	Events(from, to int64, withPrev bool, fn func(rev int64, evs []*mvccpb.Event) error) error
}

// Defaults for Options.
const (
	DefaultRingSize         = 10000
	DefaultRingBytes        = 32 << 20 // older starts are served from the stored history
	DefaultMaxPendingEvents = 100000
	DefaultMaxPendingBytes  = 64 << 20
	DefaultCatchUpRevisions = 1000
	DefaultCatchUpWatchers  = 1024
)

// Options configure a Hub. Zero values take the defaults.
type Options struct {
	// RingSize is how many revisions (that changed something) are kept in
	// memory for watchers that start in the recent past. The ring only
	// drops revisions the dispatcher has handled, so it may briefly hold
	// more.
	RingSize int
	// RingBytes bounds the ring's events by size (key, value and previous
	// pair bytes, as eventSize counts them), whichever bound is hit first.
	RingBytes int64
	// MaxPendingEvents and MaxPendingBytes bound one watcher's buffer of
	// events not yet taken by its stream. A live watcher over either bound
	// is canceled; a catching-up watcher simply waits (it reads on when its
	// buffer is half empty).
	MaxPendingEvents int
	MaxPendingBytes  int64
	// CurrentRev is the last committed revision at start; CompactedRev the
	// compaction point (both loaded from storage by the server).
	CurrentRev   int64
	CompactedRev int64
	// CatchUpRevisions is how many revisions one catch-up round reads from
	// History; CatchUpWatchers how many watchers one round serves.
	CatchUpRevisions int
	CatchUpWatchers  int
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.RingSize <= 0 {
		o.RingSize = DefaultRingSize
	}
	if o.RingBytes <= 0 {
		o.RingBytes = DefaultRingBytes
	}
	if o.MaxPendingEvents <= 0 {
		o.MaxPendingEvents = DefaultMaxPendingEvents
	}
	if o.MaxPendingBytes <= 0 {
		o.MaxPendingBytes = DefaultMaxPendingBytes
	}
	if o.CatchUpRevisions <= 0 {
		o.CatchUpRevisions = DefaultCatchUpRevisions
	}
	if o.CatchUpWatchers <= 0 {
		o.CatchUpWatchers = DefaultCatchUpWatchers
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// Metrics are the hub's counters and gauges, ready to be exported.
type Metrics struct {
	Streams         atomic.Int64 // gauge: open streams
	Watchers        atomic.Int64 // gauge: watchers live or catching up
	CatchingUp      atomic.Int64 // gauge: watchers still reading the past
	EventsPublished atomic.Int64 // counter: events received through Publish
	EventsSent      atomic.Int64 // counter: events handed to stream senders
	SlowCancels     atomic.Int64 // counter: watchers canceled for a full buffer
	CompactCancels  atomic.Int64 // counter: watchers canceled by compaction
	HistoryReads    atomic.Int64 // counter: History.Events calls
	HistoryErrors   atomic.Int64 // counter: History.Events failures
}

// entry is one revision's events. evs is shared by every reader and never
// modified.
type entry struct {
	rev  int64
	evs  []*mvccpb.Event
	size int64 // set for ring entries
	once sync.Once
	np   []*mvccpb.Event
	// prevGone is set once the revision before this one is compacted: like
	// etcd, events at the compaction revision then carry no prev_kv (which
	// makes kube-apiserver end such a watch with 410 Gone and relist).
	prevGone atomic.Bool
}

// withoutPrev returns the events with PrevKv left out (for watchers that did
// not ask for it), built once per revision.
func (e *entry) withoutPrev() []*mvccpb.Event {
	e.once.Do(func() {
		var np []*mvccpb.Event
		for i, ev := range e.evs {
			if ev.PrevKv == nil {
				continue
			}
			if np == nil {
				np = make([]*mvccpb.Event, len(e.evs))
				copy(np, e.evs)
			}
			np[i] = &mvccpb.Event{Type: ev.Type, Kv: ev.Kv}
		}
		if np == nil {
			np = e.evs
		}
		e.np = np
	})
	return e.np
}

// Hub fans committed revisions out to watchers. It implements
// revision.Publisher.
type Hub struct {
	hist History
	opts Options
	lg   *slog.Logger

	// Metrics may be read at any time.
	Metrics Metrics

	ringMu    sync.Mutex
	ring      []*entry // ring[head:] in revision order
	head      int
	current   int64 // last published revision
	ringFrom  int64 // every event of revisions >= ringFrom is in the ring
	ringBytes int64
	compacted int64

	cur        atomic.Int64 // == current
	dispatched atomic.Int64 // every live watcher has been given all events <= dispatched
	compactRev atomic.Int64 // == compacted

	idxMu    sync.Mutex
	live     *index
	removals []*watcher

	syncMu  sync.Mutex
	catchUp map[*watcher]struct{}
	cix     *index // catch-up round scratch, syncer goroutine only

	pwMu     sync.Mutex
	pwaiters map[*Stream]struct{} // streams waiting to answer a progress request
	nwaiters atomic.Int32

	dispatchWake chan struct{}
	syncWake     chan struct{}
	done         chan struct{}
	closeOnce    sync.Once
	wg           sync.WaitGroup
}

// NewHub starts a hub at opts.CurrentRev. Close stops it.
func NewHub(h History, opts Options) *Hub {
	opts = opts.withDefaults()
	hub := &Hub{
		hist:         h,
		opts:         opts,
		lg:           opts.Logger,
		current:      opts.CurrentRev,
		ringFrom:     opts.CurrentRev + 1,
		compacted:    opts.CompactedRev,
		live:         newIndex(),
		catchUp:      make(map[*watcher]struct{}),
		pwaiters:     make(map[*Stream]struct{}),
		dispatchWake: make(chan struct{}, 1),
		syncWake:     make(chan struct{}, 1),
		done:         make(chan struct{}),
	}
	hub.cur.Store(opts.CurrentRev)
	hub.dispatched.Store(opts.CurrentRev)
	hub.compactRev.Store(opts.CompactedRev)
	hub.wg.Add(2)
	go hub.dispatchLoop()
	go hub.syncLoop()
	return hub
}

// Close stops the hub's goroutines; streams' Next then returns ErrClosed.
func (h *Hub) Close() {
	h.closeOnce.Do(func() {
		close(h.done)
		h.wg.Wait()
	})
}

// Rev is the last published revision.
func (h *Hub) Rev() int64 { return h.cur.Load() }

// CompactRev is the compaction point.
func (h *Hub) CompactRev() int64 { return h.compactRev.Load() }

// Dispatched is the revision up to which every live watcher has been given
// its events.
func (h *Hub) Dispatched() int64 { return h.dispatched.Load() }

// Publish records a committed revision and wakes the dispatcher. It never
// waits for watchers. The hub keeps evs; the caller must not modify them
// afterwards. Revisions must come in order; a repeated one is ignored, and
// skipped ones are taken to have changed nothing.
func (h *Hub) Publish(rev int64, evs []*mvccpb.Event) {
	select {
	case <-h.done:
		return // closed: nobody dispatches any more
	default:
	}
	h.ringMu.Lock()
	if rev <= h.current {
		h.ringMu.Unlock()
		h.lg.Warn("watch: revision published twice; ignored", "rev", rev, "current", h.current)
		return
	}
	if rev != h.current+1 {
		// A follower tailing History skips revisions that changed nothing.
		h.lg.Debug("watch: revisions without events skipped", "from", h.current+1, "to", rev-1)
	}
	h.current = rev
	if len(evs) > 0 {
		e := &entry{rev: rev, evs: evs}
		for _, ev := range evs {
			e.size += eventSize(ev)
		}
		h.ring = append(h.ring, e)
		h.ringBytes += e.size
		h.evictLocked()
	}
	h.cur.Store(rev)
	h.ringMu.Unlock()
	h.Metrics.EventsPublished.Add(int64(len(evs)))
	select {
	case h.dispatchWake <- struct{}{}:
	default:
	}
}

// Compacted records that revisions below rev are gone: watchers still
// reading older revisions are canceled with CompactRevision rev.
func (h *Hub) Compacted(rev int64) {
	h.ringMu.Lock()
	if rev > h.compacted {
		h.compacted = rev
		h.compactRev.Store(rev)
		// Watchers can start at the compaction revision but not below it.
		for _, e := range h.ring[h.head:] {
			if e.rev >= rev {
				if e.rev == rev {
					e.prevGone.Store(true)
				}
				break
			}
		}
	}
	h.ringMu.Unlock()
	h.wakeSyncer()
}

// evictLocked drops the oldest revisions beyond RingSize or RingBytes, but
// never one the dispatcher has not handled yet.
func (h *Hub) evictLocked() {
	d := h.dispatched.Load()
	for n := len(h.ring) - h.head; n > h.opts.RingSize || (n > 0 && h.ringBytes > h.opts.RingBytes); n-- {
		e := h.ring[h.head]
		if e.rev > d {
			break
		}
		h.ring[h.head] = nil
		h.head++
		h.ringFrom = e.rev + 1
		h.ringBytes -= e.size
	}
	if h.head >= 1024 && h.head*2 >= len(h.ring) {
		n := copy(h.ring, h.ring[h.head:])
		clear(h.ring[n:])
		h.ring = h.ring[:n]
		h.head = 0
	}
}

// entriesFromLocked returns the ring's entries with rev >= from (at most
// limit of them when limit > 0).
func (h *Hub) entriesFromLocked(from int64, limit int) []*entry {
	r := h.ring[h.head:]
	i := sort.Search(len(r), func(i int) bool { return r[i].rev >= from })
	r = r[i:]
	if limit > 0 && len(r) > limit {
		r = r[:limit]
	}
	out := make([]*entry, len(r))
	copy(out, r)
	return out
}

const dispatchBatch = 256

func (h *Hub) dispatchLoop() {
	defer h.wg.Done()
	for {
		select {
		case <-h.dispatchWake:
		case <-h.done:
			return
		}
		h.dispatch()
	}
}

// dispatch hands every published revision not yet dispatched to the live
// watchers, in batches so that watcher registration is not held up long.
func (h *Hub) dispatch() {
	for {
		d := h.dispatched.Load()
		h.ringMu.Lock()
		upTo := h.current
		var entries []*entry
		if upTo > d {
			entries = h.entriesFromLocked(d+1, dispatchBatch)
			if len(entries) == dispatchBatch {
				upTo = entries[len(entries)-1].rev
			}
		}
		h.ringMu.Unlock()
		if upTo <= d {
			return
		}

		h.idxMu.Lock()
		for _, e := range entries {
			h.fanoutLive(e)
		}
		h.dispatched.Store(upTo)
		h.idxMu.Unlock()

		// Publish evicts too, but not what was still undispatched then.
		h.ringMu.Lock()
		h.evictLocked()
		h.ringMu.Unlock()

		if h.nwaiters.Load() > 0 {
			h.pwMu.Lock()
			for s := range h.pwaiters {
				s.poke()
			}
			h.pwMu.Unlock()
		}
	}
}

// fanoutLive gives e to every live watcher interested in it. idxMu held.
func (h *Hub) fanoutLive(e *entry) {
	for _, g := range h.live.match(e.evs) {
		for _, w := range g.watchers {
			if e.rev < w.minRev {
				continue
			}
			evs, n := g.variant(e, w.variant)
			if len(evs) == 0 {
				continue
			}
			if !w.s.deliverLive(w, e.rev, evs, n) {
				h.removals = append(h.removals, w)
			}
		}
	}
	h.live.release()
	for i, w := range h.removals {
		h.live.remove(w)
		h.removals[i] = nil
	}
	h.removals = h.removals[:0]
}

func (h *Hub) wakeSyncer() {
	select {
	case h.syncWake <- struct{}{}:
	default:
	}
}

func (h *Hub) addProgressWaiter(s *Stream) {
	h.pwMu.Lock()
	if _, ok := h.pwaiters[s]; !ok {
		h.pwaiters[s] = struct{}{}
		h.nwaiters.Add(1)
	}
	h.pwMu.Unlock()
}

func (h *Hub) removeProgressWaiter(s *Stream) {
	h.pwMu.Lock()
	if _, ok := h.pwaiters[s]; ok {
		delete(h.pwaiters, s)
		h.nwaiters.Add(-1)
	}
	h.pwMu.Unlock()
}

// syncLoop runs catch-up rounds while watchers need the past.
func (h *Hub) syncLoop() {
	defer h.wg.Done()
	var retry <-chan time.Time
	backoff := 10 * time.Millisecond
	for {
		select {
		case <-h.syncWake:
		case <-retry:
		case <-h.done:
			return
		}
		retry = nil
		for {
			select {
			case <-h.done:
				return
			default:
			}
			more, err := h.syncRound()
			if err != nil {
				retry = time.After(backoff)
				backoff = min(2*backoff, 2*time.Second)
				break
			}
			backoff = 10 * time.Millisecond
			if !more {
				break
			}
		}
	}
}

// syncRound serves one round of catch-up to the watchers that have room.
// It reports whether another round may make progress.
func (h *Hub) syncRound() (bool, error) {
	h.syncMu.Lock()
	cands := make([]*watcher, 0, min(len(h.catchUp), h.opts.CatchUpWatchers))
	for w := range h.catchUp {
		if !w.blocked.Load() {
			cands = append(cands, w)
			if len(cands) == h.opts.CatchUpWatchers {
				break
			}
		}
	}
	h.syncMu.Unlock()
	if len(cands) == 0 {
		return false, nil
	}

	compact := h.compactRev.Load()
	h.ringMu.Lock()
	ringFrom := h.ringFrom
	h.ringMu.Unlock()
	var mem, old []*watcher
	for _, w := range cands {
		switch {
		case w.nextRev < compact:
			h.cancelCompacted(w, compact)
		case w.nextRev >= ringFrom:
			mem = append(mem, w)
		case h.hist == nil:
			// Without History what the ring dropped is gone, as if compacted.
			h.cancelCompacted(w, ringFrom)
		default:
			old = append(old, w)
		}
	}

	if len(old) > 0 {
		from, withPrev := old[0].nextRev, false
		for _, w := range old {
			from = min(from, w.nextRev)
			withPrev = withPrev || w.variant&variantPrev != 0
		}
		to := min(ringFrom-1, from+int64(h.opts.CatchUpRevisions)-1)
		var entries []*entry
		h.Metrics.HistoryReads.Add(1)
		err := h.hist.Events(from, to, withPrev, func(rev int64, evs []*mvccpb.Event) error {
			if rev < from || rev > to {
				return nil
			}
			entries = append(entries, &entry{rev: rev, evs: evs})
			return nil
		})
		if err != nil {
			h.Metrics.HistoryErrors.Add(1)
			if h.compactRev.Load() > from {
				return true, nil // the next round cancels the compacted watchers
			}
			h.lg.Warn("watch: reading history failed; retrying", "from", from, "to", to, "err", err)
			return false, err
		}
		h.catchUpRound(old, entries, to)
	}

	if len(mem) > 0 {
		from := mem[0].nextRev
		for _, w := range mem {
			from = min(from, w.nextRev)
		}
		h.ringMu.Lock()
		if from < h.ringFrom {
			h.ringMu.Unlock()
			return true, nil // evicted meanwhile: the next round reads History
		}
		to := h.current
		entries := h.entriesFromLocked(from, 0)
		h.ringMu.Unlock()
		h.catchUpRound(mem, entries, to)
		h.handoff(mem)
	}
	return true, nil
}

// catchUpRound gives ws the events of entries (revisions up to to) that each
// has not seen, stopping for a watcher whose buffer is half full.
func (h *Hub) catchUpRound(ws []*watcher, entries []*entry, to int64) {
	if h.cix == nil {
		h.cix = newIndex()
	}
	ix := h.cix
	for _, w := range ws {
		w.roundBlocked = false
		ix.add(w)
	}
	for _, e := range entries {
		if e.rev > to {
			break
		}
		for _, g := range ix.match(e.evs) {
			for _, w := range g.watchers {
				if w.roundBlocked || e.rev < w.nextRev {
					continue
				}
				evs, n := g.variant(e, w.variant)
				if len(evs) == 0 {
					continue
				}
				if !w.s.deliverCatchUp(w, e.rev, evs, n) {
					w.roundBlocked = true
					w.nextRev = e.rev
				}
			}
		}
		ix.release()
	}
	for _, w := range ws {
		ix.remove(w)
		if !w.roundBlocked && w.nextRev <= to {
			w.nextRev = to + 1
		}
	}
}

// handoff moves watchers that have seen everything up to the dispatched
// revision onto the live path: from then on the dispatcher gives them every
// revision >= nextRev, so nothing is missed or repeated.
func (h *Hub) handoff(ws []*watcher) {
	h.syncMu.Lock()
	h.idxMu.Lock()
	d := h.dispatched.Load()
	for _, w := range ws {
		if w.roundBlocked || w.nextRev <= d {
			continue
		}
		s := w.s
		s.mu.Lock()
		if w.state == stateCatchUp {
			w.state = stateLive
			w.minRev = w.nextRev
			h.live.add(w)
			delete(h.catchUp, w)
			s.nCatchUp--
			h.Metrics.CatchingUp.Add(-1)
			if s.progressReqs > 0 {
				s.signalLocked()
			}
		}
		s.mu.Unlock()
	}
	h.idxMu.Unlock()
	h.syncMu.Unlock()
}

// cancelCompacted ends a catching-up watcher that needs revisions below the
// compaction point, like etcd: a canceled response with CompactRevision,
// after the events it was already given. Its ID stays taken until the
// client cancels it.
func (h *Hub) cancelCompacted(w *watcher, compact int64) {
	s := w.s
	h.syncMu.Lock()
	s.mu.Lock()
	if w.state == stateCatchUp {
		delete(h.catchUp, w)
		s.nCatchUp--
		h.Metrics.CatchingUp.Add(-1)
		s.finishLocked(w)
		s.nCompacted++
		w.terminal = &Response{WatchID: w.id, Canceled: true, CompactRevision: compact}
		s.readyLocked(w)
		h.Metrics.CompactCancels.Add(1)
	}
	s.mu.Unlock()
	h.syncMu.Unlock()
}

// ErrClosed is returned by a closed Stream or Hub.
var ErrClosed = errors.New("watch: closed")
