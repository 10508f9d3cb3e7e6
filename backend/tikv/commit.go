package tikv

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	tikverr "github.com/tikv/client-go/v2/error"
	"github.com/tikv/client-go/v2/kv"
	"github.com/tikv/client-go/v2/tikv"
	"github.com/tikv/client-go/v2/tikvrpc"
	"github.com/tikv/client-go/v2/tikvrpc/interceptor"
	"github.com/tikv/client-go/v2/txnkv/transaction"

	"github.com/axon-kv/axon/backend"
)

// Commit implements backend.Backend with one optimistic transaction per
// attempt:
//
//  1. a start timestamp from PD;
//  2. one BatchGet of the condition keys (one request per region, sent in
//     parallel), checked here: if any differs the transaction is dropped,
//     nothing was written, and ErrConditionFailed is returned;
//  3. the condition keys are marked locked, so TiKV also checks them for
//     write conflicts although the batch may not write them (a leader-term
//     key read as a fence must not change under the batch);
//  4. the operations are buffered and the transaction commits.
//
// A batch with conditions but no operations stops after step 2: the read
// at the start timestamp is its linearization point. An empty batch costs
// nothing.
//
// Step 4 is, in order of preference (client-go decides, with its global
// configuration's limits):
//   - 1PC, when the whole batch fits one prewrite request (one region, at
//     most 16 KiB of keys and values: kv.TxnCommitBatchSize): that request
//     commits;
//   - async commit, when the batch has at most 256 keys totalling at most
//     4 KiB (config TiKVClient.AsyncCommit): the transaction is committed
//     once every region's prewrite succeeded (sent in parallel), and the
//     commit requests follow in the background;
//   - two-phase commit otherwise: prewrite, a commit timestamp from PD, and
//     the commit of the primary key's region; the other regions commit in
//     the background.
//
// Both fast paths let TiKV compute the commit timestamp, and this engine
// keeps client-go's default of fetching a fresh timestamp from PD first
// and making the commit timestamp larger than it. That costs one more PD
// request, but without it a later commit could get a smaller timestamp
// than an earlier one whose keys live elsewhere, and a snapshot could see
// the later batch without the earlier: Axon's revisions must become
// visible in order. Counted in round trips (parallel requests count once):
// 1PC and async commit take 4 (start ts, BatchGet, min commit ts,
// prewrite); two-phase commit takes 5 (start ts, BatchGet, prewrite,
// commit ts, commit); without conditions there is no BatchGet. Stats
// reports what was actually spent.
//
// If another transaction committed a write to one of the keys after the
// start timestamp, TiKV refuses the prewrite with a write conflict and
// nothing of the batch is applied. The batch is then re-run from step 1,
// up to Options.ConflictRetries times, its conditions read afresh; when
// retries run out the error wraps ErrWriteConflict. An error wrapping
// ErrUndetermined means the outcome is unknown and is never retried.
func (d *DB) Commit(b *backend.Batch) error {
	if !d.gate.Enter() {
		return backend.ErrClosed
	}
	defer d.gate.Exit()
	if len(b.Ops) == 0 && len(b.Conditions) == 0 {
		return nil
	}
	for attempt := 0; ; attempt++ {
		err := d.commitOnce(b)
		switch {
		case err == nil:
			d.stats.commits.Add(1)
			return nil
		case errors.Is(err, backend.ErrConditionFailed):
			d.stats.conditionFailures.Add(1)
			return err
		case isWriteConflict(err):
			d.stats.conflicts.Add(1)
			if attempt >= d.retries {
				d.stats.errors.Add(1)
				return fmt.Errorf("%w after %d attempts: %w", ErrWriteConflict, attempt+1, err)
			}
			if attempt > 0 {
				// Two batches that keep colliding would otherwise retry in
				// lockstep.
				time.Sleep(time.Duration(rand.IntN(1<<attempt)) * time.Millisecond)
			}
		default:
			d.stats.errors.Add(1)
			if errors.Is(err, tikverr.ErrResultUndetermined) {
				return fmt.Errorf("%w: %w", ErrUndetermined, err)
			}
			return d.closedOr(err)
		}
	}
}

func isWriteConflict(err error) bool {
	var latch *tikverr.ErrWriteConflictInLatch
	return tikverr.IsErrWriteConflict(err) || errors.As(err, &latch)
}

func (d *DB) commitOnce(b *backend.Batch) (err error) {
	tr := &trace{}
	ctx := interceptor.WithRPCInterceptor(d.ctx, interceptor.NewRPCInterceptor("axon-stats", tr.intercept))
	defer func() { d.stats.add(tr.finish(), err == nil) }()

	tr.timestamp()
	startTS, err := d.client.GetTimestamp(ctx)
	if err != nil {
		return fmt.Errorf("tikv: start timestamp: %w", err)
	}
	txn, err := d.client.Begin(tikv.WithStartTS(startTS))
	if err != nil {
		return fmt.Errorf("tikv: begin: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			// Nothing was sent for an uncommitted optimistic transaction;
			// this only releases it.
			_ = txn.Rollback()
		}
	}()

	if len(b.Conditions) > 0 {
		if err := d.checkConditions(ctx, txn, b.Conditions); err != nil {
			return err
		}
		if len(b.Ops) == 0 {
			return nil
		}
	}
	if d.testHookBeforeWrite != nil {
		d.testHookBeforeWrite()
	}

	var kbuf, vbuf []byte
	var written int64
	for i, op := range b.Ops {
		// The transaction's buffer copies keys and values, so the scratch
		// buffers are reused.
		kbuf = append(append(kbuf[:0], d.prefix...), op.Key...)
		if op.Delete {
			err = txn.Delete(kbuf)
		} else {
			vbuf = encodeValue(vbuf[:0], op.Value)
			err = txn.Set(kbuf, vbuf)
			written += int64(len(kbuf) + len(vbuf))
		}
		if err != nil {
			return fmt.Errorf("tikv: op %d of %d (batch ~%d bytes): %w", i, len(b.Ops), b.Bytes(), err)
		}
	}

	txn.SetEnable1PC(d.onePC)
	txn.SetEnableAsyncCommit(d.async)
	txn.SetCausalConsistency(false) // see Commit
	committed = true                // Commit releases the transaction whatever happens
	if err := txn.Commit(ctx); err != nil {
		return fmt.Errorf("tikv: commit: %w", err)
	}
	d.written.Add(written)
	return nil
}

// checkConditions reads every condition key in one BatchGet, checks them,
// and marks them locked so the commit fails on a concurrent change to any.
func (d *DB) checkConditions(ctx context.Context, txn *transaction.KVTxn, conds []backend.Condition) error {
	keys := make([][]byte, 0, len(conds))
	seen := make(map[string]struct{}, len(conds))
	for _, c := range conds {
		k := d.key(c.Key)
		if _, dup := seen[string(k)]; dup {
			continue
		}
		seen[string(k)] = struct{}{}
		keys = append(keys, k)
	}
	got, err := txn.BatchGet(ctx, keys)
	if err != nil {
		return fmt.Errorf("tikv: read %d condition keys: %w", len(keys), err)
	}
	for _, c := range conds {
		e, present := got[string(d.key(c.Key))]
		if present && e.IsValueEmpty() {
			present = false
		}
		if !present {
			if c.Value != nil {
				return backend.ErrConditionFailed
			}
			continue
		}
		if c.Value == nil {
			return backend.ErrConditionFailed
		}
		v, err := decodeValue(c.Key, e.Value)
		if err != nil {
			return err
		}
		if string(v) != string(c.Value) {
			return backend.ErrConditionFailed
		}
	}
	// In an optimistic transaction this only flags the keys; their prewrite
	// then carries a lock-only mutation that TiKV checks for conflicts.
	if err := txn.LockKeys(ctx, &kv.LockCtx{}, keys...); err != nil {
		return fmt.Errorf("tikv: lock condition keys: %w", err)
	}
	return nil
}

// Stats counts commit work since the DB was opened. Requests are counted
// as client-go sends them on the commit path, through an RPC interceptor;
// work client-go does in the background after Commit returned (committing
// secondary keys, cleaning up after a failure) is not included.
type Stats struct {
	// Commits is the number of batches applied; ConditionFailures those
	// refused because a condition did not hold; Errors those that failed
	// otherwise (including conflicts that ran out of retries).
	Commits, ConditionFailures, Errors uint64
	// Attempts is the number of transactions run (retries included);
	// Conflicts the number of them that lost a write conflict.
	Attempts, Conflicts uint64
	// OnePC, AsyncCommit and TwoPC count the committed transactions by
	// the protocol that committed them (batches of conditions only
	// commit nothing and count in none).
	OnePC, AsyncCommit, TwoPC uint64
	// TSORequests is the number of timestamps fetched from PD: the start
	// timestamp, plus the commit timestamp (two-phase commit) or the
	// minimum commit timestamp (1PC and async commit, requested even when
	// TiKV then declines and the transaction falls back to two-phase
	// commit).
	TSORequests uint64
	// KVRequests is the number of requests sent to TiKV, each region of a
	// parallel fan-out and each retry counted.
	KVRequests uint64
	// RoundTrips is the number of sequential network waits: every TSO
	// request, plus every stretch of time with TiKV requests in flight.
	RoundTrips uint64
}

// Stats returns the counters so far.
func (d *DB) Stats() Stats {
	s := &d.stats
	return Stats{
		Commits:           s.commits.Load(),
		ConditionFailures: s.conditionFailures.Load(),
		Errors:            s.errors.Load(),
		Attempts:          s.attempts.Load(),
		Conflicts:         s.conflicts.Load(),
		OnePC:             s.onePC.Load(),
		AsyncCommit:       s.async.Load(),
		TwoPC:             s.twoPC.Load(),
		TSORequests:       s.tso.Load(),
		KVRequests:        s.kv.Load(),
		RoundTrips:        s.roundTrips.Load(),
	}
}

// Sub returns the counts in s that are not in prev, for measuring a span.
func (s Stats) Sub(prev Stats) Stats {
	return Stats{
		Commits:           s.Commits - prev.Commits,
		ConditionFailures: s.ConditionFailures - prev.ConditionFailures,
		Errors:            s.Errors - prev.Errors,
		Attempts:          s.Attempts - prev.Attempts,
		Conflicts:         s.Conflicts - prev.Conflicts,
		OnePC:             s.OnePC - prev.OnePC,
		AsyncCommit:       s.AsyncCommit - prev.AsyncCommit,
		TwoPC:             s.TwoPC - prev.TwoPC,
		TSORequests:       s.TSORequests - prev.TSORequests,
		KVRequests:        s.KVRequests - prev.KVRequests,
		RoundTrips:        s.RoundTrips - prev.RoundTrips,
	}
}

type counters struct {
	commits, conditionFailures, errors atomic.Uint64
	attempts, conflicts                atomic.Uint64
	onePC, async, twoPC                atomic.Uint64
	tso, kv, roundTrips                atomic.Uint64
}

func (c *counters) add(t traced, committed bool) {
	c.attempts.Add(1)
	c.tso.Add(t.tso)
	c.kv.Add(t.kv)
	c.roundTrips.Add(t.tso + t.kvPhases)
	if !committed {
		return
	}
	switch t.protocol {
	case proto1PC:
		c.onePC.Add(1)
	case protoAsync:
		c.async.Add(1)
	case proto2PC:
		c.twoPC.Add(1)
	}
}

type protocol int

const (
	protoNone protocol = iota
	proto1PC
	protoAsync
	proto2PC
)

// traced is what one transaction attempt cost.
type traced struct {
	tso, kv, kvPhases uint64
	protocol          protocol
}

// trace watches the requests of one transaction attempt. client-go hands
// the commit context to every request it sends while Commit runs, so an
// interceptor placed on that context sees them all; TSO requests do not go
// through it, so they are counted by this package (the start timestamp) or
// deduced from what the prewrite asked for and got (see finish).
//
// Round trips are counted by structure, not by timing (against the
// in-process mock, requests sent in parallel finish too fast to overlap): a
// request starts a new round trip unless it is the same command as the
// current one, to a region the current one has not reached yet (the
// fan-out of a BatchGet or prewrite over regions), or starts while
// another is in flight.
type trace struct {
	mu       sync.Mutex
	done     bool
	inflight int
	cmd      tikvrpc.CmdType
	regions  map[uint64]struct{}
	t        traced

	prewrites           int
	askedFast           bool // 1PC or async commit requested
	onePC, async, other int  // prewrite responses by outcome
	commitSent          bool
}

func (tr *trace) timestamp() {
	tr.mu.Lock()
	tr.t.tso++
	tr.mu.Unlock()
}

func (tr *trace) intercept(next interceptor.RPCInterceptorFunc) interceptor.RPCInterceptorFunc {
	return func(target string, req *tikvrpc.Request) (*tikvrpc.Response, error) {
		tr.mu.Lock()
		counted := !tr.done
		if counted {
			tr.start(req)
		}
		tr.mu.Unlock()

		resp, err := next(target, req)

		if counted {
			tr.mu.Lock()
			tr.inflight--
			tr.observe(req, resp, err)
			tr.mu.Unlock()
		}
		return resp, err
	}
}

func (tr *trace) start(req *tikvrpc.Request) {
	tr.t.kv++
	region := req.Context.GetRegionId()
	_, seen := tr.regions[region]
	if tr.inflight == 0 && (req.Type != tr.cmd || seen) {
		tr.t.kvPhases++
		tr.cmd = req.Type
		clear(tr.regions)
	}
	if tr.regions == nil {
		tr.regions = make(map[uint64]struct{})
	}
	tr.regions[region] = struct{}{}
	tr.inflight++
}

func (tr *trace) observe(req *tikvrpc.Request, resp *tikvrpc.Response, err error) {
	switch req.Type {
	case tikvrpc.CmdPrewrite:
		pr := req.Prewrite()
		tr.prewrites++
		if pr.GetTryOnePc() || pr.GetUseAsyncCommit() {
			tr.askedFast = true
		}
		if err != nil || resp == nil {
			return
		}
		r, ok := resp.Resp.(*kvrpcpb.PrewriteResponse)
		switch {
		case !ok || r.GetRegionError() != nil || len(r.GetErrors()) > 0:
			// Retried or failed; the retry is observed on its own.
		case r.GetOnePcCommitTs() != 0:
			tr.onePC++
		case pr.GetUseAsyncCommit() && r.GetMinCommitTs() != 0:
			tr.async++
		default:
			tr.other++
		}
	case tikvrpc.CmdCommit:
		tr.commitSent = true
	}
}

// finish closes the trace (later requests, sent in the background, are not
// counted) and works out the protocol and the commit-path TSO requests.
func (tr *trace) finish() traced {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.done = true
	t := tr.t
	if tr.prewrites == 0 {
		return t
	}
	if tr.askedFast {
		t.tso++ // the minimum commit timestamp
	}
	switch {
	case tr.onePC > 0 && tr.async == 0 && tr.other == 0:
		t.protocol = proto1PC
	case tr.async > 0 && tr.onePC == 0 && tr.other == 0 && !tr.commitSent:
		t.protocol = protoAsync
	case tr.commitSent:
		t.protocol = proto2PC
		t.tso++ // the commit timestamp
	}
	return t
}
