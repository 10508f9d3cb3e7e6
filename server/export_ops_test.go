package server

import "time"

// SetKeysCountTTL is kept for tests written when axon_mvcc_keys was a
// cached scan; the key index now counts keys exactly, so there is nothing
// to set.
func SetKeysCountTTL(*Server, time.Duration) {}
