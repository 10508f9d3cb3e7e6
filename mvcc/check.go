package mvcc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	"google.golang.org/protobuf/proto"

	"github.com/axon-kv/axon/backend"
	"github.com/axon-kv/axon/proto/axonpb"
)

// ProblemKind classifies what Check found wrong, so callers (and tests)
// need not match on message text.
type ProblemKind string

// The kinds of problems Check reports.
const (
	ProblemFormat         ProblemKind = "format"          // storage format missing, unknown or unreadable
	ProblemMeta           ProblemKind = "meta"            // m/ records missing, malformed or out of order
	ProblemUnknownKey     ProblemKind = "unknown-key"     // a key outside the layout
	ProblemRecord         ProblemKind = "record"          // a revision record that does not decode or names another revision
	ProblemChunks         ProblemKind = "chunks"          // a revision's record chunks are not 0, 1, 2, ...
	ProblemMissingRecord  ProblemKind = "missing-record"  // a committed revision without a record
	ProblemStaleRecord    ProblemKind = "stale-record"    // a record physical compaction should have removed
	ProblemMissingHistory ProblemKind = "missing-history" // a recorded change without its history entry
	ProblemMismatch       ProblemKind = "mismatch"        // a history entry disagrees with its record or its key
	ProblemUnlisted       ProblemKind = "unlisted"        // a history entry its revision's record does not list
	ProblemVersion        ProblemKind = "version"         // versions or create revisions of a key do not follow
	ProblemUncompacted    ProblemKind = "uncompacted"     // history physical compaction should have removed
	ProblemFuture         ProblemKind = "future"          // a history entry above m/revision no rollback will remove
	ProblemIndex          ProblemKind = "index"           // LoadIndex disagrees with the history
	ProblemLease          ProblemKind = "lease"           // a lease record that does not decode, or a key on a missing lease
)

// Problem is one inconsistency.
type Problem struct {
	Kind ProblemKind
	Msg  string
}

func (p Problem) String() string { return string(p.Kind) + ": " + p.Msg }

// CheckReport is what Check found.
type CheckReport struct {
	Format                           string // m/format as stored
	Revision, Compacted, CompactDone int64
	Records                          int64 // committed revisions with a record
	Chunks                           int64 // record chunks, unfinished ones included
	Changes                          int64 // distinct (revision, key) changes of committed records
	History                          int64 // history entries
	Keys                             int64 // keys with history at or below Revision
	LiveKeys                         int64 // keys alive at Revision
	Leases                           int64
	LeasedKeys                       int64 // live keys attached to a lease
	// Unfinished lists revisions above m/revision with record chunks: a
	// crash in the middle of a large revision. Open rolls them back; they
	// are not problems.
	Unfinished []int64
	// Notes are conditions worth knowing that open handles by itself.
	Notes []string
	// Problems are the first MaxProblems inconsistencies; ProblemCount
	// counts them all.
	Problems     []Problem
	ProblemCount int64

	maxProblems int
}

// OK reports whether nothing inconsistent was found.
func (r *CheckReport) OK() bool { return r.ProblemCount == 0 }

// Has reports whether a problem of kind was found (among those kept).
func (r *CheckReport) Has(kind ProblemKind) bool {
	for _, p := range r.Problems {
		if p.Kind == kind {
			return true
		}
	}
	return false
}

func (r *CheckReport) problem(kind ProblemKind, format string, args ...any) {
	r.ProblemCount++
	if len(r.Problems) < r.maxProblems {
		r.Problems = append(r.Problems, Problem{Kind: kind, Msg: fmt.Sprintf(format, args...)})
	}
}

// AddProblem records a problem found outside the store's own records (the
// data dir's witness, for one).
func (r *CheckReport) AddProblem(kind ProblemKind, format string, args ...any) {
	r.problem(kind, format, args...)
}

func (r *CheckReport) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

// CheckProgress is passed to CheckOptions.Progress.
type CheckProgress struct {
	Stage   string // what is being read
	Entries int64  // backend entries read so far, all stages
}

// CheckOptions tune Check.
type CheckOptions struct {
	// MaxProblems bounds the problems kept in the report (default 100);
	// a damaged store can have millions, and the first ones tell the story.
	MaxProblems int
	// Progress, if set, is called at every stage and every ProgressEvery
	// entries read.
	Progress      func(CheckProgress)
	ProgressEvery int64 // default 100000
}

// Check verifies a whole store offline: meta records, revision records,
// history entries, leases, and the index LoadIndex builds, against each
// other and against what the writer, Recover and CompactHistory guarantee.
// It only reads. Inconsistencies go into the report; the error is for
// failures to read at all.
func Check(be backend.Backend, opts CheckOptions) (*CheckReport, error) {
	if opts.MaxProblems <= 0 {
		opts.MaxProblems = 100
	}
	if opts.ProgressEvery <= 0 {
		opts.ProgressEvery = 100000
	}
	snap, err := be.Snapshot()
	if err != nil {
		return nil, err
	}
	defer snap.Close()
	c := &checker{be: be, snap: snap, opts: opts, r: &CheckReport{maxProblems: opts.MaxProblems}}
	if err := c.run(); err != nil {
		return c.r, err
	}
	return c.r, nil
}

type checker struct {
	be   backend.Backend
	snap backend.Snapshot
	opts CheckOptions
	r    *CheckReport

	entries int64 // read so far, for progress
	stage   string

	cur        int64 // m/revision, 1 when absent (as Reader.Meta)
	lostCommit bool  // m/revision is absent from a store that holds revisions
	compact    int64 // m/compacted
	done       int64 // m/compact-done
	recAtDone  bool  // the record of revision done survived (it does unless InitStore made the store)

	// history keys of unfinished revisions: entries above m/revision that
	// Recover will delete
	unfinished map[string]bool
	leases     map[int64]bool
	// listable counts history entries their revision's record must list.
	listable int64
}

func (c *checker) progress(stage string) {
	c.stage = stage
	if c.opts.Progress != nil {
		c.opts.Progress(CheckProgress{Stage: stage, Entries: c.entries})
	}
}

func (c *checker) tick() {
	c.entries++
	if c.opts.Progress != nil && c.entries%c.opts.ProgressEvery == 0 {
		c.opts.Progress(CheckProgress{Stage: c.stage, Entries: c.entries})
	}
}

func (c *checker) get(k []byte) ([]byte, error) {
	v, err := c.snap.Get(k)
	if errors.Is(err, backend.ErrNotFound) {
		return nil, nil
	}
	return v, err
}

func (c *checker) run() error {
	c.progress("meta")
	empty, err := c.checkKeyspace()
	if err != nil {
		return err
	}
	if empty {
		c.r.note("the store holds nothing: a new store")
		return nil
	}
	if ok, err := c.checkMeta(); err != nil || !ok {
		return err // without a readable format nothing else can be interpreted
	}
	c.progress("leases")
	if err := c.checkLeases(); err != nil {
		return err
	}
	c.progress("revision records")
	if err := c.checkRecords(); err != nil {
		return err
	}
	var idx *Index
	if !c.lostCommit { // the index would be of revision 1: nothing to compare
		c.progress("index")
		if idx, err = LoadIndex(c.be); err != nil {
			c.r.problem(ProblemIndex, "open would fail building the index: %v", err)
			idx = nil
		}
	}
	c.progress("history")
	if err := c.checkHistory(idx); err != nil {
		return err
	}
	if c.listable > c.r.Changes {
		c.progress("unlisted history")
		if err := c.findUnlisted(); err != nil {
			return err
		}
	}
	c.progress("done")
	return nil
}

// checkKeyspace reports keys outside the layout's prefixes and whether
// the store is empty.
func (c *checker) checkKeyspace() (empty bool, err error) {
	empty = true
	known := map[byte]bool{prefixHistory: true, prefixRevision: true, prefixLease: true, prefixMeta: true}
	// Only the gaps between known prefixes are walked, so this costs a
	// few seeks, not a pass over the data.
	var start []byte
	for _, p := range []byte{prefixHistory, prefixLease, prefixMeta, prefixRevision, 0} {
		var end []byte
		if p != 0 {
			end = []byte{p}
		}
		err := c.snap.Scan(start, end, backend.ScanOptions{KeysOnly: true, Limit: 10}, func(k, _ []byte) error {
			if len(k) > 0 && k[0] == prefixLatestV1 {
				c.r.problem(ProblemFormat, "latest-state key %q of storage format 1", k)
			} else {
				c.r.problem(ProblemUnknownKey, "key %q is not part of storage format %d", k, FormatVersion)
			}
			empty = false
			return nil
		})
		if err != nil {
			return false, err
		}
		if p != 0 {
			start = []byte{p + 1}
		}
	}
	for p := range known {
		err := c.snap.Scan([]byte{p}, []byte{p + 1}, backend.ScanOptions{KeysOnly: true, Limit: 1}, func(_, _ []byte) error {
			empty = false
			return nil
		})
		if err != nil {
			return false, err
		}
	}
	return empty, nil
}

// checkMeta reads and checks the m/ records; ok is false when the format
// is not one this code can check.
func (c *checker) checkMeta() (ok bool, err error) {
	f, err := c.get(MetaFormat)
	if err != nil {
		return false, err
	}
	c.r.Format = string(f)
	if f == nil {
		c.r.problem(ProblemFormat, "m/format is missing (storage format 1, or the record was lost); this axon reads format %d", FormatVersion)
		return false, nil
	}
	if v, err := strconv.Atoi(string(f)); err != nil || v != FormatVersion {
		c.r.problem(ProblemFormat, "m/format is %q, this axon reads format %d", f, FormatVersion)
		return false, nil
	}
	rev := func(k []byte) (int64, bool, error) {
		b, err := c.get(k)
		if err != nil || b == nil {
			return 0, false, err
		}
		if len(b) != 8 {
			c.r.problem(ProblemMeta, "%s holds %d bytes, not an 8-byte revision", k, len(b))
			return 0, true, nil
		}
		return DecodeRev(b), true, nil
	}
	cur, haveCur, err := rev(MetaRevision)
	if err != nil {
		return false, err
	}
	if c.compact, _, err = rev(MetaCompacted); err != nil {
		return false, err
	}
	if c.done, _, err = rev(MetaCompactDone); err != nil {
		return false, err
	}
	c.r.Revision, c.r.Compacted, c.r.CompactDone = cur, c.compact, c.done
	c.cur = cur
	if !haveCur {
		// A store that never committed a key change has no m/revision:
		// it is at revision 1 (see Reader.Meta). Anything recorded, or a
		// compaction, means the commit point was lost.
		c.cur = 1
		var found []string
		for _, p := range []byte{prefixHistory, prefixRevision} {
			err := c.snap.Scan([]byte{p}, []byte{p + 1}, backend.ScanOptions{KeysOnly: true, Limit: 1}, func(k, _ []byte) error {
				found = append(found, fmt.Sprintf("%x", k))
				return nil
			})
			if err != nil {
				return false, err
			}
		}
		if len(found) > 0 || c.compact > 0 {
			// The rest is checked up to the newest record, or every
			// entry would be reported as above the commit point.
			err := c.snap.Scan([]byte{prefixRevision}, []byte{prefixRevision + 1}, backend.ScanOptions{KeysOnly: true, Reverse: true, Limit: 1}, func(k, _ []byte) error {
				if len(k) == 13 {
					c.cur = max(c.cur, RevisionFromKey(k))
				}
				return nil
			})
			if err != nil {
				return false, err
			}
			c.cur = max(c.cur, c.compact)
			c.lostCommit = true
			c.r.problem(ProblemMeta, "m/revision is missing but the store holds revisions (first keys %v, compacted %d): the commit point is lost "+
				"and open would serve an empty store at revision 1; checking up to revision %d, the newest record",
				found, c.compact, c.cur)
		}
	} else if cur < 1 {
		c.r.problem(ProblemMeta, "m/revision is %d; revisions start at 1", cur)
	}
	if c.compact > c.cur {
		c.r.problem(ProblemMeta, "compacted revision %d is above the current revision %d", c.compact, c.cur)
	}
	if c.done > c.compact {
		c.r.problem(ProblemMeta, "compact-done %d is above the compacted revision %d: physical compaction ran past a compaction that was never recorded", c.done, c.compact)
	}
	if c.compact > c.done {
		c.r.note("physical compaction to revision %d is unfinished (done up to %d); it resumes at the next start", c.compact, c.done)
	}
	if b, err := c.get(MetaLeader); err != nil {
		return false, err
	} else if b != nil {
		if err := proto.Unmarshal(b, &axonpb.LeaderRecord{}); err != nil {
			c.r.problem(ProblemMeta, "m/leader does not decode: %v", err)
		}
	}
	if b, err := c.get(MetaLeaderTerm); err != nil {
		return false, err
	} else if b != nil && len(b) != 8 {
		c.r.problem(ProblemMeta, "m/leader-term holds %d bytes, not an 8-byte term", len(b))
	}
	known := map[string]bool{}
	for _, k := range [][]byte{MetaFormat, MetaRevision, MetaCompacted, MetaCompactDone, MetaLeader, MetaLeaderTerm, MetaStoreID} {
		known[string(k)] = true
	}
	err = c.snap.Scan([]byte{prefixMeta}, []byte{prefixMeta + 1}, backend.ScanOptions{KeysOnly: true}, func(k, _ []byte) error {
		if !known[string(k)] {
			c.r.problem(ProblemUnknownKey, "unknown meta key %q", k)
		}
		return nil
	})
	return true, err
}

func (c *checker) checkLeases() error {
	c.leases = map[int64]bool{}
	start, end := LeasePrefix()
	return c.snap.Scan(start, end, backend.ScanOptions{}, func(k, v []byte) error {
		c.tick()
		if len(k) != 9 {
			c.r.problem(ProblemLease, "malformed lease key %x", k)
			return nil
		}
		id := int64(binary.BigEndian.Uint64(k[1:]))
		var l axonpb.Lease
		if err := proto.Unmarshal(v, &l); err != nil {
			c.r.problem(ProblemLease, "lease %x does not decode: %v", id, err)
			return nil
		}
		if l.Id != id {
			c.r.problem(ProblemLease, "lease record under id %x holds id %x", id, l.Id)
		}
		c.leases[id] = true
		c.r.Leases++
		return nil
	})
}

// checkRecords walks the revision records in order: chunks, gaps, and
// each recorded change against its history entry.
func (c *checker) checkRecords() error {
	c.unfinished = map[string]bool{}
	// Physical compaction at done removes the records below it; the
	// revisions after it must all be there. Revision 1 never has one
	// (a new store starts there), nor does the revision InitStore begins
	// at.
	next := max(c.done, 1) + 1
	var (
		rev       int64 = -1
		chunk     uint32
		final     map[string]*axonpb.Change // each key's last change in rev
		finalKeys []string                  // in first-change order, for stable reports
	)
	missing := func(from, to int64) {
		if from == to {
			c.r.problem(ProblemMissingRecord, "revision %d has no record", from)
		} else {
			c.r.problem(ProblemMissingRecord, "revisions %d to %d have no records", from, to)
		}
	}
	finish := func() error {
		if rev < 0 {
			return nil
		}
		// Unfinished records are Recover's; a stale one's history may
		// be compacted away, and counting it would hide unlisted entries.
		if rev > c.cur || rev < c.done {
			return nil
		}
		for _, k := range finalKeys {
			if err := c.checkChange(rev, final[k]); err != nil {
				return err
			}
		}
		c.r.Changes += int64(len(finalKeys))
		return nil
	}
	err := c.snap.Scan([]byte{prefixRevision}, []byte{prefixRevision + 1}, backend.ScanOptions{}, func(k, v []byte) error {
		c.tick()
		c.r.Chunks++
		if len(k) != 1+8+4 {
			c.r.problem(ProblemRecord, "malformed revision record key %x", k)
			return nil
		}
		r := RevisionFromKey(k)
		n := binary.BigEndian.Uint32(k[9:])
		if r != rev {
			if err := finish(); err != nil {
				return err
			}
			rev, chunk, final, finalKeys = r, 0, map[string]*axonpb.Change{}, nil
			switch {
			case r > c.cur:
				c.r.Unfinished = append(c.r.Unfinished, r)
			case r < c.done:
				c.r.problem(ProblemStaleRecord, "record of revision %d is below compact-done %d: physical compaction removes it", r, c.done)
			default:
				c.r.Records++
				if r == c.done {
					c.recAtDone = true
				}
				if r >= next {
					if r > next {
						missing(next, r-1)
					}
					next = r + 1
				}
			}
		}
		switch {
		case n != chunk && chunk == 0:
			c.r.problem(ProblemChunks, "revision %d: its record starts at chunk %d, chunk 0 is missing", r, n)
		case n != chunk:
			c.r.problem(ProblemChunks, "revision %d: chunk %d follows chunk %d", r, n, chunk-1)
		}
		chunk = n + 1
		rec, err := DecodeRecord(v)
		if err != nil {
			c.r.problem(ProblemRecord, "revision %d chunk %d does not decode: %v", r, n, err)
			return nil
		}
		if rec.Revision != r {
			c.r.problem(ProblemRecord, "revision %d chunk %d holds the record of revision %d", r, n, rec.Revision)
		}
		if len(rec.Changes) == 0 {
			c.r.problem(ProblemRecord, "revision %d chunk %d lists no changes", r, n)
		}
		for _, ch := range rec.Changes {
			if r > c.cur {
				c.unfinished[string(HistoryKey(ch.Key, r))] = true
				continue
			}
			if _, seen := final[string(ch.Key)]; !seen {
				finalKeys = append(finalKeys, string(ch.Key))
			}
			final[string(ch.Key)] = ch
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := finish(); err != nil {
		return err
	}
	if next <= c.cur {
		missing(next, c.cur)
	}
	if len(c.r.Unfinished) > 0 {
		u := c.r.Unfinished
		list := fmt.Sprint(u)
		if len(u) > 5 {
			list = fmt.Sprintf("%v ... %d (%d revisions)", u[:3], u[len(u)-1], len(u))
		}
		c.r.note("revisions %s above m/revision %d are unfinished (a crash in the middle of a large revision): open rolls them back",
			list, c.cur)
	}
	return nil
}

// checkChange checks the history entry a revision's last change of a key
// left.
func (c *checker) checkChange(rev int64, ch *axonpb.Change) error {
	b, err := c.get(HistoryKey(ch.Key, rev))
	if err != nil {
		return err
	}
	if b == nil {
		c.r.problem(ProblemMissingHistory, "revision %d changed %q but its history entry is missing", rev, ch.Key)
		return nil
	}
	kv, err := decodeMeta(b)
	if err != nil {
		return nil // reported by the history walk
	}
	want := ch.GetKv()
	if want.GetModRevision() != rev {
		c.r.problem(ProblemRecord, "revision %d: the change of %q has mod_revision %d", rev, ch.Key, want.GetModRevision())
	}
	if ch.Delete {
		// Deleted and created again in the same revision stores only
		// the new state, which then begins its generation at rev.
		if !kv.Deleted && !(kv.CreateRevision == rev && kv.Version == 1) {
			c.r.problem(ProblemMismatch, "revision %d deleted %q but its history entry is not a tombstone", rev, ch.Key)
		}
		return nil
	}
	switch {
	case kv.Deleted:
		c.r.problem(ProblemMismatch, "revision %d put %q but its history entry is a tombstone", rev, ch.Key)
	case kv.ModRevision != rev || kv.CreateRevision != want.GetCreateRevision() ||
		kv.Version != want.GetVersion() || kv.Lease != want.GetLease():
		c.r.problem(ProblemMismatch, "revision %d put %q with mod/create/version/lease %d/%d/%d/%x, its history entry holds %d/%d/%d/%x",
			rev, ch.Key, rev, want.GetCreateRevision(), want.GetVersion(), want.GetLease(),
			kv.ModRevision, kv.CreateRevision, kv.Version, kv.Lease)
	}
	return nil
}

// keyState follows one key through its history entries.
type keyState struct {
	key       []byte
	prefix    []byte
	n         int   // entries at or below cur
	belowDone int   // entries at or below compact-done
	last      int64 // newest revision at or below cur
	alive     bool
	create    int64
	ver       int64
	lease     int64
}

func (c *checker) checkHistory(idx *Index) error {
	var k *keyState
	// Physical compaction may have removed a generation's first revisions
	// up to the compacted revision (compact-done, or further when it was
	// interrupted), never above it.
	trimmed := max(c.compact, c.done)
	finish := func() {
		if k == nil || k.n == 0 {
			return
		}
		c.r.Keys++
		if k.alive {
			c.r.LiveKeys++
			if k.lease != 0 {
				c.r.LeasedKeys++
				if !c.leases[k.lease] {
					// Revoking a lease deletes its keys in the same
					// revision, as etcd does, so a live key on a lease
					// that is gone missed its deletion.
					c.r.problem(ProblemLease, "key %q (revision %d) is attached to lease %x, which is not stored: its revoke did not delete the key", k.key, k.last, k.lease)
				}
			}
		}
		if idx == nil {
			return
		}
		e, ok := idx.Get(k.key, c.cur)
		switch {
		case ok != k.alive:
			c.r.problem(ProblemIndex, "key %q: the index has it alive=%v at revision %d, the history alive=%v", k.key, ok, c.cur, k.alive)
		case ok && (e.Mod != k.last || e.Create != k.create || e.Version != k.ver):
			c.r.problem(ProblemIndex, "key %q: the index has mod/create/version %d/%d/%d, the history %d/%d/%d",
				k.key, e.Mod, e.Create, e.Version, k.last, k.create, k.ver)
		}
	}
	err := c.snap.Scan([]byte{prefixHistory}, []byte{prefixHistory + 1}, backend.ScanOptions{}, func(bk, v []byte) error {
		c.tick()
		c.r.History++
		if len(bk) < 11 || !bytes.Equal(bk[len(bk)-10:len(bk)-8], []byte{0, 1}) {
			c.r.problem(ProblemMismatch, "malformed history key %x", bk)
			return nil
		}
		rev := int64(binary.BigEndian.Uint64(bk[len(bk)-8:]))
		p := bk[:len(bk)-8]
		if k == nil || !bytes.Equal(p, k.prefix) {
			finish()
			k = &keyState{prefix: append([]byte(nil), p...), key: userKeyOfHistoryPrefix(p)}
		}
		if rev > c.cur {
			if !c.unfinished[string(bk)] {
				c.r.problem(ProblemFuture, "history entry of %q at revision %d is above m/revision %d and no unfinished record lists it: open would not roll it back and it would appear when the revision is reached", k.key, rev, c.cur)
			}
			return nil
		}
		kv, err := decodeMeta(v)
		if err != nil {
			c.r.problem(ProblemMismatch, "history entry of %q at revision %d does not decode: %v", k.key, rev, err)
			return nil
		}
		if rev > c.done || (rev == c.done && c.recAtDone) {
			c.listable++
		}
		if kv.ModRevision != rev {
			c.r.problem(ProblemMismatch, "history entry of %q at revision %d holds mod_revision %d", k.key, rev, kv.ModRevision)
		}
		c.followKey(k, rev, &kv, trimmed)
		return nil
	})
	if err != nil {
		return err
	}
	finish()
	if idx != nil {
		if n := int64(idx.Len()); n != c.r.Keys {
			c.r.problem(ProblemIndex, "the index holds %d keys, the history %d", n, c.r.Keys)
		}
		if n := idx.Live(); n != c.r.LiveKeys {
			c.r.problem(ProblemIndex, "the index counts %d live keys, the history %d", n, c.r.LiveKeys)
		}
		var leased int64
		idx.Leased(func(int64, []byte) { leased++ })
		if leased != c.r.LeasedKeys {
			c.r.problem(ProblemIndex, "the index attaches %d keys to leases, the history %d", leased, c.r.LeasedKeys)
		}
	}
	return nil
}

// followKey checks one state of k against the ones before it: a
// generation's versions count up by one from its creation, and only
// physical compaction (at or below trimmed) removes its first states.
func (c *checker) followKey(k *keyState, rev int64, kv *stateMeta, trimmed int64) {
	k.n++
	if c.done > 0 && rev <= c.done {
		k.belowDone++
		switch {
		case kv.Deleted:
			c.r.problem(ProblemUncompacted, "tombstone of %q at revision %d survived the compaction at %d", k.key, rev, c.done)
		case k.belowDone > 1:
			c.r.problem(ProblemUncompacted, "%q keeps more than one state at or below the compaction at %d (revision %d)", k.key, c.done, rev)
		}
	}
	defer func() { k.last = rev }()
	if kv.Deleted {
		if !k.alive && k.n > 1 {
			c.r.problem(ProblemVersion, "%q is deleted at revision %d but was not alive", k.key, rev)
		}
		if k.n == 1 && trimmed == 0 {
			c.r.problem(ProblemVersion, "%q begins with a deletion at revision %d and the store was never compacted", k.key, rev)
		}
		k.alive, k.lease = false, 0
		return
	}
	newGen := !k.alive || kv.CreateRevision == rev
	switch {
	case !newGen:
		if kv.CreateRevision != k.create || kv.Version != k.ver+1 {
			c.r.problem(ProblemVersion, "%q at revision %d has create/version %d/%d after %d/%d at revision %d",
				k.key, rev, kv.CreateRevision, kv.Version, k.create, k.ver, k.last)
		}
	case kv.CreateRevision == rev:
		if kv.Version != 1 {
			c.r.problem(ProblemVersion, "%q is created at revision %d with version %d", k.key, rev, kv.Version)
		}
	case kv.CreateRevision > rev || kv.CreateRevision < 1 || kv.Version < 2:
		c.r.problem(ProblemVersion, "%q at revision %d has create/version %d/%d", k.key, rev, kv.CreateRevision, kv.Version)
	case kv.CreateRevision > trimmed:
		c.r.problem(ProblemVersion, "%q at revision %d was created at %d, but its states from then on are missing (only compaction removes them, and only up to %d)",
			k.key, rev, kv.CreateRevision, trimmed)
	case k.n > 1 && kv.CreateRevision <= k.last:
		c.r.problem(ProblemVersion, "%q at revision %d was created at %d, before its deletion at %d", k.key, rev, kv.CreateRevision, k.last)
	}
	k.alive, k.create, k.ver, k.lease = true, kv.CreateRevision, kv.Version, kv.Lease
}

// findUnlisted names the history entries no record lists. It runs only
// when the counts show some exist, since it holds every listed change in
// memory.
func (c *checker) findUnlisted() error {
	listed := map[string]bool{}
	from := max(c.done, 1)
	err := c.snap.Scan(RevisionKey(from), RevisionKey(c.cur+1), backend.ScanOptions{}, func(k, v []byte) error {
		c.tick()
		rec, err := DecodeRecord(v)
		if err != nil || len(k) != 13 {
			return nil // reported already
		}
		for _, ch := range rec.Changes {
			listed[string(HistoryKey(ch.Key, RevisionFromKey(k)))] = true
		}
		return nil
	})
	if err != nil {
		return err
	}
	return c.snap.Scan([]byte{prefixHistory}, []byte{prefixHistory + 1}, backend.ScanOptions{KeysOnly: true}, func(bk, _ []byte) error {
		c.tick()
		key, rev, ok := SplitHistoryKey(bk)
		if !ok || rev > c.cur || rev < c.done || (rev == c.done && !c.recAtDone) {
			return nil
		}
		if !listed[string(bk)] {
			c.r.problem(ProblemUnlisted, "history entry of %q at revision %d is not listed by that revision's record", key, rev)
		}
		return nil
	})
}
