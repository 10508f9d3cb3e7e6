// Package mvcc maps etcd's multi-version key space onto the flat ordered
// keyspace of a backend.Backend, once for every engine. It owns the key
// layout and the read paths (current and historical ranges, revision
// records). It must not write by itself: all writes are built by package
// revision and committed by the single writer.
//
// Layout (one byte prefixes, big-endian revisions so byte order is numeric
// order):
//
//	'k' key                          latest state of a live key (axonpb.KeyValue)
//	'h' esc(key) 0x00 0x01 rev       state of key as of main revision rev (tombstone when deleted)
//	'r' rev                          axonpb.RevisionRecord: the changes of main revision rev
//	'l' id                           axonpb.Lease
//	'a' id key                       key is attached to lease id
//	'm' name                         meta: current revision, compacted revision, leader record
//
// esc() doubles 0x00 as 0x00 0xff and ends with 0x00 0x01, so history keys
// of different user keys never interleave and still sort by user key.
package mvcc

import (
	"encoding/binary"
)

const (
	prefixLatest   = 'k'
	prefixHistory  = 'h'
	prefixRevision = 'r'
	prefixLease    = 'l'
	prefixAttach   = 'a'
	prefixMeta     = 'm'
)

var (
	// MetaRevision holds the current (last committed) main revision.
	MetaRevision = []byte("m/revision")
	// MetaCompacted holds the compacted revision (reads below it fail).
	MetaCompacted = []byte("m/compacted")
	// MetaCompactDone holds the revision whose physical compaction finished.
	MetaCompactDone = []byte("m/compact-done")
	// MetaLeader holds the leader record (axonpb.LeaderRecord), renewed by
	// the leader.
	MetaLeader = []byte("m/leader")
	// MetaLeaderTerm holds the current leader term alone: it changes only
	// when leadership changes, so every write group can be fenced on it
	// without racing the leader's own renewals.
	MetaLeaderTerm = []byte("m/leader-term")
)

// LatestKey is the backend key of a user key's latest state.
func LatestKey(key []byte) []byte {
	b := make([]byte, 1+len(key))
	b[0] = prefixLatest
	copy(b[1:], key)
	return b
}

// LatestRange maps a user range [start, end) to backend bounds. An empty end
// means the single key; end "\x00" means every key >= start.
func LatestRange(start, end []byte) ([]byte, []byte) {
	s := LatestKey(start)
	switch {
	case len(end) == 0:
		return s, append(LatestKey(start), 0)
	case len(end) == 1 && end[0] == 0:
		return s, []byte{prefixLatest + 1}
	default:
		return s, LatestKey(end)
	}
}

// UserKeyFromLatest strips the prefix of a latest key.
func UserKeyFromLatest(k []byte) []byte { return k[1:] }

func appendEscaped(b, key []byte) []byte {
	for _, c := range key {
		if c == 0 {
			b = append(b, 0, 0xff)
		} else {
			b = append(b, c)
		}
	}
	return b
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

// RevisionKey is the backend key of the record of main revision rev.
func RevisionKey(rev int64) []byte {
	return binary.BigEndian.AppendUint64([]byte{prefixRevision}, uint64(rev))
}

// RevisionFromKey decodes a RevisionKey.
func RevisionFromKey(k []byte) int64 { return int64(binary.BigEndian.Uint64(k[1:])) }

// LeaseKey is the backend key of a lease record.
func LeaseKey(id int64) []byte {
	return binary.BigEndian.AppendUint64([]byte{prefixLease}, uint64(id))
}

// LeasePrefix bounds all lease records.
func LeasePrefix() ([]byte, []byte) { return []byte{prefixLease}, []byte{prefixLease + 1} }

// AttachKey records that key is attached to lease id.
func AttachKey(id int64, key []byte) []byte {
	b := binary.BigEndian.AppendUint64([]byte{prefixAttach}, uint64(id))
	return append(b, key...)
}

// AttachPrefix bounds all attachments (of one lease when id != 0).
func AttachPrefix() ([]byte, []byte) { return []byte{prefixAttach}, []byte{prefixAttach + 1} }

// SplitAttachKey decodes an AttachKey.
func SplitAttachKey(k []byte) (id int64, key []byte) {
	return int64(binary.BigEndian.Uint64(k[1:9])), append([]byte(nil), k[9:]...)
}

// EncodeRev encodes a revision for meta values.
func EncodeRev(rev int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(rev)) }

// DecodeRev decodes EncodeRev; a missing value is revision 0.
func DecodeRev(b []byte) int64 {
	if len(b) != 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(b))
}
