package leader

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/axon-kv/axon/backend"
	"github.com/axon-kv/axon/backend/badger"
)

type roleLog struct {
	mu     sync.Mutex
	events []string
}

func (l *roleLog) add(s string) {
	l.mu.Lock()
	l.events = append(l.events, s)
	l.mu.Unlock()
}

func newElector(t *testing.T, be backend.Backend, id string, log *roleLog) *Elector {
	return New(be, Options{ID: id, Address: "http://" + id, Lease: 300 * time.Millisecond}, Callbacks{
		Elected: func(term int64) error { log.add(id + ":elected"); return nil },
		Deposed: func(term int64) { log.add(id + ":deposed") },
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fencedWrite commits a batch carrying e's fence.
func fencedWrite(be backend.Backend, e *Elector) error {
	b := &backend.Batch{Conditions: e.Fence()}
	b.Put([]byte("x"), []byte("y"))
	return be.Commit(b)
}

// One of two electors leads; when it stops renewing (paused), the other
// takes over with a higher term and the old one's fenced writes fail.
func TestFencingElectionAndTakeover(t *testing.T) {
	be, err := badger.Open(badger.Options{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	log := &roleLog{}
	a := newElector(t, be, "a", log)
	b := newElector(t, be, "b", log)

	ctxA, stopA := context.WithCancel(context.Background())
	defer stopA()
	go a.Run(ctxA)
	waitFor(t, "a elected", a.IsLeader)
	termA := a.Term()
	if err := fencedWrite(be, a); err != nil {
		t.Fatalf("leader's fenced write: %v", err)
	}

	ctxB, stopB := context.WithCancel(context.Background())
	defer stopB()
	go b.Run(ctxB)
	time.Sleep(400 * time.Millisecond)
	if b.IsLeader() {
		t.Fatal("b became leader while a renews")
	}

	// Pause a: its goroutine stops (as a paused process) but its state stays.
	stopA()
	waitFor(t, "b elected", b.IsLeader)
	if b.Term() <= termA {
		t.Fatalf("new term %d not above old %d", b.Term(), termA)
	}
	// a's state from before the pause: forge it back to simulate a process
	// that resumes believing it leads.
	a.mu.Lock()
	a.term = termA
	a.mu.Unlock()
	if err := fencedWrite(be, a); !errors.Is(err, backend.ErrConditionFailed) {
		t.Fatalf("deposed leader's fenced write: got %v, want ErrConditionFailed", err)
	}
	if err := fencedWrite(be, b); err != nil {
		t.Fatalf("new leader's fenced write: %v", err)
	}
}

// A released lease (graceful shutdown) is taken over without waiting for it
// to expire.
func TestFencingReleaseOnShutdown(t *testing.T) {
	be, err := badger.Open(badger.Options{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	log := &roleLog{}
	a := New(be, Options{ID: "a", Lease: 5 * time.Second}, Callbacks{})
	ctxA, stopA := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctxA); close(done) }()
	waitFor(t, "a elected", a.IsLeader)
	stopA()
	<-done
	rec, _, _, err := a.read()
	if err != nil || rec == nil || rec.ExpiresUnixNano != 0 {
		t.Fatalf("after shutdown the leader record is %v (err %v), want it released (expiry 0)", rec, err)
	}
	b := newElector(t, be, "b", log)
	b.opts.Lease = 5 * time.Second
	ctxB, stopB := context.WithCancel(context.Background())
	defer stopB()
	go b.Run(ctxB)
	waitFor(t, "b elected", b.IsLeader)
}
