package server

import (
	"context"
	"math"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"golang.org/x/sync/semaphore"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/axon-kv/axon/mvcc"
	"github.com/axon-kv/axon/proto/axonpb"
)

// readBudget bounds the memory read answers hold while they are built and
// sent (--max-read-bytes-in-flight). An unpaginated LIST of a big resource
// builds its whole answer and its encoding in memory; a few at once are how
// etcd gets OOM-killed. A read takes its share before it loads any value
// and keeps it until its answer has been sent; a read that does not fit
// waits its turn (first come, first served), and past --read-wait-timeout
// fails with etcd's "too many requests" (ResourceExhausted), which clients
// retry. A read bigger than the big lane (seven eighths of the budget) runs
// alone in it.
//
// Shares are estimated from the index before values are read: the keys'
// lengths are known and values count at the running mean of the values
// read so far. An answer built in wire form (rawrange.go) counts once; one
// built as decoded key-values counts twice (the answer and its encoding).
//
// Small reads have a lane of their own (an eighth of the budget): the
// queue is first come, first served, so in one queue a LIST waiting for
// room held up every single-object read and every CAS update (a Txn
// whose Else reads one key) that came after it, for as long as LISTs kept
// the budget full. A read starts in the small lane and moves to the big
// one, with what it holds, once it grows past smallRead.
type readBudget struct {
	small, big readLane
	smallRead  int64
	wait       time.Duration

	meanValue atomic.Int64 // bytes, running mean of values read

	inFlight prometheus.Gauge
	waiting  prometheus.Gauge
	refused  prometheus.Counter
}

// kvOverhead is what an answered key-value costs besides its key and value
// bytes: the decoded message and its share of the encoding.
const kvOverhead = 96

// readLane is one queue of the budget.
type readLane struct {
	sem  *semaphore.Weighted
	size int64
}

func newReadLane(size int64) readLane {
	return readLane{sem: semaphore.NewWeighted(size), size: size}
}

func newReadBudget(size int64, wait time.Duration, reg prometheus.Registerer) *readBudget {
	b := &readBudget{
		small:     newReadLane(size / 8),
		big:       newReadLane(size - size/8),
		smallRead: size / 64,
		wait:      wait,
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "axon_read_bytes_in_flight",
			Help: "Memory held by read answers being built or sent, as estimated against --max-read-bytes-in-flight.",
		}),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "axon_reads_waiting",
			Help: "Reads waiting for room in --max-read-bytes-in-flight.",
		}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "axon_reads_refused_total",
			Help: "Reads refused with 'too many requests' after waiting --read-wait-timeout for room.",
		}),
	}
	b.meanValue.Store(512)
	reg.MustRegister(b.inFlight, b.waiting, b.refused, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "axon_read_bytes_budget",
		Help: "--max-read-bytes-in-flight.",
	}, func() float64 { return float64(size) }))
	return b
}

// estimate is what answering es holds, counting per key-value its key,
// a value of the running mean and overhead bytes.
func (b *readBudget) estimate(es []mvcc.Entry, overhead int64) int64 {
	var keyBytes int64
	for _, e := range es {
		keyBytes += int64(len(e.Key))
	}
	return b.estimateN(len(es), keyBytes, overhead)
}

// estimateN is estimate for n key-values of keyBytes key bytes in all.
func (b *readBudget) estimateN(n int, keyBytes, overhead int64) int64 {
	return keyBytes + int64(n)*(b.meanValue.Load()+overhead)
}

// txnEstimate is what the answers of t's range operations hold, from the
// index at its newest revision: every range of both branches counts
// (whichever runs, no more than that is held), twice, as decoded
// key-values and their encoding.
func (b *readBudget) txnEstimate(idx *mvcc.Index, t *pb.TxnRequest) int64 {
	mean := b.meanValue.Load()
	var (
		rev   int64
		total int64
	)
	eachTxnOp(t, func(op *pb.RequestOp) bool {
		r := op.GetRequestRange()
		if r == nil || r.CountOnly {
			return true
		}
		if rev == 0 && len(r.RangeEnd) > 0 {
			rev, _ = idx.Rev()
		}
		n, keyBytes := rangeSize(idx, r, rev)
		per := int64(kvOverhead)
		if !r.KeysOnly {
			per += mean
		}
		total += 2 * (keyBytes + int64(n)*per)
		return true
	})
	return total
}

// rangeSize is how many key-values r answers at rev at most (its limit
// counts) and the bytes of their keys, from the index; a one-key range is
// taken as the key itself, without a lookup.
func rangeSize(idx *mvcc.Index, r *pb.RangeRequest, rev int64) (n int, keyBytes int64) {
	if len(r.RangeEnd) == 0 {
		return 1, int64(len(r.Key))
	}
	limit := -1
	if r.Limit > 0 {
		limit = int(min(r.Limit, math.MaxInt32))
	}
	return idx.Size(r.Key, r.RangeEnd, rev, limit)
}

// wireOverhead is what an answered key-value costs besides its key and
// value bytes in a wire-form answer: its index entry and its fields' tags
// and numbers.
const wireOverhead = 80

// observe moves the running mean towards what n values of total bytes
// held.
func (b *readBudget) observe(n int, total int64) {
	if n == 0 {
		return
	}
	m := b.meanValue.Load()
	// Each read weighs as much as 1/8 of the history, however many
	// values it read: a mean over recent reads, not over every value.
	b.meanValue.Store(m + (total/int64(n)-m)/8)
}

// readHold is one read's share of the budget.
type readHold struct {
	b    *readBudget
	ctx  context.Context
	held int64
	big  bool // held in the big lane
	// untilSent: the stats handler attached it and releases it once the
	// answer is sent.
	untilSent bool
}

type readHoldKey struct{}

// hold returns the share of the read running under ctx; the read calls
// done when it has its answer.
func (b *readBudget) hold(ctx context.Context) *readHold {
	if h, ok := ctx.Value(readHoldKey{}).(*readHold); ok {
		h.b, h.ctx, h.untilSent = b, ctx, true
		return h
	}
	return &readHold{b: b, ctx: ctx}
}

// done releases the share, unless the stats handler releases it once the
// answer has been sent.
func (h *readHold) done() {
	if !h.untilSent {
		h.release()
	}
}

// grow takes n more bytes (in total no more than the big lane), waiting
// for room.
func (h *readHold) grow(n int64) error {
	if n <= 0 {
		return nil
	}
	b := h.b
	switch {
	case !h.big && h.held+n <= b.smallRead:
		if err := h.acquire(&b.small, n); err != nil {
			return err
		}
	case !h.big:
		// To the big lane with what it holds: the small one is given
		// back only once the big one has room for all of it.
		total := min(h.held+n, b.big.size)
		if err := h.acquire(&b.big, total); err != nil {
			return err
		}
		b.small.sem.Release(h.held)
		b.inFlight.Add(float64(total - h.held))
		h.held, h.big = total, true
		return nil
	default:
		if n = min(n, b.big.size-h.held); n <= 0 {
			return nil
		}
		if err := h.acquire(&b.big, n); err != nil {
			return err
		}
	}
	h.held += n
	b.inFlight.Add(float64(n))
	return nil
}

// acquire takes n bytes of lane, waiting for room up to the budget's wait.
func (h *readHold) acquire(lane *readLane, n int64) error {
	if lane.sem.TryAcquire(n) {
		return nil
	}
	b := h.b
	b.waiting.Inc()
	ctx, cancel := context.WithTimeout(h.ctx, b.wait)
	err := lane.sem.Acquire(ctx, n)
	cancel()
	b.waiting.Dec()
	if err != nil {
		if h.ctx.Err() != nil {
			return status.FromContextError(h.ctx.Err()).Err()
		}
		b.refused.Inc()
		return rpctypes.ErrGRPCRequestTooManyRequests
	}
	return nil
}

// release gives the whole share back.
func (h *readHold) release() {
	if h == nil || h.b == nil || h.held == 0 {
		return
	}
	lane := &h.b.small
	if h.big {
		lane = &h.b.big
	}
	lane.sem.Release(h.held)
	h.b.inFlight.Sub(float64(h.held))
	h.held, h.big = 0, false
}

// holdUntilSent attaches a share to every unary Range and Txn and releases it once
// gRPC has sent the answer (stats.End comes after the response is written),
// so the budget covers the encoded answer too, not only the building.
type holdUntilSent struct{}

func (holdUntilSent) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	if info.FullMethodName != pb.KV_Range_FullMethodName && info.FullMethodName != pb.KV_Txn_FullMethodName {
		return ctx
	}
	return context.WithValue(ctx, readHoldKey{}, &readHold{})
}

func (holdUntilSent) HandleRPC(ctx context.Context, s stats.RPCStats) {
	if _, ok := s.(*stats.End); !ok {
		return
	}
	if h, ok := ctx.Value(readHoldKey{}).(*readHold); ok {
		h.release()
	}
}

func (holdUntilSent) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}

func (holdUntilSent) HandleConn(context.Context, stats.ConnStats) {}

// budgetSource charges the values a read loads to its share before
// loading them: twice, as they are held decoded and then encoded.
type budgetSource struct {
	mvcc.IndexSource
	h *readHold
}

func (s budgetSource) Load(e mvcc.Entry) (*axonpb.KeyValue, error) {
	if err := s.h.grow(2 * s.h.b.estimate([]mvcc.Entry{e}, kvOverhead)); err != nil {
		return nil, err
	}
	return s.IndexSource.Load(e)
}

func (s budgetSource) LoadMany(es []mvcc.Entry, fn func(i int, kv *axonpb.KeyValue) error) error {
	if err := s.h.grow(2 * s.h.b.estimate(es, kvOverhead)); err != nil {
		return err
	}
	var total int64
	err := s.IndexSource.LoadMany(es, func(i int, kv *axonpb.KeyValue) error {
		total += int64(len(kv.Value))
		return fn(i, kv)
	})
	s.h.b.observe(len(es), total)
	return err
}
