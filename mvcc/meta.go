package mvcc

import (
	"strconv"

	"github.com/axon-kv/axon/backend"
)

// SwapLeader stores the leader record rec in place of old (nil: none is
// stored) and, when term > 0, the term key, in one batch. It fails with
// backend.ErrConditionFailed when the stored record is not old.
func SwapLeader(be backend.Backend, old, rec []byte, term int64) error {
	b := &backend.Batch{Conditions: []backend.Condition{{Key: MetaLeader, Value: old}}}
	b.Put(MetaLeader, rec)
	if term > 0 {
		b.Put(MetaLeaderTerm, EncodeRev(term))
	}
	return be.Commit(b)
}

// TermFence is the condition a leader of term writes under: the term key
// still holds term.
func TermFence(term int64) []backend.Condition {
	return []backend.Condition{{Key: MetaLeaderTerm, Value: EncodeRev(term)}}
}

// ConfirmFence checks the fence's conditions without writing anything: a
// group of reads only (read-only Txns, failed compares) is answered from
// the leader's own view, which is current only while no other leader has
// committed.
func ConfirmFence(be backend.Backend, fence func() []backend.Condition) error {
	if fence == nil {
		return nil
	}
	return be.Commit(&backend.Batch{Conditions: fence()})
}

// InitStore makes an empty store continue at revision rev with nothing
// readable below it (a copy from another store that keeps its revisions).
func InitStore(be backend.Backend, rev int64) error {
	var b backend.Batch
	b.Put(MetaFormat, []byte(strconv.Itoa(FormatVersion)))
	for _, k := range [][]byte{MetaRevision, MetaCompacted, MetaCompactDone} {
		b.Put(k, EncodeRev(rev))
	}
	return be.Commit(&b)
}

// Loader copies raw backend pairs (a snapshot's records) into an empty
// store in bounded batches. The copy is opened like any store, so a
// snapshot of another format is refused then.
type Loader struct {
	be backend.Backend
	b  backend.Batch
}

// NewLoader starts a copy into be.
func NewLoader(be backend.Backend) *Loader { return &Loader{be: be} }

// Put adds one pair; k and v are copied.
func (l *Loader) Put(k, v []byte) error {
	l.b.Put(append([]byte(nil), k...), append([]byte(nil), v...))
	if l.b.Len() >= 1000 || l.b.Bytes() >= 1<<20 {
		return l.Flush()
	}
	return nil
}

// Flush writes what is pending.
func (l *Loader) Flush() error {
	if l.b.Len() == 0 {
		return nil
	}
	err := l.be.Commit(&l.b)
	l.b = backend.Batch{}
	return err
}
