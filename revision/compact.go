package revision

import (
	"errors"
	"sync"

	"github.com/axon-kv/axon/backend"
	"github.com/axon-kv/axon/mvcc"
)

// compactor runs physical compactions (mvcc.CompactHistory) one at a time
// off the write path, resuming one a crash interrupted.
type compactor struct {
	be   backend.Backend
	idx  *mvcc.Index
	opts Options

	mu      sync.Mutex
	target  int64
	resumed int64 // a compaction a crash interrupted: its hash is not kept
	waiters []chan struct{}
	wake    chan struct{}
	quit    chan struct{}
	done    chan struct{}
}

func newCompactor(be backend.Backend, idx *mvcc.Index, opts Options) *compactor {
	return &compactor{be: be, idx: idx, opts: opts, wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
}

// start runs the worker, resuming a compaction a crash interrupted.
func (c *compactor) start() {
	if rev, err := mvcc.CompactionPending(c.be); err != nil {
		c.opts.Logger.Error("reading compaction progress", "err", err)
	} else if rev > 0 {
		c.resumed = rev
		c.schedule(rev, nil)
	}
	go c.loop()
}

func (c *compactor) stop() {
	close(c.quit)
	<-c.done
}

func (c *compactor) schedule(rev int64, waiters []chan struct{}) {
	c.mu.Lock()
	if rev > c.target {
		c.target = rev
	}
	c.waiters = append(c.waiters, waiters...)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *compactor) loop() {
	defer close(c.done)
	for {
		select {
		case <-c.quit:
			return
		case <-c.wake:
		}
		c.mu.Lock()
		target, waiters := c.target, c.waiters
		c.waiters = nil
		resumed := c.resumed == target
		c.mu.Unlock()
		// As etcd, which does not keep the hash of a compaction it resumes:
		// part of what it covers may be gone already.
		if c.opts.Hashes != nil && !resumed {
			c.storeHash(target)
		}
		err := mvcc.CompactHistory(c.be, c.idx, target, c.opts.CompactBatch, c.quit)
		switch {
		case errors.Is(err, mvcc.ErrInterrupted):
			c.opts.Logger.Info("compaction interrupted by shutdown; it resumes at the next start", "revision", target)
		case err != nil:
			c.opts.Logger.Error("physical compaction failed", "revision", target, "err", err)
		default:
			c.opts.Logger.Info("compaction finished", "revision", target)
		}
		for _, w := range waiters {
			close(w)
		}
	}
}

// storeHash computes the hash of the compaction at rev before it removes
// anything; a failure only costs etcd's cached answer for rev.
func (c *compactor) storeHash(rev int64) {
	snap, err := c.be.Snapshot()
	if err != nil {
		c.opts.Logger.Warn("compaction hash", "revision", rev, "err", err)
		return
	}
	defer snap.Close()
	h, err := mvcc.Reader{Snap: snap}.CompactionHash(rev)
	if err != nil {
		c.opts.Logger.Warn("compaction hash", "revision", rev, "err", err)
		return
	}
	c.opts.Hashes.Store(h)
}
