package lease

import (
	"container/heap"
	"context"
	"slices"
	"time"
)

// idleWait is how long the expiry loop sleeps when nothing is due; any
// change that matters pokes it earlier.
const idleWait = time.Minute

// Start makes this manager the primary: every lease's TTL restarts now
// (plus PromoteExtend), and the expiry loop begins revoking leases whose
// deadline passes. Renew and TimeToLive work only while started. Start on
// a started manager does nothing.
func (m *Manager) Start() {
	m.life.Lock()
	defer m.life.Unlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.primary {
		return
	}
	m.primary = true
	m.demotec = make(chan struct{})
	now := time.Now()
	m.exp = m.exp[:0]
	for _, e := range m.leases {
		e.attempts = 0
		e.hidx = -1
		e.expiry = m.deadline(now, e.ttl, m.opts.PromoteExtend)
		if e.op == nil { // a Revoke in flight re-queues the lease if it fails
			e.hidx = len(m.exp)
			m.exp = append(m.exp, e)
		}
	}
	if len(m.exp) >= m.opts.RevokeRate {
		m.spreadLocked()
	}
	heap.Init(&m.exp)
	m.tokens = m.burst()
	m.tokensAt = now

	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	m.loopStop = make(chan struct{})
	m.loopDone = make(chan struct{})
	go m.run(ctx, m.loopStop, m.loopDone)
	m.lg.Info("lease expiry started", "leases", len(m.leases))
}

// Stop ends the primary role: the expiry loop stops, deadlines are
// dropped, and pending Renew calls fail with ErrNotPrimary. Expiry
// revocations in flight get a short grace period to finish (the writer
// should still be running when Stop is called), then are cancelled; Stop
// returns once they ended. Grants and explicit revocations
// still work (they go through the writer). Start may be called again
// later; a follower stays stopped. Stop on a stopped manager does nothing.
func (m *Manager) Stop() {
	m.life.Lock()
	defer m.life.Unlock()
	m.mu.Lock()
	if !m.primary {
		m.mu.Unlock()
		return
	}
	m.primary = false
	close(m.demotec)
	m.demotec = nil
	close(m.loopStop)
	for _, e := range m.exp {
		e.hidx = -1
	}
	m.exp = m.exp[:0]
	for _, e := range m.leases {
		e.expiry = time.Time{}
	}
	m.mu.Unlock()
	<-m.loopDone // no new revocations after this
	done := make(chan struct{})
	go func() { m.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(m.stopGrace):
		m.cancel()
		<-done
	}
	m.cancel()
	m.lg.Info("lease expiry stopped")
}

// Primary reports whether the manager is started.
func (m *Manager) Primary() bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.primary
}

func (m *Manager) run(ctx context.Context, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	timer := time.NewTimer(idleWait)
	defer timer.Stop()
	for {
		timer.Reset(m.dispatchExpired(ctx))
		select {
		case <-stop:
			return
		case <-m.wake:
		case <-timer.C:
		}
	}
}

// dispatchExpired starts revocations of due leases within the concurrency
// and rate limits and returns how long to sleep before looking again.
func (m *Manager) dispatchExpired(ctx context.Context) time.Duration {
	type job struct {
		id int64
		op *revokeOp
	}
	var jobs []job
	wait := idleWait

	m.mu.Lock()
	if !m.primary {
		m.mu.Unlock()
		return wait
	}
	now := time.Now()
	m.refillLocked(now)
	for len(m.exp) > 0 {
		e := m.exp[0]
		if now.Before(e.expiry) {
			wait = e.expiry.Sub(now)
			break
		}
		if m.inflight >= m.opts.MaxConcurrentRevokes {
			break // a finishing revocation pokes the loop
		}
		if m.tokens < 1 {
			wait = time.Duration((1 - m.tokens) / float64(m.opts.RevokeRate) * float64(time.Second))
			wait = max(wait, time.Millisecond)
			break
		}
		heap.Pop(&m.exp)
		e.op = &revokeOp{done: make(chan struct{})}
		m.inflight++
		m.tokens--
		jobs = append(jobs, job{e.id, e.op})
	}
	m.mu.Unlock()

	for _, j := range jobs {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.runRevoke(ctx, j.id, j.op, true)
		}()
	}
	return wait
}

func (m *Manager) burst() float64 { return float64(max(1, m.opts.RevokeRate/2)) }

func (m *Manager) refillLocked(now time.Time) {
	if el := now.Sub(m.tokensAt); el > 0 {
		m.tokens = min(m.burst(), m.tokens+el.Seconds()*float64(m.opts.RevokeRate))
	}
	m.tokensAt = now
}

// spreadLocked delays deadlines that pile up so that at most 3/4 of
// RevokeRate leases expire in any second, leaving room for leases that
// expire on their own schedule. Deadlines only move later.
func (m *Manager) spreadLocked() {
	slices.SortFunc(m.exp, func(a, b *entry) int { return a.expiry.Compare(b.expiry) })
	gap := time.Second / time.Duration(max(1, 3*m.opts.RevokeRate/4))
	var next time.Time
	for _, e := range m.exp {
		if e.expiry.Before(next) {
			e.expiry = next
		}
		next = e.expiry.Add(gap)
	}
	for i, e := range m.exp {
		e.hidx = i
	}
}

// pushLocked schedules e's deadline, waking the loop if it is the soonest.
func (m *Manager) pushLocked(e *entry) {
	heap.Push(&m.exp, e)
	if e.hidx == 0 {
		m.poke()
	}
}

func (m *Manager) poke() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// expiryHeap orders leases by deadline; entries know their index.
type expiryHeap []*entry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].expiry.Before(h[j].expiry) }
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].hidx = i
	h[j].hidx = j
}

func (h *expiryHeap) Push(x any) {
	e := x.(*entry)
	e.hidx = len(*h)
	*h = append(*h, e)
}

func (h *expiryHeap) Pop() any {
	old := *h
	n := len(old) - 1
	e := old[n]
	old[n] = nil
	e.hidx = -1
	*h = old[:n]
	return e
}
