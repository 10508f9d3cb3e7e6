package server

import "time"

// SetKeysCountTTL lets tests see axon_mvcc_keys move at once.
func SetKeysCountTTL(s *Server, d time.Duration) {
	s.metrics.keysMu.Lock()
	s.metrics.keysTTL = d
	s.metrics.keysMu.Unlock()
}
