package mvcc

import (
	"google.golang.org/protobuf/proto"

	"github.com/axon-kv/axon/backend"
	"github.com/axon-kv/axon/proto/axonpb"
)

// WriteOptions tune a WriteTxn.
type WriteOptions struct {
	// Fence, when set, is added to the conditions of every batch: a deposed
	// leader's batches then fail instead of writing.
	Fence func() []backend.Condition
	// FlushOps and FlushBytes bound one backend batch. A group or revision
	// that grows past them reaches the backend in several batches, the
	// last of which commits it (see Commit).
	FlushOps   int
	FlushBytes int
}

func (o *WriteOptions) defaults() {
	if o.FlushOps <= 0 {
		o.FlushOps = 10000
	}
	if o.FlushBytes <= 0 {
		// With one request (at most ~1.5 MiB, bigger values leave Badger's
		// LSM tree) on top, a batch stays within what a 16 MiB memtable
		// takes in one transaction.
		o.FlushBytes = 1 << 20
	}
}

// WriteTxn builds the backend writes of one group of revisions, as etcd's
// storeTxnWrite does for one: key states at a revision, the end of each
// revision, leases and the compacted revision. Nothing is visible to
// readers until Commit moves m/revision; batches written before that (when
// a revision is too big for one) are rolled back at open if Commit never
// happens.
type WriteTxn struct {
	be      backend.Backend
	opts    WriteOptions
	batch   backend.Batch
	flushed bool // some batches of this group are already in the backend

	// the revision in progress and its changes not yet in a record chunk
	rev     int64
	chunk   uint32
	pending []*axonpb.Change
	// puts of the revision in progress, by key: a put the same
	// transaction later deletes keeps its value in the record, since its
	// history entry will hold the deletion.
	puts map[string]putRef
}

type putRef struct {
	change *axonpb.Change
	kv     *axonpb.KeyValue
}

// NewWriteTxn starts a group of writes on be.
func NewWriteTxn(be backend.Backend, opts WriteOptions) *WriteTxn {
	opts.defaults()
	return &WriteTxn{be: be, opts: opts}
}

// Empty reports whether nothing was written.
func (t *WriteTxn) Empty() bool { return t.batch.Len() == 0 && !t.flushed }

// Bytes is the approximate size of the writes not yet flushed.
func (t *WriteTxn) Bytes() int { return t.batch.Bytes() }

// Put stores key's state kv at revision kv.ModRevision, the revision in
// progress.
func (t *WriteTxn) Put(key []byte, kv *axonpb.KeyValue) error {
	t.begin(kv.ModRevision)
	t.batch.Put(HistoryKey(key, kv.ModRevision), EncodeKV(kv))
	meta := &axonpb.KeyValue{CreateRevision: kv.CreateRevision, ModRevision: kv.ModRevision, Version: kv.Version, Lease: kv.Lease}
	c := &axonpb.Change{Key: key, Kv: meta}
	t.pending = append(t.pending, c)
	if t.puts == nil {
		t.puts = map[string]putRef{}
	}
	t.puts[string(key)] = putRef{c, kv}
	return t.maybeFlush()
}

// Delete stores key's deletion at revision rev, the revision in progress.
func (t *WriteTxn) Delete(key []byte, rev int64) error {
	t.begin(rev)
	if p, ok := t.puts[string(key)]; ok {
		p.change.Kv = p.kv // its value is not stored anywhere else
	}
	t.batch.Put(HistoryKey(key, rev), EncodeKV(&axonpb.KeyValue{ModRevision: rev, Deleted: true}))
	t.pending = append(t.pending, &axonpb.Change{Delete: true, Key: key, Kv: &axonpb.KeyValue{ModRevision: rev}})
	return t.maybeFlush()
}

func (t *WriteTxn) begin(rev int64) {
	if rev != t.rev {
		t.endRevision()
		t.rev, t.chunk, t.puts = rev, 0, nil
	}
}

// EndRevision closes the revision in progress: its record goes out.
func (t *WriteTxn) EndRevision() { t.endRevision() }

func (t *WriteTxn) endRevision() {
	if len(t.pending) == 0 {
		return
	}
	rec := &axonpb.RevisionRecord{Revision: t.rev, Changes: t.pending}
	t.batch.Put(RevisionChunkKey(t.rev, t.chunk), EncodeRecord(rec))
	t.chunk++
	t.pending = nil
}

// PutLease stores a lease record.
func (t *WriteTxn) PutLease(l *axonpb.Lease) {
	b, err := proto.Marshal(l)
	if err != nil {
		panic(err) // a well-formed message always marshals
	}
	t.batch.Put(LeaseKey(l.Id), b)
}

// DeleteLease removes a lease record.
func (t *WriteTxn) DeleteLease(id int64) { t.batch.Delete(LeaseKey(id)) }

// SetCompacted records the compacted revision.
func (t *WriteTxn) SetCompacted(rev int64) { t.batch.Put(MetaCompacted, EncodeRev(rev)) }

// maybeFlush writes the batch ahead of Commit once it is past the limits,
// ending a record chunk so the rollback at open can find every entry.
func (t *WriteTxn) maybeFlush() error {
	if t.batch.Len() < t.opts.FlushOps && t.batch.Bytes() < t.opts.FlushBytes {
		return nil
	}
	t.endRevision()
	if err := t.write(); err != nil {
		return err
	}
	t.flushed = true
	return nil
}

func (t *WriteTxn) write() error {
	if t.opts.Fence != nil {
		t.batch.Conditions = append(t.batch.Conditions, t.opts.Fence()...)
	}
	err := t.be.Commit(&t.batch)
	t.batch = backend.Batch{}
	return err
}

// Commit makes every revision up to rev visible at once and durable: the
// last batch moves m/revision. Without key changes (a lease grant, a
// compaction) rev may equal the current revision.
func (t *WriteTxn) Commit(rev int64, moved bool) error {
	t.endRevision()
	if moved {
		t.batch.Put(MetaRevision, EncodeRev(rev))
	}
	if t.batch.Len() == 0 {
		return nil
	}
	return t.write()
}

// Flushed reports whether batches of this group already reached the
// backend ahead of Commit.
func (t *WriteTxn) Flushed() bool { return t.flushed }
