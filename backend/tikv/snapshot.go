package tikv

import (
	"bytes"
	"errors"
	"fmt"
	"sync/atomic"

	tikverr "github.com/tikv/client-go/v2/error"
	"github.com/tikv/client-go/v2/txnkv/txnsnapshot"

	"github.com/axon-kv/axon/backend"
)

// Snapshot implements backend.Backend: it takes a timestamp from PD (one
// round trip) and reads as of it. PD hands out timestamps in increasing
// order and a commit's timestamp is taken before its Commit returns, so the
// snapshot sees every batch whose Commit returned before this call.
//
// A snapshot holds nothing on the servers, so an idle one costs nothing;
// but it can only be read while TiKV still keeps the versions it needs, that
// is until the cluster's GC safe point passes its timestamp.
func (d *DB) Snapshot() (backend.Snapshot, error) {
	if !d.gate.Enter() {
		return nil, backend.ErrClosed
	}
	defer d.gate.Exit()
	ts, err := d.client.GetTimestamp(d.ctx)
	if err != nil {
		return nil, d.closedOr(fmt.Errorf("tikv: snapshot timestamp: %w", err))
	}
	return &snapshot{d: d, ts: ts}, nil
}

// closedOr returns ErrClosed for an error caused by Close cancelling the
// call, err otherwise.
func (d *DB) closedOr(err error) error {
	if d.ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", backend.ErrClosed, err)
	}
	return err
}

type snapshot struct {
	d      *DB
	ts     uint64
	closed atomic.Bool
}

// view returns a client-go snapshot at s.ts. Each call gets its own: they
// cost an allocation, no round trip, and a shared one would cache every
// value it ever read (client-go's snapshot cache is bounded at 10 GiB) and
// would race on per-scan settings.
func (s *snapshot) view() *txnsnapshot.KVSnapshot {
	return s.d.client.GetSnapshot(s.ts)
}

// Get implements backend.Snapshot.
func (s *snapshot) Get(key []byte) ([]byte, error) {
	if s.closed.Load() || !s.d.gate.Enter() {
		return nil, backend.ErrClosed
	}
	defer s.d.gate.Exit()
	e, err := s.view().Get(s.d.ctx, s.d.key(key))
	if tikverr.IsErrNotFound(err) {
		return nil, backend.ErrNotFound
	}
	if err != nil {
		return nil, s.d.closedOr(fmt.Errorf("tikv: get %q: %w", key, err))
	}
	v, err := decodeValue(key, e.Value)
	if err != nil {
		return nil, err
	}
	return bytes.Clone(v), nil
}

// Scan implements backend.Snapshot. Keys arrive from TiKV in batches of up
// to 256 (fewer when Limit is smaller), one round trip per batch and per
// region crossed.
func (s *snapshot) Scan(start, end []byte, opts backend.ScanOptions, fn func(key, value []byte) error) error {
	if s.closed.Load() || !s.d.gate.Enter() {
		return backend.ErrClosed
	}
	defer s.d.gate.Exit()
	if end != nil && bytes.Compare(start, end) >= 0 {
		return nil
	}

	// Both bounds are always set: the keyspace's own end stands in for an
	// open end, so nothing outside the prefix is ever read.
	lo := s.d.key(start)
	hi := s.d.prefixEnd
	if end != nil {
		hi = s.d.key(end)
	}

	view := s.view()
	view.SetKeyOnly(opts.KeysOnly)
	if opts.Limit > 0 && opts.Limit < txnsnapshot.DefaultScanBatchSize {
		// client-go wants at least 2 (it skips the first key of a
		// follow-up batch).
		view.SetScanBatchSize(max(opts.Limit, 2))
	}

	type iterator interface {
		Valid() bool
		Key() []byte
		Value() []byte
		Next() error
		Close()
	}
	var (
		it  iterator
		err error
	)
	if opts.Reverse {
		// IterReverse starts at the last key below hi (exclusive, as the
		// backend's end is) and stops before lo.
		it, err = view.IterReverse(hi, lo)
	} else {
		it, err = view.Iter(lo, hi)
	}
	if err != nil {
		return s.d.closedOr(fmt.Errorf("tikv: scan [%q, %q): %w", start, end, err))
	}
	defer it.Close()

	n := 0
	for ; it.Valid(); err = it.Next() {
		k := it.Key()
		// The scanner honours both bounds; this guards the prefix
		// stripping below against a client-go that did not.
		below, above := bytes.Compare(k, lo) < 0, bytes.Compare(k, hi) >= 0
		if (!opts.Reverse && above) || (opts.Reverse && below) {
			break
		}
		if below || above {
			continue
		}
		k = k[len(s.d.prefix):]
		var v []byte
		if !opts.KeysOnly {
			if v, err = decodeValue(k, it.Value()); err != nil {
				return err
			}
		}
		if err := fn(k, v); err != nil {
			if errors.Is(err, backend.ErrStop) {
				return nil
			}
			return err
		}
		if n++; opts.Limit > 0 && n >= opts.Limit {
			return nil
		}
	}
	if err != nil {
		return s.d.closedOr(fmt.Errorf("tikv: scan [%q, %q): %w", start, end, err))
	}
	return nil
}

// Close implements backend.Snapshot. There is nothing to release on the
// servers; it only makes later calls fail.
func (s *snapshot) Close() { s.closed.Store(true) }
