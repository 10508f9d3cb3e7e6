package mvcc

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"slices"
	"sync"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/axon-kv/axon/backend"
	"github.com/axon-kv/axon/proto/axonpb"
)

// HashKV reproduces etcd's HashKV bit for bit, because etcd's corruption
// checks and `etcdctl endpoint hashkv` compare the number across members:
// etcd feeds a CRC-32C with the name of its key bucket and then with every
// (bucket key, value) pair of that bucket in bucket order. A bucket key is
// the change's revision, main and sub, big-endian with a '_' between and a
// trailing 't' for a deletion; the value is the marshalled mvccpb.KeyValue
// (a deletion stores only the key). Axon keeps the same changes in another
// shape, so they are rebuilt here:
//
//   - sub is the change's position in its revision record, since etcd
//     numbers a transaction's puts and deleted keys in execution order
//     and both stores apply them in the same order;
//   - at or below the compacted revision etcd keeps, for each key alive at
//     the hashed revision, only its state there; if no key is alive it
//     hashes whatever its compaction left instead (each key alive at the
//     compacted revision). A deletion at exactly the compacted revision is
//     never hashed: etcd releases disagree on whether compaction keeps it.
//
// Revision records below the compacted revision are removed by
// compaction, so the sub of a state surviving there is written into the
// state itself first (see persistSubs).

// castagnoli is the CRC etcd's hashes use.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// hashBucketName is etcd's key bucket name, the first bytes etcd hashes.
var hashBucketName = []byte("key")

// KVHash is an etcd HashKV answer.
type KVHash struct {
	Hash uint32
	// CompactRevision is etcd's: -1 when never compacted.
	CompactRevision int64
	// Revision is the revision hashed.
	Revision int64
	// Current is the store's revision when hashed.
	Current int64
}

// etcdRevKey is etcd's bucket key of change sub of main revision main.
func etcdRevKey(main, sub int64, tombstone bool) []byte {
	b := make([]byte, 0, 18)
	b = binary.BigEndian.AppendUint64(b, uint64(main))
	b = append(b, '_')
	b = binary.BigEndian.AppendUint64(b, uint64(sub))
	if tombstone {
		b = append(b, 't')
	}
	return b
}

// etcdValue is etcd's stored value of a put: marshalled with the same
// library and message etcd's store uses, so the bytes agree.
func etcdValue(key []byte, kv *axonpb.KeyValue) ([]byte, error) {
	return proto.Marshal(ToEtcd(key, kv))
}

func etcdTombstone(key []byte) ([]byte, error) {
	return proto.Marshal(&mvccpb.KeyValue{Key: key})
}

// survivor is a key state at or below the compacted revision that the hash
// may include.
type survivor struct {
	key      []byte
	main     int64
	sub      int64
	hasSub   bool
	aliveRev bool // the key is alive at the hashed revision with this state
	aliveC   bool // the state is the key's live state at the compacted revision
}

// HashKV computes etcd's HashKV at rev (0: current) over the snapshot. A
// revision whose compaction hash is in cache is answered from it first, as
// etcd does, even below the compacted revision.
func (r Reader) HashKV(rev int64, cache *HashCache) (KVHash, error) {
	cur, comp, err := r.Meta()
	if err != nil {
		return KVHash{}, err
	}
	if h, ok := cache.Get(rev); ok {
		h.Current = cur
		return h, nil
	}
	// etcd checks compaction first and lets the compacted revision itself
	// through, unlike a Range.
	if rev > 0 && rev < comp {
		return KVHash{}, ErrCompacted
	}
	if rev > cur {
		return KVHash{}, ErrFutureRev
	}
	if rev == 0 {
		rev = cur
	}
	compactRev := comp
	if comp == 0 {
		compactRev = -1 // etcd's value before any compaction
	}
	h := crc32.New(castagnoli)
	h.Write(hashBucketName)
	if rev > 0 {
		if err := r.hashRange(h, rev, comp, false); err != nil {
			return KVHash{}, err
		}
	}
	return KVHash{Hash: h.Sum32(), CompactRevision: compactRev, Revision: rev, Current: cur}, nil
}

// hashRange hashes what etcd holds up to rev when compacted at comp.
func (r Reader) hashRange(h hash.Hash32, rev, comp int64, compacting bool) error {
	if comp > 0 {
		if err := r.hashCompacted(h, rev, comp, compacting); err != nil {
			return err
		}
	}
	return r.hashRecords(h, max(comp+1, 1), rev)
}

// CompactionHash is the hash etcd computes while it compacts at rev, and
// then answers HashKV(rev) with: the revisions since the previous
// compaction over what that one kept, with the previous compacted revision
// as CompactRevision. It must be called before CompactHistory(rev) removes
// anything. The previous compaction is the last finished one: etcd too
// only keeps this hash when the previous compaction had finished.
func (r Reader) CompactionHash(rev int64) (KVHash, error) {
	cur, _, err := r.Meta()
	if err != nil {
		return KVHash{}, err
	}
	b, err := r.get(MetaCompactDone)
	if err != nil {
		return KVHash{}, err
	}
	prev := DecodeRev(b)
	compactRev := prev
	if prev == 0 {
		compactRev = -1
	}
	h := crc32.New(castagnoli)
	h.Write(hashBucketName)
	if err := r.hashRange(h, rev, prev, true); err != nil {
		return KVHash{}, err
	}
	return KVHash{Hash: h.Sum32(), CompactRevision: compactRev, Revision: rev, Current: cur}, nil
}

// hashCacheSize is how many compaction hashes etcd remembers.
const hashCacheSize = 10

// HashCache holds the hashes of the latest compactions, in memory like
// etcd's: after a restart HashKV computes them afresh, as etcd does.
type HashCache struct {
	mu     sync.Mutex
	hashes []KVHash // by revision
}

// Store adds a compaction hash, forgetting the oldest beyond etcd's count.
func (c *HashCache) Store(h KVHash) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hashes = append(c.hashes, h)
	slices.SortFunc(c.hashes, func(a, b KVHash) int { return cmp.Compare(a.Revision, b.Revision) })
	if len(c.hashes) > hashCacheSize {
		c.hashes = c.hashes[len(c.hashes)-hashCacheSize:]
	}
}

// Get returns the compaction hash of rev; a nil cache holds none.
func (c *HashCache) Get(rev int64) (KVHash, bool) {
	if c == nil {
		return KVHash{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, h := range c.hashes {
		if h.Revision == rev {
			return h, true
		}
	}
	return KVHash{}, false
}

// hashCompacted hashes the states at or below comp that etcd would, in
// (main, sub) order. It decides from the history alone, never from what
// Axon's physical compaction already removed, so the answer does not
// depend on its progress. compacting selects etcd's filter while it
// compacts at rev, which also counts a key deleted at exactly rev.
func (r Reader) hashCompacted(h hash.Hash32, rev, comp int64, compacting bool) error {
	var (
		all      []survivor
		anyAlive bool
		cur      []byte // history prefix of the key being read
		atRev    survivor
		atRevOK  bool
		atC      survivor
		atCOK    bool
	)
	flush := func() {
		if atRevOK && (atRev.aliveRev || compacting && atRev.main == rev) {
			anyAlive = true
		}
		if atCOK && atC.aliveC {
			if atRevOK && atRev.aliveRev && atRev.main == atC.main {
				atC.aliveRev = true
			}
			all = append(all, atC)
		}
		atRevOK, atCOK = false, false
	}
	err := r.Snap.Scan([]byte{prefixHistory}, []byte{prefixHistory + 1}, backend.ScanOptions{}, func(k, v []byte) error {
		p := k[:len(k)-8]
		if !bytes.Equal(p, cur) {
			flush()
			cur = append(cur[:0], p...)
		}
		m := int64(binary.BigEndian.Uint64(k[len(k)-8:]))
		if m > rev {
			return nil
		}
		st, err := decodeMeta(v)
		if err != nil {
			return fmt.Errorf("mvcc: history entry %x: %w", k, err)
		}
		s := survivor{main: m, sub: st.Sub, hasSub: st.HasSub}
		atRev, atRevOK = s, true
		atRev.aliveRev = !st.Deleted
		if m <= comp {
			atC, atCOK = s, true
			atC.aliveC = !st.Deleted
			atC.key = userKeyOfHistoryPrefix(p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	flush()
	// With some key alive at rev etcd filters by those keys' states there;
	// with none its filter is empty and it hashes every state compaction
	// kept.
	keep := all[:0]
	for _, s := range all {
		if !anyAlive || s.aliveRev {
			keep = append(keep, s)
		}
	}
	done, err := r.get(MetaCompactDone)
	if err != nil {
		return err
	}
	if err := r.fillSubs(keep, DecodeRev(done)); err != nil {
		return err
	}
	slices.SortFunc(keep, func(a, b survivor) int {
		if a.main != b.main {
			return int(a.main - b.main)
		}
		return int(a.sub - b.sub)
	})
	for _, s := range keep {
		kv, err := r.At(s.key, s.main)
		if err != nil {
			return err
		}
		v, err := etcdValue(s.key, kv)
		if err != nil {
			return err
		}
		h.Write(etcdRevKey(s.main, s.sub, false))
		h.Write(v)
	}
	return nil
}

// fillSubs finds the sub of states that do not carry one: their revision
// record still exists unless compaction removed it, and compaction writes
// every non-zero sub into the state before removing a record. Records
// below done, the last finished compaction, are all gone: not looking
// them up saves a read per key.
func (r Reader) fillSubs(ss []survivor, done int64) error {
	byRev := map[int64][]int{}
	for i, s := range ss {
		if !s.hasSub && s.main >= done {
			byRev[s.main] = append(byRev[s.main], i)
		}
	}
	for m, idx := range byRev {
		err := r.Records(m, m, func(rec *axonpb.RevisionRecord) error {
			if len(rec.Changes) < 2 {
				return nil // a lone change has sub 0
			}
			for _, i := range idx {
				for pos, c := range rec.Changes {
					if !c.Delete && bytes.Equal(c.Key, ss[i].key) {
						ss[i].sub = int64(pos)
						break
					}
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// hashRecords hashes every change of revisions from..to, all of which
// etcd still holds above the compacted revision.
func (r Reader) hashRecords(h hash.Hash32, from, to int64) error {
	return r.Records(from, to, func(rec *axonpb.RevisionRecord) error {
		for i, c := range rec.Changes {
			var v []byte
			var err error
			if c.Delete {
				v, err = etcdTombstone(c.Key)
			} else {
				var kv *axonpb.KeyValue
				kv, err = r.At(c.Key, rec.Revision)
				if err == nil && kv.Deleted {
					// Deleted later in the same revision: the history entry
					// holds the deletion, the record holds this put whole.
					kv = c.Kv
				}
				if err == nil {
					v, err = etcdValue(c.Key, kv)
				}
			}
			if err != nil {
				return err
			}
			h.Write(etcdRevKey(rec.Revision, int64(i), c.Delete))
			h.Write(v)
		}
		return nil
	})
}

// subField is the field number of the sub-revision appended to a stored
// state (axonpb.KeyValue has fields 1-6; older readers skip it).
const subField = 7

// appendSub adds sub to an encoded state.
func appendSub(b []byte, sub int64) []byte {
	b = protowire.AppendTag(b, subField, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(sub))
}

// persistSubs writes into each state that outlives compaction at rev its
// sub-revision, read from the revision records below rev that compaction
// is about to remove: etcd's HashKV needs it and nothing else keeps it.
// snap must be taken after the history below rev was trimmed, so every
// state still there survives. Each rewrite is conditioned on the entry
// being unchanged, so a stale compactor cannot bring back a state another
// one already removed.
//
// A conditional commit is synced and runs alone, holding up the writer's
// commits, so rewrites go out subBatch at a time; a batch whose condition
// fails is retried entry by entry, so the others still get their sub.
func persistSubs(be backend.Backend, snap backend.Snapshot, rev int64) error {
	r := Reader{Snap: snap}
	var (
		pending []subRewrite
		size    int
	)
	flush := func() error {
		err := commitSubs(be, pending)
		pending, size = pending[:0], 0
		return err
	}
	err := r.Records(1, rev-1, func(rec *axonpb.RevisionRecord) error {
		for i, c := range rec.Changes {
			if i == 0 || c.Delete {
				continue
			}
			hk := HistoryKey(c.Key, rec.Revision)
			old, err := snap.Get(hk)
			if errors.Is(err, backend.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			st, err := decodeMeta(old)
			if err != nil {
				return fmt.Errorf("mvcc: history entry %x: %w", hk, err)
			}
			if st.Deleted || st.HasSub {
				continue
			}
			pending = append(pending, subRewrite{key: hk, old: old, sub: int64(i)})
			size += len(hk) + len(old)
			if len(pending) >= subBatch || size >= subBatchBytes {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return flush()
}

// subBatch and subBatchBytes bound the sub rewrites that share one
// commit: the batch carries each state whole, and stays under 1 MiB as the
// writer's own batches do (WriteOptions), within what one engine
// transaction takes.
const (
	subBatch      = 256
	subBatchBytes = 512 << 10
)

// subRewrite is one state to rewrite with its sub, if still old.
type subRewrite struct {
	key, old []byte
	sub      int64
}

// commitSubs commits rewrites in one conditional batch, or one by one if
// some state changed (a condition failed): those are skipped.
func commitSubs(be backend.Backend, ws []subRewrite) error {
	if len(ws) == 0 {
		return nil
	}
	one := func(ws []subRewrite) error {
		var b backend.Batch
		for _, w := range ws {
			b.Conditions = append(b.Conditions, backend.Condition{Key: w.key, Value: w.old})
			b.Put(w.key, appendSub(slices.Clone(w.old), w.sub))
		}
		return be.Commit(&b)
	}
	err := one(ws)
	if !errors.Is(err, backend.ErrConditionFailed) {
		return err
	}
	if len(ws) == 1 {
		return nil // changed since: another compactor's business
	}
	for i := range ws {
		if err := one(ws[i : i+1]); err != nil && !errors.Is(err, backend.ErrConditionFailed) {
			return err
		}
	}
	return nil
}

// Hash is a CRC-32C of every key and value of the snapshot in key order
// but the leader record, which changes with every lease renewal. It stands
// in for etcd's Hash of its whole bbolt file, whose bytes Axon does not
// have: it is only comparable between Axon members reading the same
// store, never with etcd.
func (r Reader) Hash() (uint32, int64, error) {
	cur, _, err := r.Meta()
	if err != nil {
		return 0, 0, err
	}
	h := crc32.New(castagnoli)
	err = r.Snap.Scan(nil, nil, backend.ScanOptions{}, func(k, v []byte) error {
		if bytes.Equal(k, MetaLeader) {
			return nil
		}
		h.Write(k)
		h.Write(v)
		return nil
	})
	return h.Sum32(), cur, err
}
