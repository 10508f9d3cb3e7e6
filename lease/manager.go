// Package lease owns the lease table, lease expiry and keep-alive. It keeps
// every granted lease and the keys attached to it in memory, answers the
// lease questions of the write path in O(1), and on the leader revokes
// leases whose TTL ran out. It never writes to the backend itself: grants
// and revocations go through the single writer (see Writer); the backend is
// only read at startup (Load).
//
// Expiry deadlines live only in memory. Like etcd after a leader change,
// every lease restarts its full TTL when this member becomes the primary
// (Start), so a restart or failover extends leases, never shortens them.
package lease

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/protobuf/proto"

	"github.com/axon-kv/axon/backend"
	"github.com/axon-kv/axon/mvcc"
	"github.com/axon-kv/axon/proto/axonpb"
)

// Errors of the lease table. The server maps the first three onto etcd's
// gRPC errors (lease not found, lease already exists, too large lease TTL).
var (
	ErrLeaseNotFound    = errors.New("lease not found")
	ErrLeaseExists      = errors.New("lease already exists")
	ErrLeaseTTLTooLarge = errors.New("too large lease TTL")
	// ErrNotPrimary is returned by Renew and TimeToLive when this member
	// does not run the expiry loop (not started, stopped, or a follower):
	// only the primary knows the deadlines.
	ErrNotPrimary = errors.New("not a primary lessor")
)

// Writer is the part of the single writer the lease table needs.
type Writer interface {
	// GrantLease durably stores the lease record (no revision change); it is
	// an error (lease exists) if the ID is already granted — check in Manager before calling.
	GrantLease(ctx context.Context, id, ttl int64) error
	// RevokeLease deletes every key attached to id in one new revision (delete events
	// are published like any delete), and the lease record; it returns the header revision.
	RevokeLease(ctx context.Context, id int64) (int64, error)
}

const (
	// MaxLeaseTTL is etcd's largest grantable TTL in seconds (lease.MaxLeaseTTL).
	MaxLeaseTTL = 9000000000
	// DefaultMinTTL is the TTL etcd grants at least with its default
	// election settings: ceil(1.5 * election timeout) = ceil(3*10/2 ticks *
	// 100ms) = 2 seconds. Shorter requests are extended, not refused.
	DefaultMinTTL = 2
	// DefaultPromoteExtend is added to every TTL when the manager becomes the
	// primary; etcd adds its election timeout (1s by default).
	DefaultPromoteExtend = time.Second
	// DefaultMaxConcurrentRevokes bounds expiry revocations in flight (etcd: 16).
	DefaultMaxConcurrentRevokes = 16
	// DefaultRevokeRate is the most expiry revocations started per second
	// (etcd: 1000).
	DefaultRevokeRate = 1000
	// DefaultRetryInterval is the first delay before an expiry revocation
	// that failed is tried again; it doubles up to DefaultMaxRetryInterval.
	DefaultRetryInterval    = 500 * time.Millisecond
	DefaultMaxRetryInterval = 10 * time.Second
	// DefaultOpTimeout bounds one call into the writer.
	DefaultOpTimeout = 30 * time.Second
)

// Options configure a Manager. Zero fields take the defaults above.
type Options struct {
	// MinTTL is the smallest TTL granted, in seconds; shorter requests are
	// extended to it (etcd's minimum lease TTL, 2s with default settings).
	MinTTL int64
	// MaxTTL is the largest TTL accepted, in seconds; larger requests fail
	// with ErrLeaseTTLTooLarge (etcd's MaxLeaseTTL).
	MaxTTL int64
	// PromoteExtend is added to every lease's TTL when Start makes this
	// manager the primary (etcd adds its election timeout); negative means
	// none.
	PromoteExtend time.Duration
	// MaxConcurrentRevokes bounds expiry revocations in flight.
	MaxConcurrentRevokes int
	// RevokeRate is the most expiry revocations started per second. Start
	// also spreads the deadlines of piled-up leases so that no more than 3/4
	// of this rate fall in one second (as etcd does on promotion).
	RevokeRate int
	// RetryInterval and MaxRetryInterval bound the back-off of a failed
	// expiry revocation.
	RetryInterval    time.Duration
	MaxRetryInterval time.Duration
	// OpTimeout bounds every call into the writer. Calls are not cancelled
	// by the client's context: the table must learn their outcome.
	OpTimeout time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.MinTTL <= 0 {
		o.MinTTL = DefaultMinTTL
	}
	if o.MaxTTL <= 0 {
		o.MaxTTL = MaxLeaseTTL
	}
	if o.PromoteExtend < 0 {
		o.PromoteExtend = 0
	} else if o.PromoteExtend == 0 {
		o.PromoteExtend = DefaultPromoteExtend
	}
	if o.MaxConcurrentRevokes <= 0 {
		o.MaxConcurrentRevokes = DefaultMaxConcurrentRevokes
	}
	if o.RevokeRate <= 0 {
		o.RevokeRate = DefaultRevokeRate
	}
	if o.RetryInterval <= 0 {
		o.RetryInterval = DefaultRetryInterval
	}
	if o.MaxRetryInterval < o.RetryInterval {
		o.MaxRetryInterval = max(DefaultMaxRetryInterval, o.RetryInterval)
	}
	if o.OpTimeout <= 0 {
		o.OpTimeout = DefaultOpTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// Lease describes one lease.
type Lease struct {
	ID int64
	// GrantedTTL is the TTL in seconds the lease was granted with, after
	// the MinTTL clamp.
	GrantedTTL int64
	// TTL is the remaining time to live in whole seconds (truncated, as etcd
	// reports it). Grant sets it to GrantedTTL.
	TTL int64
	// Keys are the attached keys in ascending order (TimeToLive with keys).
	Keys [][]byte
}

// entry is one lease of the table.
type entry struct {
	id  int64
	ttl int64 // granted TTL in seconds

	kmu  sync.Mutex
	keys map[string]struct{} // guarded by kmu

	// dead is set when the writer starts building this lease's revocation
	// (Keys during a revoke in flight); Exists then reports false so later
	// writes in the same or a following group cannot attach to it.
	dead atomic.Bool

	// Guarded by Manager.mu.
	expiry   time.Time     // zero: no deadline (not primary)
	hidx     int           // index in the expiry heap, -1 when not in it
	op       *revokeOp     // revocation in flight
	attempts int           // failed expiry revocations in a row
	revoked  chan struct{} // closed when the lease left the table
}

type revokeOp struct {
	done chan struct{}
	rev  int64
	err  error
}

// Manager is the lease table. All methods are safe for concurrent use.
type Manager struct {
	w    Writer
	opts Options
	lg   *slog.Logger
	// second is the length of one TTL second; tests shorten it.
	second time.Duration

	life sync.Mutex // serializes Start, Stop and Load

	mu       sync.RWMutex
	leases   map[int64]*entry
	granting map[int64]struct{} // IDs whose GrantLease is in flight
	exp      expiryHeap         // deadlines, only while primary
	primary  bool
	demotec  chan struct{} // closed by Stop; non-nil while primary
	inflight int           // expiry revocations in flight
	tokens   float64       // revoke rate limiter
	tokensAt time.Time

	wake      chan struct{}      // pokes the expiry loop
	loopStop  chan struct{}      // closed by Stop
	loopDone  chan struct{}      // closed when the loop returned
	cancel    context.CancelFunc // cancels expiry revocations
	wg        sync.WaitGroup     // expiry revocations in flight
	stopGrace time.Duration      // how long Stop lets them finish
}

// NewManager returns an empty, stopped (non-primary) manager. Call Load
// with the backend's state, then Start on the leader.
func NewManager(w Writer, opts Options) *Manager {
	opts = opts.withDefaults()
	return &Manager{
		w:         w,
		opts:      opts,
		lg:        opts.Logger.With("component", "lease"),
		second:    time.Second,
		leases:    make(map[int64]*entry),
		granting:  make(map[int64]struct{}),
		wake:      make(chan struct{}, 1),
		stopGrace: defaultStopGrace,
	}
}

// defaultStopGrace is how long Stop waits for expiry revocations in flight
// before cancelling them.
const defaultStopGrace = 5 * time.Second

// Options returns the effective options (defaults filled in).
func (m *Manager) Options() Options { return m.opts }

// Load replaces the table with the lease records stored in snap and the
// keys attached to them, which attached lists (each live key with a lease,
// as the key index knows it: attachments are not stored apart). It must be called while the manager is stopped (at startup, and
// again by a follower about to become the primary, since followers do not
// see the leader's grants). TTLs below MinTTL are raised to it, as etcd
// does on recovery. Deadlines are set by Start.
func (m *Manager) Load(snap backend.Snapshot, attached func(fn func(id int64, key []byte))) error {
	m.life.Lock()
	defer m.life.Unlock()
	if m.Primary() {
		return errors.New("lease: Load while started; Stop first")
	}
	leases := make(map[int64]*entry)
	start, end := mvcc.LeasePrefix()
	err := snap.Scan(start, end, backend.ScanOptions{}, func(k, v []byte) error {
		var rec axonpb.Lease
		if err := proto.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("lease: decode record %x: %w", k, err)
		}
		ttl := max(rec.GetTtl(), m.opts.MinTTL)
		leases[rec.GetId()] = newEntry(rec.GetId(), ttl)
		return nil
	})
	if err != nil {
		return fmt.Errorf("lease: load records: %w", err)
	}
	orphans := 0
	if attached != nil {
		attached(func(id int64, key []byte) {
			e := leases[id]
			if e == nil {
				orphans++
				return
			}
			e.keys[string(key)] = struct{}{}
		})
	}
	if orphans > 0 {
		m.lg.Warn("attachments to missing leases ignored", "count", orphans)
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range m.leases {
		// Anyone waiting on a lease of the old table learns it is gone.
		e.closeRevoked()
	}
	m.leases = leases
	m.exp = m.exp[:0]
	m.lg.Info("leases loaded", "count", len(leases))
	return nil
}

func newEntry(id, ttl int64) *entry {
	return &entry{
		id:      id,
		ttl:     ttl,
		keys:    make(map[string]struct{}),
		hidx:    -1,
		revoked: make(chan struct{}),
	}
}

func (e *entry) closeRevoked() {
	select {
	case <-e.revoked:
	default:
		close(e.revoked)
	}
}

// deadline is now + ttl seconds + extra, saturating far in the future.
func (m *Manager) deadline(now time.Time, ttl int64, extra time.Duration) time.Time {
	const maxDur = time.Duration(1<<63 - 1)
	d := maxDur
	if ttl < int64(maxDur/m.second) {
		d = time.Duration(ttl) * m.second
	}
	if d <= maxDur-extra {
		d += extra
	}
	return now.Add(d)
}

// Grant creates lease id (a fresh positive ID when id is 0) with the given
// TTL in seconds, raised to MinTTL. It fails with ErrLeaseTTLTooLarge above
// MaxTTL and ErrLeaseExists for an ID already granted. The record is
// durable when Grant returns; on the primary the TTL runs from then.
func (m *Manager) Grant(ctx context.Context, id, ttl int64) (*Lease, error) {
	if ttl > m.opts.MaxTTL {
		return nil, ErrLeaseTTLTooLarge
	}
	ttl = max(ttl, m.opts.MinTTL)

	m.mu.Lock()
	if id == 0 {
		for id == 0 || m.leases[id] != nil || m.isGranting(id) {
			id = rand.Int64() & (1<<63 - 1) // etcd hands out positive IDs
		}
	} else if m.leases[id] != nil || m.isGranting(id) {
		m.mu.Unlock()
		return nil, ErrLeaseExists
	}
	m.granting[id] = struct{}{}
	m.mu.Unlock()

	// The writer call outlives a cancelled client: the table must record a
	// lease that became durable, whoever still waits for it.
	done := make(chan error, 1)
	go func() {
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.opts.OpTimeout)
		defer cancel()
		err := m.w.GrantLease(wctx, id, ttl)
		m.mu.Lock()
		delete(m.granting, id)
		if err == nil {
			e := newEntry(id, ttl)
			m.leases[id] = e
			if m.primary {
				e.expiry = m.deadline(time.Now(), ttl, 0)
				m.pushLocked(e)
			}
		}
		m.mu.Unlock()
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			return nil, err
		}
		return &Lease{ID: id, GrantedTTL: ttl, TTL: ttl}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (m *Manager) isGranting(id int64) bool {
	_, ok := m.granting[id]
	return ok
}

// Revoke deletes lease id and every key attached to it in one revision and
// returns the revision of that write. Unknown leases fail with
// ErrLeaseNotFound; so does a lease revoked (or expired) concurrently.
func (m *Manager) Revoke(ctx context.Context, id int64) (int64, error) {
	for {
		op, mine, err := m.beginRevoke(id)
		if err != nil {
			return 0, err
		}
		if mine {
			go m.runRevoke(context.WithoutCancel(ctx), id, op, false)
		}
		select {
		case <-op.done:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		if mine {
			return op.rev, op.err
		}
		// Someone else (expiry, another Revoke) got there first.
		if op.err == nil {
			return 0, ErrLeaseNotFound
		}
		// Theirs failed; try ours.
	}
}

// beginRevoke registers a revocation of id, or returns the one in flight.
func (m *Manager) beginRevoke(id int64) (op *revokeOp, mine bool, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.leases[id]
	if e == nil {
		return nil, false, ErrLeaseNotFound
	}
	if e.op != nil {
		return e.op, false, nil
	}
	e.op = &revokeOp{done: make(chan struct{})}
	if e.hidx >= 0 {
		heap.Remove(&m.exp, e.hidx)
	}
	return e.op, true, nil
}

// runRevoke calls the writer for a registered revocation and records the
// outcome.
func (m *Manager) runRevoke(ctx context.Context, id int64, op *revokeOp, expiry bool) {
	wctx, cancel := context.WithTimeout(ctx, m.opts.OpTimeout)
	var (
		rev int64
		err error
	)
	if expiry {
		// An expired lease about to be revoked; the error term is a failed
		// revocation, which is retried with backoff.
		// gofail: var leaseExpiryRevoke struct{}
		// err = errors.New("failpoint leaseExpiryRevoke")
	}
	if err == nil {
		rev, err = m.w.RevokeLease(wctx, id)
	}
	cancel()

	// The writer no longer knows the lease: an earlier attempt committed
	// although its caller saw an error (a cancelled or timed-out submit
	// may still commit). The lease is gone either way.
	gone := err != nil && isNotFound(err)

	m.mu.Lock()
	e := m.leases[id]
	if e != nil && e.op == op {
		e.op = nil
		if err == nil || gone {
			delete(m.leases, id)
			e.closeRevoked()
		} else {
			e.dead.Store(false)
			if m.primary && !e.expiry.IsZero() {
				if expiry {
					e.attempts++
					d := m.opts.RetryInterval << min(e.attempts-1, 16)
					if d <= 0 || d > m.opts.MaxRetryInterval {
						d = m.opts.MaxRetryInterval
					}
					e.expiry = time.Now().Add(d)
				}
				m.pushLocked(e)
			}
		}
	}
	if expiry {
		m.inflight--
	}
	m.mu.Unlock()

	if gone {
		m.lg.Warn("writer no longer knows lease; dropped", "lease", fmt.Sprintf("%016x", id))
		err = ErrLeaseNotFound
		rev = 0
	} else if err != nil {
		m.lg.Warn("revoke lease failed", "lease", fmt.Sprintf("%016x", id), "expired", expiry, "err", err)
	} else if expiry {
		m.lg.Debug("expired lease revoked", "lease", fmt.Sprintf("%016x", id), "rev", rev)
	}
	op.rev, op.err = rev, err
	close(op.done)
	if expiry {
		m.poke()
	}
}

// Renew restarts the TTL of lease id and returns its granted TTL. A lease
// past its deadline cannot be renewed: Renew waits until its revocation
// completes and then fails with ErrLeaseNotFound (or ErrNotPrimary if this
// manager stops meanwhile, or the context's error).
func (m *Manager) Renew(ctx context.Context, id int64) (int64, error) {
	for {
		m.mu.Lock()
		if !m.primary {
			m.mu.Unlock()
			return -1, ErrNotPrimary
		}
		demotec := m.demotec
		e := m.leases[id]
		if e == nil {
			m.mu.Unlock()
			return -1, ErrLeaseNotFound
		}
		now := time.Now()
		if e.op == nil && now.Before(e.expiry) {
			e.expiry = m.deadline(now, e.ttl, 0)
			if e.hidx >= 0 {
				heap.Fix(&m.exp, e.hidx)
			} else {
				m.pushLocked(e)
			}
			m.mu.Unlock()
			return e.ttl, nil
		}
		// Expired, or a revocation is in flight: wait for its outcome.
		var opDone chan struct{}
		if e.op != nil {
			opDone = e.op.done
		}
		m.mu.Unlock()
		select {
		case <-e.revoked:
			return -1, ErrLeaseNotFound
		case <-opDone: // failed revocation: look again
		case <-demotec:
			return -1, ErrNotPrimary
		case <-ctx.Done():
			return -1, ctx.Err()
		}
	}
}

// TimeToLive describes lease id: remaining and granted TTL and, with keys,
// the attached keys. Only the primary knows deadlines (ErrNotPrimary).
func (m *Manager) TimeToLive(id int64, keys bool) (*Lease, error) {
	m.mu.RLock()
	if !m.primary {
		m.mu.RUnlock()
		return nil, ErrNotPrimary
	}
	e := m.leases[id]
	if e == nil {
		m.mu.RUnlock()
		return nil, ErrLeaseNotFound
	}
	l := &Lease{ID: id, GrantedTTL: e.ttl, TTL: m.remainingLocked(e, time.Now())}
	m.mu.RUnlock()
	if keys {
		l.Keys = e.sortedKeys()
	}
	return l, nil
}

// remainingLocked is the remaining TTL in whole seconds, truncated toward
// zero like etcd's int64(Remaining().Seconds()).
func (m *Manager) remainingLocked(e *entry, now time.Time) int64 {
	if e.expiry.IsZero() {
		return e.ttl
	}
	return int64(e.expiry.Sub(now) / m.second)
}

// Leases returns the IDs of all leases, soonest deadline first (as etcd
// lists them).
func (m *Manager) Leases() []int64 {
	m.mu.RLock()
	es := make([]*entry, 0, len(m.leases))
	for _, e := range m.leases {
		es = append(es, e)
	}
	slices.SortFunc(es, func(a, b *entry) int {
		switch {
		case a.expiry.Equal(b.expiry):
		case a.expiry.IsZero():
			return 1
		case b.expiry.IsZero():
			return -1
		default:
			return a.expiry.Compare(b.expiry)
		}
		switch {
		case a.id < b.id:
			return -1
		case a.id > b.id:
			return 1
		}
		return 0
	})
	m.mu.RUnlock()
	ids := make([]int64, len(es))
	for i, e := range es {
		ids[i] = e.id
	}
	return ids
}

// Len is the number of leases.
func (m *Manager) Len() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.leases)
}

// Exists reports whether lease id is granted and not being revoked. It is
// called by the writer goroutine while it builds a group.
func (m *Manager) Exists(id int64) bool {
	m.mu.RLock()
	e := m.leases[id]
	m.mu.RUnlock()
	return e != nil && !e.dead.Load()
}

// Attach records that key is attached to lease id. The writer calls it
// after the group that put key with the lease committed, and before it
// builds the next group.
func (m *Manager) Attach(id int64, key []byte) {
	m.mu.RLock()
	e := m.leases[id]
	m.mu.RUnlock()
	if e == nil {
		m.lg.Warn("attach to unknown lease", "lease", fmt.Sprintf("%016x", id), "key", string(key))
		return
	}
	e.kmu.Lock()
	e.keys[string(key)] = struct{}{}
	e.kmu.Unlock()
}

// Detach records that key is no longer attached to lease id (deleted, or
// put again with another or no lease). Unknown leases are ignored.
func (m *Manager) Detach(id int64, key []byte) {
	m.mu.RLock()
	e := m.leases[id]
	m.mu.RUnlock()
	if e == nil {
		return
	}
	e.kmu.Lock()
	delete(e.keys, string(key))
	e.kmu.Unlock()
}

// Keys returns the keys attached to lease id in ascending order. The writer
// calls it from its goroutine when it builds the revocation of id; if a
// revocation of id is in flight, the lease counts as gone for Exists from
// then on (restored if the revocation fails), so no write that follows the
// revocation can attach a key to it.
func (m *Manager) Keys(id int64) [][]byte {
	m.mu.RLock()
	e := m.leases[id]
	if e != nil && e.op != nil {
		e.dead.Store(true)
	}
	m.mu.RUnlock()
	if e == nil {
		return nil
	}
	return e.sortedKeys()
}

func (e *entry) sortedKeys() [][]byte {
	e.kmu.Lock()
	ks := make([]string, 0, len(e.keys))
	for k := range e.keys {
		ks = append(ks, k)
	}
	e.kmu.Unlock()
	slices.Sort(ks)
	out := make([][]byte, len(ks))
	for i, k := range ks {
		out[i] = []byte(k)
	}
	return out
}

// isNotFound recognises the writer's "lease not found" answer, in this
// package's form or as etcd's gRPC error.
func isNotFound(err error) bool {
	return errors.Is(err, ErrLeaseNotFound) ||
		errors.Is(err, rpctypes.ErrGRPCLeaseNotFound) ||
		errors.Is(err, rpctypes.ErrLeaseNotFound)
}
