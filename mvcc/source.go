package mvcc

import "github.com/axon-kv/axon/backend"

// SnapshotSource reads a snapshot whose current revision is Current: the
// latest-state scan at Current, the history below it.
type SnapshotSource struct {
	Snap    backend.Snapshot
	Current int64
}

// Scan implements Source.
func (s SnapshotSource) Scan(start, end []byte, rev int64, fn func(key, val []byte) error) error {
	if rev >= s.Current {
		return LatestSource{Snap: s.Snap}.Scan(start, end, rev, fn)
	}
	return HistorySource{Snap: s.Snap}.Scan(start, end, rev, fn)
}

// InRange reports whether key lies in the etcd range [start, end) (empty
// end: the single key start; "\x00": every key >= start).
func InRange(key, start, end []byte) bool {
	switch {
	case len(end) == 0:
		return string(key) == string(start)
	case len(end) == 1 && end[0] == 0:
		return string(key) >= string(start)
	default:
		return string(key) >= string(start) && string(key) < string(end)
	}
}
