package robustness

import (
	"bytes"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// report is the outcome of checking one history.
type report struct {
	violations []string
	ops        int // client operations checked
	unknown    int // writes whose outcome the client never learned
	watches    int // watch streams checked
	events     int
	finalRev   int64
	linearize  porcupine.CheckResult
}

func (r *report) fail(format string, args ...any) {
	if len(r.violations) < 50 {
		r.violations = append(r.violations, fmt.Sprintf(format, args...))
	}
}

// version of a key from revision rev on; kv nil: deleted.
type version struct {
	rev int64
	kv  *mvccpb.KeyValue
}

// store is the history replayed from the collector's watch: every key's
// versions, so the state at any revision can be read back.
type store struct {
	keys     map[string][]version
	byRev    map[int64][]*mvccpb.Event
	firstRev int64
	lastRev  int64
}

func (s *store) at(key string, rev int64) *mvccpb.KeyValue {
	vs := s.keys[key]
	i := sort.Search(len(vs), func(i int) bool { return vs[i].rev > rev })
	if i == 0 {
		return nil
	}
	return vs[i-1].kv
}

func (s *store) prefixAt(prefix string, rev int64) []*mvccpb.KeyValue {
	var out []*mvccpb.KeyValue
	for k := range s.keys {
		if strings.HasPrefix(k, prefix) {
			if kv := s.at(k, rev); kv != nil {
				out = append(out, kv)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return bytes.Compare(out[i].Key, out[j].Key) < 0 })
	return out
}

func sameKV(a, b *mvccpb.KeyValue) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return bytes.Equal(a.Key, b.Key) && bytes.Equal(a.Value, b.Value) && a.CreateRevision == b.CreateRevision &&
		a.ModRevision == b.ModRevision && a.Version == b.Version && a.Lease == b.Lease
}

func showKV(kv *mvccpb.KeyValue) string {
	if kv == nil {
		return "<none>"
	}
	return fmt.Sprintf("%s=%q(c%d,m%d,v%d,l%x)", kv.Key, kv.Value, kv.CreateRevision, kv.ModRevision, kv.Version, kv.Lease)
}

func sameEvent(a, b *mvccpb.Event) bool {
	return a.Type == b.Type && sameKV(a.Kv, b.Kv) && sameKV(a.PrevKv, b.PrevKv)
}

func showEvent(e *mvccpb.Event) string {
	return fmt.Sprintf("%s %s prev %s", e.Type, showKV(e.Kv), showKV(e.PrevKv))
}

// checkStream checks one watch stream on its own: events in revision
// order, each (revision, key) once, all events of a revision in one
// response, none at or below a progress notification that came before
// them. It returns the events and the revision up to which the stream
// claims completeness (last event or progress notification).
func checkStream(r *report, name string, start int64, resps []watchResp) ([]*mvccpb.Event, int64) {
	var (
		evs      []*mvccpb.Event
		last     int64 // revision of the last event
		progress int64 // highest progress notification
	)
	for i, resp := range resps {
		if resp.progress {
			if resp.rev < progress {
				r.fail("%s: progress notification at %d after one at %d", name, resp.rev, progress)
			}
			progress = max(progress, resp.rev)
			continue
		}
		seen := map[string]bool{}
		for j, e := range resp.events {
			rev := e.Kv.ModRevision
			switch {
			case rev < start:
				r.fail("%s: event at %d before the start revision %d", name, rev, start)
			case j == 0 && rev <= last:
				// Either out of order or a revision split over responses.
				r.fail("%s: response %d starts at revision %d, not after the previous event's %d (order/atomicity)", name, i, rev, last)
			case j > 0 && rev < last:
				r.fail("%s: response %d: event at %d after one at %d", name, i, rev, last)
			case rev <= progress:
				r.fail("%s: event at %d delivered after a progress notification at %d", name, rev, progress)
			case rev > resp.rev:
				r.fail("%s: event at %d in a response whose header says %d", name, rev, resp.rev)
			}
			id := fmt.Sprintf("%d/%s", rev, e.Kv.Key)
			if seen[id] {
				r.fail("%s: event %s twice", name, id)
			}
			seen[id] = true
			last = rev
			evs = append(evs, e)
		}
	}
	return evs, max(last, progress)
}

// replay builds the store from the collector's events and checks each
// event against the key's previous state: create_revision, version and
// prev_kv, and that revisions are gap-free.
func replay(r *report, evs []*mvccpb.Event, firstRev, finalRev int64) *store {
	s := &store{keys: map[string][]version{}, byRev: map[int64][]*mvccpb.Event{}, firstRev: firstRev, lastRev: finalRev}
	cur := map[string]*mvccpb.KeyValue{}
	for _, e := range evs {
		rev, key := e.Kv.ModRevision, string(e.Kv.Key)
		s.byRev[rev] = append(s.byRev[rev], e)
		prev := cur[key]
		if !sameKV(e.PrevKv, prev) {
			r.fail("event at %d on %s: prev_kv %s, but the key was %s", rev, key, showKV(e.PrevKv), showKV(prev))
		}
		switch e.Type {
		case mvccpb.PUT:
			want := mvccpb.KeyValue{CreateRevision: rev, Version: 1}
			if prev != nil {
				want = mvccpb.KeyValue{CreateRevision: prev.CreateRevision, Version: prev.Version + 1}
			}
			if e.Kv.CreateRevision != want.CreateRevision || e.Kv.Version != want.Version {
				r.fail("put at %d on %s: create_revision %d version %d, want %d and %d (IsCreate %v)",
					rev, key, e.Kv.CreateRevision, e.Kv.Version, want.CreateRevision, want.Version, prev == nil)
			}
			cur[key] = e.Kv
			s.keys[key] = append(s.keys[key], version{rev, e.Kv})
		case mvccpb.DELETE:
			if prev == nil {
				r.fail("delete at %d of %s, which did not exist", rev, key)
			}
			delete(cur, key)
			s.keys[key] = append(s.keys[key], version{rev, nil})
		}
	}
	// Every write of the test is under /registry/, so every revision
	// after the empty store's first has events.
	for rev := firstRev; rev <= finalRev; rev++ {
		if len(s.byRev[rev]) == 0 {
			r.fail("revision %d has no events: a gap in the history", rev)
		}
	}
	for rev := range s.byRev {
		if rev < firstRev || rev > finalRev {
			r.fail("events at revision %d outside [%d, %d]", rev, firstRev, finalRev)
		}
	}
	return s
}

// compareWatch checks that a stream (a client's list-then-watch, or a
// watch opened after the run) delivered exactly the history's events of its
// prefix from its start revision up to where it claims completeness.
func compareWatch(r *report, s *store, name, prefix string, start, upTo int64, got []*mvccpb.Event) {
	var want []*mvccpb.Event
	for rev := start; rev <= upTo && rev <= s.lastRev; rev++ {
		for _, e := range s.byRev[rev] {
			if strings.HasPrefix(string(e.Kv.Key), prefix) {
				want = append(want, e)
			}
		}
	}
	if upTo > s.lastRev {
		r.fail("%s: claims revisions up to %d, the history ends at %d", name, upTo, s.lastRev)
	}
	n := min(len(want), len(got))
	for i := range n {
		if !sameEvent(want[i], got[i]) {
			r.fail("%s (from %d): event %d is %s, the history has %s", name, start, i, showEvent(got[i]), showEvent(want[i]))
			return
		}
	}
	if len(got) != len(want) {
		var missing string
		if len(want) > n {
			missing = "; first missing: " + showEvent(want[n])
		}
		r.fail("%s (from %d to %d): %d events, the history has %d%s", name, start, upTo, len(got), len(want), missing)
	}
}

// checkOps checks every client operation against the history: an
// acknowledged write is in it at its revision, a read saw the state at its
// revision, each put value was applied at most once. Writes whose outcome
// is unknown are placed at the revision the history shows, or dropped if
// it shows none. It then runs porcupine over the revision model.
func checkOps(r *report, s *store, ops []*op, fromRev, final int64) {
	applied := map[string]int64{} // put value → revision
	for rev, evs := range s.byRev {
		for _, e := range evs {
			if e.Type == mvccpb.PUT {
				v := string(e.Kv.Value)
				if prev, dup := applied[v]; dup {
					r.fail("value %q written at %d and at %d: a write applied twice", v, prev, rev)
				}
				applied[v] = rev
			}
		}
	}
	claimed := map[int64]bool{}
	var history []porcupine.Operation
	add := func(o *op, write bool, rev int64, ret time.Duration) {
		retNs := int64(ret)
		if ret < 0 {
			retNs = math.MaxInt64
		}
		history = append(history, porcupine.Operation{ClientId: o.client, Input: o, Call: int64(o.call), Output: revOut{rev: rev, write: write}, Return: retNs})
	}
	for _, o := range ops {
		r.ops++
		if o.err != nil {
			if o.kind.write() {
				r.unknown++
				if rev, ok := applied[o.value]; ok && o.value != "" {
					// It happened; when it returned is unknown.
					claimed[rev] = true
					add(o, true, rev, -1)
				}
			}
			continue
		}
		if o.rev > s.lastRev {
			r.fail("%s %s answered at revision %d, beyond the history's %d", o.kind, o.key, o.rev, s.lastRev)
			continue
		}
		switch o.kind {
		case opUpdate, opCreate:
			if !o.succeeded {
				add(o, false, o.rev, o.ret)
				continue
			}
			if rev, ok := applied[o.value]; !ok || rev != o.rev {
				r.fail("acknowledged %s of %s=%q at revision %d lost: the history has it at %d (0: nowhere); events at %d: %s",
					o.kind, o.key, o.value, o.rev, rev, o.rev, showEvents(s.byRev[o.rev]))
				continue
			}
			if kv := s.at(o.key, o.rev); kv == nil || string(kv.Value) != o.value || kv.Lease != o.lease {
				r.fail("acknowledged %s at %d: the history has %s, want value %q lease %x", o.kind, o.rev, showKV(kv), o.value, o.lease)
			}
			claimed[o.rev] = true
			add(o, true, o.rev, o.ret)
		case opDelete:
			if o.deleted == 0 {
				if kv := s.at(o.key, o.rev); kv != nil {
					r.fail("delete of %s at %d removed nothing, but the key held %s", o.key, o.rev, showKV(kv))
				}
				add(o, false, o.rev, o.ret)
				continue
			}
			found := false
			for _, e := range s.byRev[o.rev] {
				found = found || (e.Type == mvccpb.DELETE && string(e.Kv.Key) == o.key)
			}
			if !found {
				r.fail("acknowledged delete of %s at %d lost; events at %d: %s", o.key, o.rev, o.rev, showEvents(s.byRev[o.rev]))
				continue
			}
			claimed[o.rev] = true
			add(o, true, o.rev, o.ret)
		case opGet, opGetAtRev:
			at := o.rev
			if o.kind == opGetAtRev {
				at = o.atRev
			}
			var got *mvccpb.KeyValue
			if len(o.kvs) > 0 {
				got = o.kvs[0]
			}
			if want := s.at(o.key, at); !sameKV(got, want) {
				r.fail("%s %s at %d read %s, the history has %s", o.kind, o.key, at, showKV(got), showKV(want))
			}
			if o.kind == opGet {
				add(o, false, o.rev, o.ret)
			}
		case opList, opStaleList:
			want := s.prefixAt(o.key, o.rev)
			ok := len(want) == len(o.kvs)
			for i := 0; ok && i < len(want); i++ {
				ok = sameKV(want[i], o.kvs[i])
			}
			if !ok {
				r.fail("%s %s at %d read %d objects, the history has %d (or they differ)", o.kind, o.key, o.rev, len(o.kvs), len(want))
			}
			if o.kind == opList {
				add(o, false, o.rev, o.ret)
			}
		}
	}
	// Revisions no client write claims: lease expiry and revocation, and
	// deletes whose outcome was unknown. They happened at some time.
	bg := &op{client: -1, kind: opDelete}
	for rev := fromRev + 1; rev <= final; rev++ {
		if !claimed[rev] && len(s.byRev[rev]) > 0 {
			add(bg, true, rev, -1)
			history[len(history)-1].Call = 0
		}
	}
	res, _ := porcupine.CheckOperationsVerbose(revModel(fromRev), history, 2*time.Minute)
	r.linearize = res
	if res != porcupine.Ok {
		r.fail("client history is not linearizable: porcupine says %v", res)
	}
}

func showEvents(evs []*mvccpb.Event) string {
	var parts []string
	for _, e := range evs {
		parts = append(parts, showEvent(e))
	}
	return "[" + strings.Join(parts, "; ") + "]"
}

// revOut is an operation's outcome for the model: the revision it wrote
// (write) or observed.
type revOut struct {
	rev   int64
	write bool
}

// revModel is the store as one revision counter. Every operation's
// revision is pinned by the checks above (a write's by its ack or by the
// history, a read's by its header), and its data is checked against the
// replayed history at that revision; what porcupine adds is real time: a
// write takes the next revision, a linearizable read or a Txn whose compare
// failed observes the current one, in an order consistent with when each
// call began and returned. The register model of
// server/linearizability_test.go cannot express revisions, leases or lists,
// hence this one.
func revModel(init int64) porcupine.Model {
	return porcupine.Model{
		Init: func() any { return init },
		Step: func(state, _, output any) (bool, any) {
			st, out := state.(int64), output.(revOut)
			if out.write {
				return out.rev == st+1, out.rev
			}
			return out.rev == st, st
		},
		Equal: func(a, b any) bool { return a.(int64) == b.(int64) },
		DescribeOperation: func(input, output any) string {
			o, out := input.(*op), output.(revOut)
			return fmt.Sprintf("%s %s -> rev %d (write %v)", o.kind, o.key, out.rev, out.write)
		},
	}
}
