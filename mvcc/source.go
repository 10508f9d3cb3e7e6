package mvcc

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
