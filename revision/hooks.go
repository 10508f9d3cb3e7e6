package revision

import "go.etcd.io/etcd/api/v3/mvccpb"

// Publisher receives every committed revision, in revision order, without
// gaps, from the writer goroutine. Events carry PrevKv when the key existed
// before. Publish must not block for long: it runs on the write path.
type Publisher interface {
	Publish(rev int64, events []*mvccpb.Event)
	// Compacted tells that reads and watches below rev now fail.
	Compacted(rev int64)
}

// Leases is what the writer needs from the lease table. Exists and Keys are
// called from the writer goroutine while it builds a group; Attach and
// Detach after the group committed.
type Leases interface {
	Exists(id int64) bool
	Attach(id int64, key []byte)
	Detach(id int64, key []byte)
	// Keys returns the keys attached to lease id.
	Keys(id int64) [][]byte
}
