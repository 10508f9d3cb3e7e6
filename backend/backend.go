// Package backend defines the one small ordered key-value interface every
// storage engine implements (snapshot reads, ordered scans, one atomic
// conditional batch) and nothing more. It knows nothing of revisions, MVCC
// or etcd: those live above it, in package mvcc, once for every engine.
package backend

import "errors"

var (
	// ErrNotFound is returned by Snapshot.Get for a missing key.
	ErrNotFound = errors.New("backend: key not found")
	// ErrConditionFailed is returned by Commit when a Condition does not
	// hold; nothing of the batch was written.
	ErrConditionFailed = errors.New("backend: condition failed")
	// ErrStop may be returned by a Scan callback to end the scan early
	// without an error.
	ErrStop = errors.New("backend: stop scan")
	// ErrClosed is returned once the backend is closed.
	ErrClosed = errors.New("backend: closed")
)

// Backend is an ordered byte-keyed store.
type Backend interface {
	// Snapshot returns a consistent read view as of now. It sees every batch
	// whose Commit returned before Snapshot was called.
	Snapshot() (Snapshot, error)
	// Commit applies b atomically and durably: when it returns nil the batch
	// survives a crash. If any condition fails nothing is written and
	// ErrConditionFailed is returned.
	Commit(b *Batch) error
	// Size is the approximate number of bytes the store occupies.
	Size() int64
	Close() error
}

// Snapshot is a consistent read view. It must be closed.
type Snapshot interface {
	// Get returns a copy of the value, or ErrNotFound.
	Get(key []byte) ([]byte, error)
	// Scan calls fn for keys in [start, end) in order (descending with
	// Reverse). A nil end means no upper bound. key and value are only valid
	// during the call. fn returning ErrStop ends the scan with a nil error.
	Scan(start, end []byte, opts ScanOptions, fn func(key, value []byte) error) error
	Close()
}

// ScanOptions tune a Scan.
type ScanOptions struct {
	// Limit stops after this many keys; 0 means no limit.
	Limit   int
	Reverse bool
	// KeysOnly lets the engine skip reading values; fn gets a nil value.
	KeysOnly bool
}

// Batch is one atomic write.
type Batch struct {
	Ops        []Op
	Conditions []Condition
}

// Op is a put, or a delete when Delete is set.
type Op struct {
	Key    []byte
	Value  []byte
	Delete bool
}

// Condition holds when the key's current value equals Value; a nil Value
// means the key must be absent.
type Condition struct {
	Key   []byte
	Value []byte
}

// Put appends a put.
func (b *Batch) Put(key, value []byte) { b.Ops = append(b.Ops, Op{Key: key, Value: value}) }

// Delete appends a delete.
func (b *Batch) Delete(key []byte) { b.Ops = append(b.Ops, Op{Key: key, Delete: true}) }

// Len is the number of operations.
func (b *Batch) Len() int { return len(b.Ops) }

// Bytes is the approximate payload size, used to keep batches under engine
// transaction limits.
func (b *Batch) Bytes() int {
	n := 0
	for _, op := range b.Ops {
		n += len(op.Key) + len(op.Value) + 16
	}
	return n
}

// PrefixEnd returns the smallest key greater than every key with prefix p,
// or nil when there is none.
func PrefixEnd(p []byte) []byte {
	end := make([]byte, len(p))
	copy(end, p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}
