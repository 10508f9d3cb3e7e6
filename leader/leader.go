// Package leader elects one Axon node as the writer, using only the shared
// backend: a leader record with a term and an expiry, renewed by the leader,
// taken over with a conditional commit once it expires. It owns the leader
// keys and the fencing condition every write group carries; it must not
// write anything else.
package leader

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/axon-kv/axon/backend"
	"github.com/axon-kv/axon/mvcc"
	"github.com/axon-kv/axon/proto/axonpb"
)

// Options configure an Elector.
type Options struct {
	// ID names this node; unique per node.
	ID string
	// Address is the client URL other nodes forward writes to.
	Address string
	// Lease is how long a leader record stays valid without renewal.
	Lease  time.Duration
	Logger *slog.Logger
	// Now is the clock (tests replace it).
	Now func() time.Time
}

// Callbacks tell the owner about role changes. They run on the elector's
// goroutine, one at a time and in order.
type Callbacks struct {
	// Elected: this node holds term and may start writing. Returning an
	// error gives leadership up again.
	Elected func(term int64) error
	// Deposed: this node must stop writing at once.
	Deposed func(term int64)
}

// Elector campaigns for leadership and keeps it.
type Elector struct {
	be   backend.Backend
	opts Options
	cb   Callbacks

	mu          sync.Mutex
	term        int64     // term held by this node, 0 when follower
	held        []byte    // encoded record this node last wrote
	validUntil  time.Time // local bound on our lease, with a safety margin
	leader      *axonpb.LeaderRecord
	stepDownReq chan struct{}
	crashed     bool
}

// New makes an elector; call Run.
func New(be backend.Backend, opts Options, cb Callbacks) *Elector {
	if opts.Lease <= 0 {
		opts.Lease = 3 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Elector{be: be, opts: opts, cb: cb, stepDownReq: make(chan struct{}, 1)}
}

// Run campaigns and renews until ctx ends; leadership is then released so
// another node can take over without waiting for the lease to run out.
func (e *Elector) Run(ctx context.Context) {
	tick := time.NewTicker(e.opts.Lease / 5)
	defer tick.Stop()
	for {
		e.step(ctx)
		select {
		case <-ctx.Done():
			e.mu.Lock()
			crashed := e.crashed
			e.mu.Unlock()
			if crashed {
				e.depose("stopped without releasing")
			} else {
				e.release()
			}
			return
		case <-tick.C:
		case <-e.stepDownReq:
			e.depose("the write path lost its fence")
		}
	}
}

// Fence is the condition a write group must carry: the term key still
// holds this node's term.
func (e *Elector) Fence() []backend.Condition {
	e.mu.Lock()
	defer e.mu.Unlock()
	return mvcc.TermFence(e.term)
}

// Crash makes Run return without releasing the lease, as a killed process
// would; the successor must wait for the lease to run out.
func (e *Elector) Crash() {
	e.mu.Lock()
	e.crashed = true
	e.mu.Unlock()
}

// StepDown is called when a fenced commit failed: someone else leads.
func (e *Elector) StepDown() {
	select {
	case e.stepDownReq <- struct{}{}:
	default:
	}
}

// IsLeader reports whether this node holds a lease that is still valid by
// its own clock.
func (e *Elector) IsLeader() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.term != 0 && e.opts.Now().Before(e.validUntil)
}

// Leader returns the last leader record seen (nil when none), and whether
// it is still within its lease.
func (e *Elector) Leader() (*axonpb.LeaderRecord, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.leader == nil {
		return nil, false
	}
	return e.leader, e.opts.Now().UnixNano() < e.leader.ExpiresUnixNano
}

// Term is the term this node holds, 0 when it is not the leader.
func (e *Elector) Term() int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.term
}

// read returns the leader record (nil when none), its encoding, and the
// stored term, all from one snapshot.
func (e *Elector) read() (*axonpb.LeaderRecord, []byte, int64, error) {
	snap, err := e.be.Snapshot()
	if err != nil {
		return nil, nil, 0, err
	}
	defer snap.Close()
	var term int64
	switch t, err := snap.Get(mvcc.MetaLeaderTerm); {
	case err == nil:
		term = mvcc.DecodeRev(t)
	case !errors.Is(err, backend.ErrNotFound):
		return nil, nil, 0, err
	}
	b, err := snap.Get(mvcc.MetaLeader)
	if errors.Is(err, backend.ErrNotFound) {
		return nil, nil, term, nil
	}
	if err != nil {
		return nil, nil, 0, err
	}
	rec := &axonpb.LeaderRecord{}
	if err := proto.Unmarshal(b, rec); err != nil {
		return nil, nil, 0, err
	}
	return rec, b, term, nil
}

func (e *Elector) step(ctx context.Context) {
	rec, raw, storedTerm, err := e.read()
	if err != nil {
		e.opts.Logger.Warn("reading leader record failed", "err", err)
		e.expireIfLate()
		return
	}
	e.mu.Lock()
	e.leader = rec
	term, held := e.term, e.held
	e.mu.Unlock()

	now := e.opts.Now()
	if term != 0 {
		if !bytes.Equal(raw, held) {
			e.depose("leader record changed under us")
			return
		}
		e.renew(rec, raw, now)
		return
	}
	if rec != nil && now.UnixNano() < rec.ExpiresUnixNano {
		return // someone else leads
	}
	e.campaign(ctx, rec, raw, storedTerm, now)
}

func (e *Elector) record(term int64, now time.Time) (*axonpb.LeaderRecord, []byte) {
	rec := &axonpb.LeaderRecord{Id: e.opts.ID, Term: term, Address: e.opts.Address, ExpiresUnixNano: now.Add(e.opts.Lease).UnixNano()}
	b, err := proto.Marshal(rec)
	if err != nil {
		panic(err)
	}
	return rec, b
}

// margin keeps our idea of the lease shorter than the others', so this
// node stops writing before anyone may take over.
func (e *Elector) margin() time.Duration { return e.opts.Lease / 4 }

func (e *Elector) renew(cur *axonpb.LeaderRecord, raw []byte, now time.Time) {
	rec, b := e.record(cur.Term, now)
	err := mvcc.SwapLeader(e.be, raw, b, 0)
	switch {
	case err == nil:
		e.mu.Lock()
		e.held, e.leader = b, rec
		e.validUntil = now.Add(e.opts.Lease - e.margin())
		e.mu.Unlock()
	case errors.Is(err, backend.ErrConditionFailed):
		e.depose("lost the leader record")
	default:
		e.opts.Logger.Warn("renewing leadership failed", "err", err)
		e.expireIfLate()
	}
}

func (e *Elector) expireIfLate() {
	e.mu.Lock()
	late := e.term != 0 && !e.opts.Now().Before(e.validUntil)
	e.mu.Unlock()
	if late {
		e.depose("could not renew within the lease")
	}
}

func (e *Elector) campaign(ctx context.Context, cur *axonpb.LeaderRecord, raw []byte, storedTerm int64, now time.Time) {
	term := int64(1)
	if cur != nil {
		term = cur.Term + 1
	}
	// The term key may be ahead of the record if a previous campaign's
	// record was lost; never reuse a term.
	if storedTerm >= term {
		term = storedTerm + 1
	}
	rec, b := e.record(term, now)
	if err := mvcc.SwapLeader(e.be, raw, b, term); err != nil {
		if !errors.Is(err, backend.ErrConditionFailed) {
			e.opts.Logger.Warn("campaign failed", "term", term, "err", err)
		}
		return
	}
	e.mu.Lock()
	e.term, e.held, e.leader = term, b, rec
	e.validUntil = now.Add(e.opts.Lease - e.margin())
	e.mu.Unlock()
	e.opts.Logger.Info("elected leader", "id", e.opts.ID, "term", term)
	if e.cb.Elected != nil {
		if err := e.cb.Elected(term); err != nil {
			e.opts.Logger.Error("could not take over as leader", "term", term, "err", err)
			e.release()
		}
	}
}

func (e *Elector) depose(why string) {
	e.mu.Lock()
	term := e.term
	e.term, e.held, e.validUntil = 0, nil, time.Time{}
	e.mu.Unlock()
	if term == 0 {
		return
	}
	e.opts.Logger.Warn("no longer leader", "id", e.opts.ID, "term", term, "reason", why)
	if e.cb.Deposed != nil {
		e.cb.Deposed(term)
	}
}

// release ends our lease at once (by writing an expired record) so a
// successor need not wait for it to run out.
func (e *Elector) release() {
	e.mu.Lock()
	term, held := e.term, e.held
	e.mu.Unlock()
	if term == 0 {
		return
	}
	e.depose("shutting down")
	rec := &axonpb.LeaderRecord{Id: e.opts.ID, Term: term, Address: e.opts.Address, ExpiresUnixNano: 0}
	b, _ := proto.Marshal(rec)
	_ = mvcc.SwapLeader(e.be, held, b, 0)
}
