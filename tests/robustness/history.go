// Package robustness drives Kubernetes-shaped traffic against a real
// `axon serve` process built with failpoints (make build-failpoints),
// injects a crash, a stall or an error at each failpoint in turn and checks
// the history the clients observed. See docs/failpoints.md.
package robustness

import (
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// opKind is what a client did.
type opKind int

const (
	opGet       opKind = iota // linearizable Get of one key
	opGetAtRev                // Get of one key at a past revision
	opList                    // linearizable paginated list of a prefix
	opStaleList               // serializable list of a prefix
	opUpdate                  // Txn(mod_revision == expected) → Put
	opCreate                  // Txn(create_revision == 0) → Put
	opDelete                  // Delete of one key
)

func (k opKind) String() string {
	return [...]string{"get", "get-at-rev", "list", "stale-list", "update", "create", "delete"}[k]
}

func (k opKind) write() bool { return k >= opUpdate }

// op is one client operation and what it observed. A write whose call
// failed has unknown outcome: it may or may not have happened, so it is
// placed by the history the store kept (see check.go), never trusted.
type op struct {
	client int
	kind   opKind
	key    string // key, or prefix for lists
	value  string // put value (unique per test)
	lease  int64  // lease a put attached
	// expected is the mod_revision an update compares against.
	expected int64
	atRev    int64 // opGetAtRev: revision read at

	call, ret time.Duration
	err       error

	// rev is the response header revision.
	rev int64
	// succeeded: the Txn's compare held (update, create); deleted for a
	// delete: how many keys it removed.
	succeeded bool
	deleted   int64
	kvs       []*mvccpb.KeyValue // reads
}

// watchRecord is what one watch stream delivered.
type watchRecord struct {
	client   int
	prefix   string
	startRev int64
	resps    []watchResp
	// compacted is set when the server said startRev (or a resumed
	// revision) was compacted.
	compacted int64
	canceled  string
}

type watchResp struct {
	rev      int64 // header revision
	progress bool
	events   []*mvccpb.Event
}

// recorder collects everything clients saw.
type recorder struct {
	start   time.Time
	mu      sync.Mutex
	ops     []*op
	watches []*watchRecord
}

func (r *recorder) now() time.Duration { return time.Since(r.start) }

func (r *recorder) addOp(o *op) {
	r.mu.Lock()
	r.ops = append(r.ops, o)
	r.mu.Unlock()
}

func (r *recorder) addWatch(w *watchRecord) {
	r.mu.Lock()
	r.watches = append(r.watches, w)
	r.mu.Unlock()
}
