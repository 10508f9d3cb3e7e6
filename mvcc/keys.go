// Package mvcc owns etcd's multi-version key space on the flat ordered
// keyspace of a backend.Backend, once for every engine: the storage format
// (reads and writes), the in-memory key index, recovery at open and
// physical compaction. No other package builds a backend.Batch; the writer
// (package revision) decides what changes and calls a WriteTxn here.
//
// Layout, format 2 (one byte prefixes, big-endian revisions so byte order
// is numeric order). A value is stored once, in its history entry:
//
//	'h' esc(key) 0x00 0x01 rev       axonpb.KeyValue: key's state at main revision rev (tombstone when deleted)
//	                                 (+ field 7, its sub-revision, once compaction removed its record: hash.go)
//	'r' rev chunk                    axonpb.RevisionRecord: the changes of rev without values, in chunks
//	'l' id                           axonpb.Lease
//	'm' name                         meta: format, current revision, compacted revision, leader record
//
// esc() doubles 0x00 as 0x00 0xff and ends with 0x00 0x01, so history keys
// of different user keys never interleave and still sort by user key.
//
// A revision is committed when m/revision reaches it. A large revision may
// reach the backend in several batches; entries above m/revision belong to
// an unfinished one and are rolled back at open (see Recover). Leases
// attached to keys are not stored apart: the index rebuilds them from the
// keys' states.
package mvcc

import (
	"bytes"
	"encoding/binary"
	"strings"
)

const (
	prefixLatestV1 = 'k' // format 1 only: detected and refused
	prefixHistory  = 'h'
	prefixRevision = 'r'
	prefixLease    = 'l'
	prefixMeta     = 'm'
)

// FormatVersion is the storage format this code reads and writes.
const FormatVersion = 2

var (
	// MetaFormat holds the storage format version (absent in format 1).
	MetaFormat = []byte("m/format")
	// MetaRevision holds the current (last committed) main revision.
	MetaRevision = []byte("m/revision")
	// MetaCompacted holds the compacted revision (reads below it fail).
	MetaCompacted = []byte("m/compacted")
	// MetaCompactDone holds the revision whose physical compaction finished.
	MetaCompactDone = []byte("m/compact-done")
	// MetaStoreID identifies the store: set once when it is created and
	// kept by copies (snapshot restore, migrate), so a data dir's witness
	// can tell it from another store's files.
	MetaStoreID = []byte("m/store-id")
	// MetaLeader holds the leader record (axonpb.LeaderRecord), renewed by
	// the leader.
	MetaLeader = []byte("m/leader")
	// MetaLeaderTerm holds the current leader term alone: it changes only
	// when leadership changes, so every write group can be fenced on it
	// without racing the leader's own renewals.
	MetaLeaderTerm = []byte("m/leader-term")
)

func appendEscaped(b, key []byte) []byte {
	for {
		// Keys rarely hold a zero byte: copy up to the next one at once.
		i := bytes.IndexByte(key, 0)
		if i < 0 {
			return append(b, key...)
		}
		b = append(append(b, key[:i]...), 0, 0xff)
		key = key[i+1:]
	}
}

// AppendHistoryKey appends HistoryKey(key, rev) to b.
func AppendHistoryKey(b []byte, key string, rev int64) []byte {
	b = append(b, prefixHistory)
	if strings.IndexByte(key, 0) < 0 {
		b = append(b, key...)
	} else {
		b = appendEscaped(b, []byte(key))
	}
	b = append(b, 0, 1)
	return binary.BigEndian.AppendUint64(b, uint64(rev))
}

// HistoryPrefix is the prefix of every history entry of key.
func HistoryPrefix(key []byte) []byte {
	b := make([]byte, 0, len(key)+4+8)
	b = append(b, prefixHistory)
	b = appendEscaped(b, key)
	return append(b, 0, 1)
}

// HistoryKey is the backend key of key's state at main revision rev.
func HistoryKey(key []byte, rev int64) []byte {
	return binary.BigEndian.AppendUint64(HistoryPrefix(key), uint64(rev))
}

// HistoryRange maps a user range [start, end) to history bounds.
func HistoryRange(start, end []byte) ([]byte, []byte) {
	switch {
	case len(end) == 0:
		p := HistoryPrefix(start)
		return p, append(HistoryPrefix(start), 0xff)
	case len(end) == 1 && end[0] == 0:
		return appendEscaped([]byte{prefixHistory}, start), []byte{prefixHistory + 1}
	default:
		return appendEscaped([]byte{prefixHistory}, start), appendEscaped([]byte{prefixHistory}, end)
	}
}

// SplitHistoryKey returns the user key and revision of a history key.
func SplitHistoryKey(k []byte) (key []byte, rev int64, ok bool) {
	if len(k) < 1+2+8 || k[0] != prefixHistory {
		return nil, 0, false
	}
	rev = int64(binary.BigEndian.Uint64(k[len(k)-8:]))
	return unescape(k[1 : len(k)-10]), rev, true
}

// userKeyOfHistoryPrefix decodes the user key of a history key stripped of
// its revision.
func userKeyOfHistoryPrefix(p []byte) []byte { return unescape(p[1 : len(p)-2]) }

func unescape(esc []byte) []byte {
	key := make([]byte, 0, len(esc))
	for i := 0; i < len(esc); i++ {
		key = append(key, esc[i])
		if esc[i] == 0 {
			i++ // skip the 0xff that doubles a 0x00
		}
	}
	return key
}

// RevisionKey is the backend key of the first record chunk of main
// revision rev; it also bounds the chunks of rev from below.
func RevisionKey(rev int64) []byte { return RevisionChunkKey(rev, 0) }

// RevisionChunkKey is the backend key of chunk n of the record of rev.
func RevisionChunkKey(rev int64, n uint32) []byte {
	b := binary.BigEndian.AppendUint64([]byte{prefixRevision}, uint64(rev))
	return binary.BigEndian.AppendUint32(b, n)
}

// RevisionFromKey decodes a RevisionChunkKey.
func RevisionFromKey(k []byte) int64 { return int64(binary.BigEndian.Uint64(k[1:9])) }

// LeaseKey is the backend key of a lease record.
func LeaseKey(id int64) []byte {
	return binary.BigEndian.AppendUint64([]byte{prefixLease}, uint64(id))
}

// LeasePrefix bounds all lease records.
func LeasePrefix() ([]byte, []byte) { return []byte{prefixLease}, []byte{prefixLease + 1} }

// EncodeRev encodes a revision for meta values.
func EncodeRev(rev int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(rev)) }

// DecodeRev decodes EncodeRev; a missing value is revision 0.
func DecodeRev(b []byte) int64 {
	if len(b) != 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(b))
}
