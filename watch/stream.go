package watch

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// Errors a watch creation can fail with. Their texts are etcd's cancel
// reasons, which clients see.
var (
	ErrEmptyRange  = errors.New("mvcc: watcher range is empty")
	ErrDuplicateID = errors.New("mvcc: duplicate watch ID provided on the WatchStream")
	// ErrNegativeStart: etcd answers a negative start revision with its
	// compaction error text.
	ErrNegativeStart error = rpctypes.ErrCompacted
)

// AutoWatchID asks the stream to choose the watch ID (clientv3.AutoWatchID).
const AutoWatchID = 0

// InvalidWatchID is the ID of responses not tied to one watcher
// (clientv3.InvalidWatchID): failed creations and stream-wide progress.
const InvalidWatchID = -1

// WatchRequest is a watch creation as it arrives on the wire.
type WatchRequest struct {
	// ID is the client-chosen watch ID, or AutoWatchID.
	ID int64
	// Key and RangeEnd follow etcd: an empty Key means "\x00"; an empty
	// RangeEnd watches Key alone; RangeEnd "\x00" watches every key >= Key;
	// otherwise [Key, RangeEnd).
	Key, RangeEnd []byte
	// StartRev is the first revision wanted; 0 means the next one.
	StartRev int64
	// PrevKV asks for the previous key-value pair of non-create events.
	PrevKV bool
	// NoPut and NoDelete filter those event types out.
	NoPut, NoDelete bool
	// ProgressNotify asks for periodic progress notifications (see
	// Stream.TickProgress).
	ProgressNotify bool
	// Fragment is copied to the watcher's responses so the sender may split
	// large ones.
	Fragment bool
}

// Response is one message for the client, in the order Next returns it. The
// header revision is Revision; Events are shared and must not be modified.
type Response struct {
	WatchID         int64
	Revision        int64
	Created         bool
	Canceled        bool
	CompactRevision int64
	CancelReason    string
	// Fragment is set when the watcher asked for large responses to be
	// split; the sender does the splitting.
	Fragment bool
	Events   []*mvccpb.Event
}

const (
	stateCatchUp int32 = iota
	stateLive
	stateDone
)

// chunk is one revision's events for one watcher.
type chunk struct {
	rev   int64
	evs   []*mvccpb.Event
	bytes int64
	// hdr is the header revision to send: the event's own revision on the
	// live path, the hub's current revision for history catch-up (etcd
	// sends its store revision at sync time there).
	hdr int64
}

type watcher struct {
	// Set at creation, then read-only.
	s              *Stream
	id             int64
	r              keyRange
	startRev       int64
	variant        uint8
	progressNotify bool
	fragment       bool

	// idxMu (live) or the syncer goroutine (catch-up) for cix.
	grp  *group
	gidx int
	// idxMu: first revision the dispatcher gives it.
	minRev int64
	// syncer goroutine (and Watch under syncMu before it is visible).
	nextRev      int64
	roundBlocked bool
	// Set under s.mu by a catch-up delivery that found the buffer full,
	// cleared under s.mu when the stream takes the buffer.
	blocked atomic.Bool

	// s.mu
	state        int32
	queue        []chunk
	qEvents      int
	qBytes       int64
	terminal     *Response
	inReady      bool
	idle         bool // no events sent since the last progress tick
	wantProgress bool
}

// Stream is the set of watchers of one client stream and their ordered
// output. Watch, Cancel and the progress calls may be called from one
// goroutine while another calls Next.
type Stream struct {
	h      *Hub
	notify chan struct{}
	closed chan struct{}

	mu           sync.Mutex
	isClosed     bool
	watchers     map[int64]*watcher
	nextID       int64
	active       int // watchers live or catching up
	nCatchUp     int
	nCompacted   int   // watchers canceled by compaction, kept until the client cancels
	maxStartRev  int64 // upper bound of live watchers' start revisions
	ctrl         []Response
	ready        []*watcher
	signaled     bool
	progressReqs int
	progressMin  int64
	tickPending  bool
}

// NewStream opens a stream of watchers.
func (h *Hub) NewStream() *Stream {
	h.Metrics.Streams.Add(1)
	return &Stream{
		h:        h,
		notify:   make(chan struct{}, 1),
		closed:   make(chan struct{}),
		watchers: make(map[int64]*watcher),
	}
}

func parseRange(key, end []byte) keyRange {
	if len(key) == 0 {
		key = []byte{0}
	}
	r := keyRange{key: string(key)}
	switch {
	case len(end) == 0:
	case len(end) == 1 && end[0] == 0:
		r.ranged, r.open = true, true
	default:
		r.ranged, r.end = true, string(end)
	}
	return r
}

// Watch creates a watcher and queues its created response (or, when it
// cannot be created, a created-and-canceled response with watch ID -1 and
// etcd's reason, also returned as the error). The created response's
// revision is the current revision; a watcher starting at 0 gets every
// revision after it. A start below the compaction point yields a created
// response followed by a cancel with CompactRevision.
func (s *Stream) Watch(req WatchRequest) (int64, error) {
	h := s.h
	r := parseRange(req.Key, req.RangeEnd)

	h.syncMu.Lock()
	defer h.syncMu.Unlock()
	h.idxMu.Lock()
	defer h.idxMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isClosed {
		return InvalidWatchID, ErrClosed
	}

	cur := h.cur.Load()
	fail := func(err error) (int64, error) {
		s.ctrl = append(s.ctrl, Response{
			WatchID: InvalidWatchID, Revision: cur,
			Created: true, Canceled: true, CancelReason: err.Error(),
		})
		s.signalLocked()
		return InvalidWatchID, err
	}
	if req.StartRev < 0 {
		return fail(ErrNegativeStart)
	}
	if r.ranged && !r.open && r.key >= r.end {
		return fail(ErrEmptyRange)
	}
	id := req.ID
	if id == AutoWatchID {
		for s.watchers[s.nextID] != nil {
			s.nextID++
		}
		id = s.nextID
		s.nextID++
	} else if s.watchers[id] != nil {
		return fail(ErrDuplicateID)
	}

	w := &watcher{
		s:              s,
		id:             id,
		r:              r,
		startRev:       req.StartRev,
		progressNotify: req.ProgressNotify,
		fragment:       req.Fragment,
		gidx:           -1,
		idle:           true,
	}
	if req.PrevKV {
		w.variant |= variantPrev
	}
	if req.NoPut {
		w.variant |= variantNoPut
	}
	if req.NoDelete {
		w.variant |= variantNoDelete
	}
	s.watchers[id] = w
	s.ctrl = append(s.ctrl, Response{WatchID: id, Revision: cur, Created: true})
	s.signalLocked()

	start := req.StartRev
	if compact := h.compactRev.Load(); start > 0 && start < compact {
		w.state = stateDone
		s.nCompacted++
		w.terminal = &Response{WatchID: id, Canceled: true, CompactRevision: compact}
		s.readyLocked(w)
		h.Metrics.CompactCancels.Add(1)
		return id, nil
	}
	s.active++
	h.Metrics.Watchers.Add(1)
	if start == 0 || start > cur {
		// Nothing published yet that the watcher wants: the dispatcher
		// gives it everything from minRev on. (A start in the published
		// but undispatched range goes through catch-up too, which is flow
		// controlled, rather than receive a burst that could overflow.)
		w.state = stateLive
		w.minRev = start
		if start == 0 {
			w.minRev = cur + 1
		}
		s.maxStartRev = max(s.maxStartRev, start)
		h.live.add(w)
		return id, nil
	}
	w.state = stateCatchUp
	w.nextRev = start
	s.nCatchUp++
	s.maxStartRev = max(s.maxStartRev, start)
	h.catchUp[w] = struct{}{}
	h.Metrics.CatchingUp.Add(1)
	h.wakeSyncer()
	return id, nil
}

// Cancel removes watcher id and queues etcd's cancel response. It reports
// false (and sends nothing, like etcd) when there is no such watcher.
func (s *Stream) Cancel(id int64) bool {
	h := s.h
	h.syncMu.Lock()
	defer h.syncMu.Unlock()
	h.idxMu.Lock()
	defer h.idxMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.watchers[id]
	if s.isClosed || w == nil {
		return false
	}
	delete(s.watchers, id)
	if w.state == stateDone {
		s.nCompacted-- // only compacted watchers stay registered when done
	}
	s.detachLocked(w)
	w.terminal = nil
	s.ctrl = append(s.ctrl, Response{WatchID: id, Revision: h.cur.Load(), Canceled: true})
	s.signalLocked()
	return true
}

// detachLocked takes w out of the hub's structures and ends it. syncMu,
// idxMu and s.mu held.
func (s *Stream) detachLocked(w *watcher) {
	switch w.state {
	case stateLive:
		s.h.live.remove(w)
	case stateCatchUp:
		delete(s.h.catchUp, w)
		s.nCatchUp--
		s.h.Metrics.CatchingUp.Add(-1)
	}
	s.finishLocked(w)
}

// finishLocked marks w done and releases its buffer. s.mu held.
func (s *Stream) finishLocked(w *watcher) {
	if w.state != stateDone {
		s.active--
		s.h.Metrics.Watchers.Add(-1)
	}
	w.state = stateDone
	w.queue = nil
	w.qEvents, w.qBytes = 0, 0
}

// RequestProgress asks for a progress response with watch ID -1 (etcd's
// WatchProgressRequest). As with etcd it is answered only if, when asked,
// the stream has watchers and all of them are synced: on the live path,
// past their start revision, none canceled by compaction and still
// registered; otherwise it is dropped (clients ask again). The answer's
// revision is at least the current revision at the request, and it comes
// after every event up to it.
func (s *Stream) RequestProgress() {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.h.cur.Load()
	if s.isClosed || s.active == 0 || s.nCompacted > 0 || !s.allLiveLocked(cur) {
		return
	}
	s.progressReqs++
	s.progressMin = max(s.progressMin, cur)
	s.signalLocked()
}

// TickProgress is the periodic progress timer (etcd's progress_notify):
// every watcher that asked for progress notifications and has been sent no
// events since the previous tick gets a progress response with its watch
// ID, if it is on the live path.
func (s *Stream) TickProgress() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, w := range s.watchers {
		if !w.progressNotify {
			continue
		}
		if w.idle {
			w.wantProgress = true
			s.tickPending = true
		}
		w.idle = true
	}
	if s.tickPending {
		s.signalLocked()
	}
}

// Close cancels every watcher of the stream and releases them.
func (s *Stream) Close() {
	h := s.h
	h.syncMu.Lock()
	h.idxMu.Lock()
	s.mu.Lock()
	if s.isClosed {
		s.mu.Unlock()
		h.idxMu.Unlock()
		h.syncMu.Unlock()
		return
	}
	s.isClosed = true
	for _, w := range s.watchers {
		s.detachLocked(w)
	}
	for _, w := range s.ready {
		w.terminal = nil
	}
	s.watchers, s.ctrl, s.ready = nil, nil, nil
	s.mu.Unlock()
	h.idxMu.Unlock()
	h.syncMu.Unlock()
	h.removeProgressWaiter(s)
	h.Metrics.Streams.Add(-1)
	close(s.closed)
}

// Next waits for responses and returns them in the order they must be sent.
// Every response it returned before must have been sent when it is called
// again: progress responses rely on it.
func (s *Stream) Next(ctx context.Context) ([]Response, error) {
	h := s.h
	for {
		d := h.dispatched.Load()
		s.mu.Lock()
		if s.isClosed {
			s.mu.Unlock()
			return nil, ErrClosed
		}
		out, wake, nev := s.collectLocked(d)
		s.signaled = false
		s.mu.Unlock()
		if wake {
			h.wakeSyncer()
		}
		if len(out) > 0 {
			h.Metrics.EventsSent.Add(int64(nev))
			return out, nil
		}
		select {
		case <-s.notify:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.closed:
		case <-h.done:
			return nil, ErrClosed
		}
	}
}

// Responses carrying several revisions are cut at about this many bytes.
const maxResponseBytes = 1 << 20

// collectLocked takes everything queued, in a valid order:
//
//   - control responses first: a watcher's events only exist after its
//     created response was queued;
//   - each watcher's events up to d, the dispatched revision: every live
//     watcher has been given all its events <= d, so they are all here;
//   - progress responses at d, which are due (a -1 answer waits until d
//     reaches the current revision at its request and every watcher is
//     synced);
//   - the remaining events (revisions > d) and final responses.
func (s *Stream) collectLocked(d int64) (out []Response, wakeSyncer bool, nev int) {
	if len(s.ctrl)+len(s.ready) > 0 {
		out = make([]Response, 0, len(s.ctrl)+len(s.ready))
		out = append(out, s.ctrl...)
		clear(s.ctrl)
		s.ctrl = s.ctrl[:0]
	}
	answer := 0
	if s.progressReqs > 0 {
		switch {
		case s.active == 0:
			s.progressReqs = 0 // every watcher went away
		case d >= s.progressMin && s.allLiveLocked(d):
			answer, s.progressReqs = s.progressReqs, 0
		}
		if s.progressReqs > 0 {
			s.h.addProgressWaiter(s)
		} else {
			s.h.removeProgressWaiter(s)
		}
	}
	progress := answer > 0 || s.tickPending

	upTo := int64(math.MaxInt64)
	if progress {
		upTo = d
	}
	for _, w := range s.ready {
		if len(w.queue) > 0 {
			out, nev = s.appendEvents(out, w, upTo, nev)
		}
	}
	if s.tickPending {
		s.tickPending = false
		for _, w := range s.watchers {
			if !w.wantProgress {
				continue
			}
			w.wantProgress = false
			if w.state == stateLive && d >= w.startRev {
				out = append(out, Response{WatchID: w.id, Revision: d})
			}
		}
	}
	for ; answer > 0; answer-- {
		out = append(out, Response{WatchID: InvalidWatchID, Revision: d})
	}
	for i, w := range s.ready {
		s.ready[i] = nil
		w.inReady = false
		if len(w.queue) > 0 {
			out, nev = s.appendEvents(out, w, math.MaxInt64, nev)
		}
		if w.terminal != nil {
			out = append(out, *w.terminal)
			w.terminal = nil
		}
		if w.blocked.Load() {
			w.blocked.Store(false)
			wakeSyncer = true
		}
	}
	s.ready = s.ready[:0]
	return out, wakeSyncer, nev
}

// allLiveLocked tells whether every active watcher of the stream is on the
// live path and has its start revision at or below rev (etcd answers
// progress requests only then).
func (s *Stream) allLiveLocked(rev int64) bool {
	if s.nCatchUp > 0 {
		return false
	}
	if rev >= s.maxStartRev {
		return true
	}
	var m int64
	for _, w := range s.watchers {
		if w.state == stateLive {
			m = max(m, w.startRev)
		}
	}
	s.maxStartRev = m
	return rev >= m
}

// appendEvents turns w's queued chunks with revisions <= upTo into
// responses of about maxResponseBytes each (one chunk's slice is shared,
// several are copied) and leaves the rest queued.
func (s *Stream) appendEvents(out []Response, w *watcher, upTo int64, nev int) ([]Response, int) {
	q := w.queue
	for len(q) > 0 && q[0].rev <= upTo {
		n, size, count := 1, q[0].bytes, len(q[0].evs)
		for n < len(q) && q[n].rev <= upTo && size+q[n].bytes <= maxResponseBytes {
			size += q[n].bytes
			count += len(q[n].evs)
			n++
		}
		evs := q[0].evs
		if n > 1 {
			evs = make([]*mvccpb.Event, 0, count)
			for _, c := range q[:n] {
				evs = append(evs, c.evs...)
			}
		}
		hdr := q[0].hdr
		for _, c := range q[1:n] {
			hdr = max(hdr, c.hdr)
		}
		out = append(out, Response{
			WatchID:  w.id,
			Revision: hdr,
			Fragment: w.fragment,
			Events:   evs,
		})
		nev += count
		w.qEvents -= count
		w.qBytes -= size
		q = q[n:]
	}
	if len(q) < len(w.queue) {
		w.idle = false
	}
	switch {
	case len(q) > 0:
		// Keep the rest, dropping references to what was taken.
		rest := make([]chunk, len(q))
		copy(rest, q)
		clear(w.queue)
		w.queue = rest
	case cap(w.queue) <= 64:
		// Keep a small buffer for the next revisions.
		clear(w.queue)
		w.queue = w.queue[:0]
	default:
		w.queue = nil
	}
	return out, nev
}

// signalLocked wakes Next. s.mu held.
func (s *Stream) signalLocked() {
	if !s.signaled {
		s.signaled = true
		s.poke()
	}
}

// poke wakes Next without s.mu.
func (s *Stream) poke() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

func (s *Stream) readyLocked(w *watcher) {
	if !w.inReady {
		w.inReady = true
		s.ready = append(s.ready, w)
	}
	s.signalLocked()
}

// deliverLive queues a revision's events for a live watcher. When that
// would overflow the buffer, the watcher is canceled instead, its buffer
// released, and false is returned so the dispatcher unindexes it.
func (s *Stream) deliverLive(w *watcher, rev int64, evs []*mvccpb.Event, n int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w.state != stateLive {
		return true
	}
	o := &s.h.opts
	if len(w.queue) > 0 && (w.qEvents+len(evs) > o.MaxPendingEvents || w.qBytes+n > o.MaxPendingBytes) {
		delete(s.watchers, w.id)
		s.finishLocked(w)
		w.terminal = &Response{
			WatchID:  w.id,
			Revision: s.h.cur.Load(),
			Canceled: true,
			CancelReason: fmt.Sprintf("axon: watcher is too slow: more than %d events or %d bytes "+
				"were waiting to be sent; watch again from the last revision received", o.MaxPendingEvents, o.MaxPendingBytes),
		}
		s.readyLocked(w)
		s.h.Metrics.SlowCancels.Add(1)
		return false
	}
	s.appendLocked(w, rev, evs, n, rev)
	return true
}

// deliverCatchUp queues a revision's events for a catching-up watcher
// unless its buffer is half full; then it reports false and the watcher
// waits until the stream takes its buffer.
func (s *Stream) deliverCatchUp(w *watcher, rev int64, evs []*mvccpb.Event, n int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w.state != stateCatchUp {
		return true
	}
	o := &s.h.opts
	if len(w.queue) > 0 && (w.qEvents+len(evs) > o.MaxPendingEvents/2 || w.qBytes+n > o.MaxPendingBytes/2) {
		w.blocked.Store(true)
		return false
	}
	s.appendLocked(w, rev, evs, n, max(rev, s.h.cur.Load()))
	return true
}

func (s *Stream) appendLocked(w *watcher, rev int64, evs []*mvccpb.Event, n, hdr int64) {
	w.queue = append(w.queue, chunk{rev: rev, evs: evs, bytes: n, hdr: hdr})
	w.qEvents += len(evs)
	w.qBytes += n
	s.readyLocked(w)
}
