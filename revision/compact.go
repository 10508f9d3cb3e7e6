package revision

import (
	"bytes"
	"encoding/binary"
	"errors"
	"sync"

	"github.com/axon-kv/axon/backend"
	"github.com/axon-kv/axon/mvcc"
)

// compactor removes history below the compacted revision in bounded
// batches, off the write path. Only history entries at or below the
// compacted revision are touched, and the writer never writes those again,
// so it commits without going through the writer.
type compactor struct {
	be   backend.Backend
	opts Options

	mu      sync.Mutex
	target  int64
	waiters []chan struct{}
	wake    chan struct{}
	quit    chan struct{}
	done    chan struct{}
}

func newCompactor(be backend.Backend, opts Options) *compactor {
	return &compactor{be: be, opts: opts, wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
}

// start runs the worker, resuming a compaction a crash interrupted.
func (c *compactor) start() {
	snap, err := c.be.Snapshot()
	if err == nil {
		r := mvcc.Reader{Snap: snap}
		_, comp, err1 := r.Meta()
		doneB, err2 := snap.Get(mvcc.MetaCompactDone)
		snap.Close()
		if err1 == nil && (err2 == nil || errors.Is(err2, backend.ErrNotFound)) && comp > mvcc.DecodeRev(doneB) {
			c.schedule(comp, nil)
		}
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
		c.mu.Unlock()
		if err := c.compact(target); err != nil {
			c.opts.Logger.Error("physical compaction failed", "revision", target, "err", err)
		} else {
			c.opts.Logger.Info("compaction finished", "revision", target)
		}
		for _, w := range waiters {
			close(w)
		}
	}
}

func (c *compactor) flush(b *backend.Batch) error {
	if b.Len() == 0 {
		return nil
	}
	err := c.be.Commit(b)
	b.Ops = b.Ops[:0]
	return err
}

// compact deletes, for every key, the versions at or below rev except the
// newest of them (and that one too when it is a deletion), then the
// revision records below rev.
func (c *compactor) compact(rev int64) error {
	snap, err := c.be.Snapshot()
	if err != nil {
		return err
	}
	defer snap.Close()
	var (
		b         backend.Batch
		curPrefix []byte
		cand      []byte // newest version <= rev of the current key, not yet deleted
		candTomb  bool
	)
	finish := func() {
		if cand != nil && candTomb {
			b.Delete(cand)
		}
		cand = nil
	}
	hlo, hhi := []byte{'h'}, []byte{'h' + 1}
	err = snap.Scan(hlo, hhi, backend.ScanOptions{}, func(k, v []byte) error {
		select {
		case <-c.quit:
			return errors.New("compaction interrupted by shutdown")
		default:
		}
		if len(k) < 11 {
			return nil
		}
		p := k[:len(k)-8]
		if !bytes.Equal(p, curPrefix) {
			finish()
			curPrefix = append(curPrefix[:0], p...)
		}
		if int64(binary.BigEndian.Uint64(k[len(k)-8:])) > rev {
			finish()
			return nil
		}
		if cand != nil {
			b.Delete(cand)
		}
		kv, err := mvcc.DecodeKV(v)
		if err != nil {
			return err
		}
		cand, candTomb = append([]byte(nil), k...), kv.Deleted
		if b.Len() >= c.opts.CompactBatch {
			return c.flush(&b)
		}
		return nil
	})
	if err != nil {
		return err
	}
	finish()
	err = snap.Scan(mvcc.RevisionKey(0), mvcc.RevisionKey(rev), backend.ScanOptions{KeysOnly: true}, func(k, _ []byte) error {
		b.Delete(append([]byte(nil), k...))
		if b.Len() >= c.opts.CompactBatch {
			return c.flush(&b)
		}
		return nil
	})
	if err != nil {
		return err
	}
	b.Put(mvcc.MetaCompactDone, mvcc.EncodeRev(rev))
	return c.flush(&b)
}
