package mvcc

// SetRestInline sets how long a key's history may be and stay in its leaf
// (restInline) and returns a func restoring it, so tests can put every
// history out of line.
func SetRestInline(revs, gens int) (restore func()) {
	old := restInline
	restInline.revs, restInline.gens = revs, gens
	return func() { restInline = old }
}
