package backend

import (
	"sync"
	"sync/atomic"
)

// CloseGate lets an engine's calls run concurrently until Close, which must
// not pull the engine out from under them. Unlike an RWMutex it never
// blocks a call that re-enters the engine (a Scan callback that commits)
// while Close waits; that call is refused instead. The zero value is ready.
type CloseGate struct {
	active   atomic.Int64
	closing  atomic.Bool
	initOnce sync.Once
	doneOnce sync.Once
	drained  chan struct{}
}

func (g *CloseGate) ch() chan struct{} {
	g.initOnce.Do(func() { g.drained = make(chan struct{}) })
	return g.drained
}

// Enter admits a call; false once the gate is shut (answer ErrClosed).
func (g *CloseGate) Enter() bool {
	g.active.Add(1)
	if g.closing.Load() {
		g.Exit()
		return false
	}
	return true
}

// Exit ends a call admitted by Enter.
func (g *CloseGate) Exit() {
	if g.active.Add(-1) == 0 && g.closing.Load() {
		g.doneOnce.Do(func() { close(g.ch()) })
	}
}

// Shut refuses new calls, runs cancel (if any) so that calls in progress can
// end, and waits for them. It reports false if the gate was already shut.
func (g *CloseGate) Shut(cancel func()) bool {
	if !g.closing.CompareAndSwap(false, true) {
		return false
	}
	if cancel != nil {
		cancel()
	}
	if g.active.Load() == 0 {
		g.doneOnce.Do(func() { close(g.ch()) })
	}
	<-g.ch()
	return true
}
