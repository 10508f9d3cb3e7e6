package server_test

// Watch replay after kill -9: a real `axon serve` process (Badger) takes a
// seeded sequence of puts, deletes, range deletes, txns and lease
// grant/attach/revoke — each also sent to an embedded etcd, which must
// answer the same — then a burst of concurrent puts during which the process
// is killed with SIGKILL. After a restart on the same data dir a watch from
// revision 1 must replay every acknowledged write, in order, with no gap in
// revisions, exactly as etcd's watch from revision 1 does for the sequential
// part; a watch from a middle revision with prev_kv must match etcd's too;
// the next write gets the next revision and reaches the replaying watcher.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/axon-kv/axon/internal/testenv"
)

func TestWatchReplayAfterKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the axon binary; skipped with -short")
	}
	const (
		seqOps    = 600 // sequential writes, compared with etcd
		burstKeys = 400 // concurrent puts during which the process is killed
		killAfter = 120 // acknowledged burst puts before the kill
	)
	start := time.Now()
	bin := testenv.BuildAxon(t)
	t.Logf("built axon in %v", time.Since(start).Round(time.Millisecond))
	dataDir := filepath.Join(t.TempDir(), "data")

	etcd := testenv.StartEtcd(t)
	p := testenv.StartAxonProcess(t, bin, dataDir)
	cli := p.WaitReady(t)
	ref := &diffTarget{name: "etcd", cli: etcd}
	cand := &diffTarget{name: "axon", cli: cli}

	// Phase 1: the sequential workload, answered identically by both.
	rnd := rand.New(rand.NewPCG(20260322, 9))
	gen := &wrGen{rnd: rnd}
	var lastRev int64
	for i := range seqOps {
		op := gen.next(i)
		a, b := ref.exec(op), cand.exec(op)
		if !cmp.Equal(a, b) {
			t.Fatalf("op %d %s: etcd and axon answered differently:\n%s", i, op, cmp.Diff(a, b))
		}
		if a.Code != "" {
			t.Fatalf("op %d %s failed: %s", i, op, a)
		}
		lastRev = max(lastRev, wrRev(a))
		gen.observe(op)
	}
	t.Logf("sequential phase: %d operations, revision %d (%v since start)", seqOps, lastRev, time.Since(start).Round(time.Millisecond))

	// Phase 2: concurrent puts of fresh keys; SIGKILL after killAfter acks.
	type ack struct {
		key string
		rev int64
	}
	var (
		next     atomic.Int64
		acked    atomic.Int64
		mu       sync.Mutex
		acks     []ack
		killed   = make(chan struct{})
		killOnce sync.Once
		wg       sync.WaitGroup
	)
	kill := func() {
		killOnce.Do(func() {
			close(killed)
			if err := p.Cmd.Process.Kill(); err != nil {
				t.Errorf("kill -9: %v", err)
			}
		})
	}
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= burstKeys {
					return
				}
				key := fmt.Sprintf("burst/%04d", i)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				resp, err := cli.Put(ctx, key, "b"+key)
				cancel()
				if err != nil {
					select {
					case <-killed:
					default:
						t.Errorf("burst put %s before the kill: %v", key, err)
					}
					return
				}
				mu.Lock()
				acks = append(acks, ack{key, resp.Header.Revision})
				mu.Unlock()
				if acked.Add(1) == killAfter {
					kill()
				}
			}
		}()
	}
	wg.Wait()
	kill() // in case every put failed
	p.WaitExit(t, 10*time.Second)
	cli.Close()
	t.Logf("killed with %d burst puts acknowledged", len(acks))

	// Restart on the same data dir.
	p2 := testenv.StartAxonProcess(t, bin, dataDir)
	cli2 := p2.WaitReady(t)
	defer cli2.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	g, err := cli2.Get(ctx, "wr-probe")
	if err != nil {
		t.Fatalf("get after restart: %v", err)
	}
	storeRev := g.Header.Revision
	var maxAck int64
	for _, a := range acks {
		maxAck = max(maxAck, a.rev)
	}
	t.Logf("after restart: store revision %d (sequential phase ended at %d, highest acknowledged %d)", storeRev, lastRev, maxAck)
	if storeRev < max(lastRev, maxAck) {
		t.Fatalf("store revision %d after restart is below the highest acknowledged revision %d", storeRev, max(lastRev, maxAck))
	}

	// Reference: etcd's replay of the sequential phase.
	refEvents := wrCollect(t, etcd, 1, false, lastRev)

	// Watch from revision 1: every revision 1..storeRev, in order.
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	wch := cli2.Watch(wctx, "\x00", clientv3.WithFromKey(), clientv3.WithRev(1))
	got := wrDrain(t, wch, storeRev)
	var seqPart, burstPart []*mvccpb.Event
	for _, ev := range got {
		if ev.Kv.ModRevision <= lastRev {
			seqPart = append(seqPart, ev)
		} else {
			burstPart = append(burstPart, ev)
		}
	}
	if d := cmp.Diff(wrNorm(refEvents, false), wrNorm(seqPart, false)); d != "" {
		t.Errorf("replay from revision 1 of the sequential phase differs from etcd's (-etcd +axon):\n%s", d)
	}
	seen := map[int64]bool{}
	prev := int64(0)
	for _, ev := range got {
		r := ev.Kv.ModRevision
		if r < prev {
			t.Fatalf("replay out of order: revision %d after %d", r, prev)
		}
		prev = r
		seen[r] = true
	}
	// Revision 1 is the empty store; the first write is revision 2.
	for r := int64(2); r <= storeRev; r++ {
		if !seen[r] {
			t.Errorf("replay from revision 1 has no event at revision %d (gap; store revision %d)", r, storeRev)
		}
	}
	burstAt := map[string]int64{}
	for _, ev := range burstPart {
		k := string(ev.Kv.Key)
		if ev.Type != mvccpb.PUT || !strings.HasPrefix(k, "burst/") || ev.Kv.Version != 1 || string(ev.Kv.Value) != "b"+k {
			t.Errorf("unexpected event after the sequential phase: %v", ev)
		}
		burstAt[k] = ev.Kv.ModRevision
	}
	for _, a := range acks {
		if r, ok := burstAt[a.key]; !ok {
			t.Errorf("acknowledged put %s (revision %d) missing from the replay", a.key, a.rev)
		} else if r != a.rev {
			t.Errorf("acknowledged put %s at revision %d replayed at revision %d", a.key, a.rev, r)
		}
	}

	// A watch from a middle revision with prev_kv matches etcd's.
	mid := lastRev / 2
	refMid := wrCollect(t, etcd, mid, true, lastRev)
	axMid := wrCollect(t, cli2, mid, true, lastRev)
	if d := cmp.Diff(wrNorm(refMid, true), wrNorm(axMid, true)); d != "" {
		t.Errorf("replay from revision %d with prev_kv differs from etcd's (-etcd +axon):\n%s", mid, d)
	}
	for _, ev := range axMid {
		if ev.Type == mvccpb.DELETE || ev.Kv.Version > 1 {
			if ev.PrevKv == nil {
				t.Errorf("replay from %d: non-create event without prev_kv: %v", mid, ev)
			}
		}
	}

	// The next write gets the next revision and reaches the watcher.
	put, err := cli2.Put(ctx, "after/restart", "x")
	if err != nil {
		t.Fatalf("put after restart: %v", err)
	}
	if put.Header.Revision != storeRev+1 {
		t.Errorf("first put after restart got revision %d, want %d", put.Header.Revision, storeRev+1)
	}
	more := wrDrain(t, wch, put.Header.Revision)
	if len(more) != 1 || string(more[0].Kv.Key) != "after/restart" || more[0].Kv.ModRevision != put.Header.Revision {
		t.Errorf("watch from revision 1 then got %v, want the put at revision %d", more, put.Header.Revision)
	}
	t.Logf("replayed %d events (%d from the sequential phase, %d burst puts; %d acknowledged)", len(got), len(seqPart), len(burstPart), len(acks))
}

// wrGen is a small sequential workload whose every operation succeeds:
// puts (some with a lease), deletes of one key or a prefix, txns, lease
// grants and revokes (which delete the attached keys).
type wrGen struct {
	rnd    *rand.Rand
	leases []int64
	nextID int64
}

func (g *wrGen) key() string { return fmt.Sprintf("k/%02d", g.rnd.IntN(40)) }

func (g *wrGen) next(i int) diffOp {
	val := fmt.Sprintf("v%d-%s", i, strings.Repeat("x", g.rnd.IntN(200)))
	put := func(k string) *pb.RequestOp {
		p := &pb.PutRequest{Key: []byte(k), Value: []byte(val)}
		if len(g.leases) > 0 && g.rnd.IntN(5) == 0 {
			p.Lease = g.leases[g.rnd.IntN(len(g.leases))]
		}
		return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: p}}
	}
	del := func(k, end string) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(k), RangeEnd: bytesOrNil(end)}}}
	}
	switch n := g.rnd.IntN(100); {
	case n < 50:
		return diffOp{kv: put(g.key())}
	case n < 62:
		return diffOp{kv: del(g.key(), "")}
	case n < 68:
		p := fmt.Sprintf("k/%d", g.rnd.IntN(4))
		return diffOp{kv: del(p, clientv3.GetPrefixRangeEnd(p))}
	case n < 92:
		k := g.key()
		t := &pb.TxnRequest{
			Compare: []*pb.Compare{{Key: []byte(k), Target: pb.Compare_VERSION, Result: pb.Compare_CompareResult(g.rnd.IntN(3)),
				TargetUnion: &pb.Compare_Version{Version: int64(g.rnd.IntN(3))}}},
			Success: []*pb.RequestOp{put(k), put(g.key() + "/t")},
			Failure: []*pb.RequestOp{del(k, ""), put(g.key() + "/f")},
		}
		return diffOp{kv: &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: t}}}
	case n < 96 || len(g.leases) == 0:
		g.nextID++
		return diffOp{grant: 0x7000 + g.nextID}
	default:
		return diffOp{revoke: g.leases[g.rnd.IntN(len(g.leases))]}
	}
}

// observe tracks the live leases (every operation succeeds).
func (g *wrGen) observe(op diffOp) {
	switch {
	case op.grant != 0:
		g.leases = append(g.leases, op.grant)
	case op.revoke != 0:
		g.leases = slices.DeleteFunc(g.leases, func(id int64) bool { return id == op.revoke })
	}
}

func wrRev(r nResp) int64 {
	switch {
	case r.Put != nil:
		return r.Put.Rev
	case r.Del != nil:
		return r.Del.Rev
	case r.Txn != nil:
		return r.Txn.Rev
	case r.Lease != nil:
		return r.Lease.Rev
	}
	return 0
}

// wrCollect watches every key from start and returns the events up to end.
func wrCollect(t *testing.T, cli *clientv3.Client, start int64, prevKV bool, end int64) []*mvccpb.Event {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	opts := []clientv3.OpOption{clientv3.WithFromKey(), clientv3.WithRev(start)}
	if prevKV {
		opts = append(opts, clientv3.WithPrevKV())
	}
	var out []*mvccpb.Event
	for _, ev := range wrDrain(t, cli.Watch(ctx, "\x00", opts...), end) {
		if ev.Kv.ModRevision <= end {
			out = append(out, ev)
		}
	}
	return out
}

// wrDrain reads events until one at revision end or later arrived.
func wrDrain(t *testing.T, ch clientv3.WatchChan, end int64) []*mvccpb.Event {
	t.Helper()
	var out []*mvccpb.Event
	timeout := time.After(30 * time.Second)
	for {
		select {
		case wr, ok := <-ch:
			if !ok {
				t.Fatalf("watch closed before revision %d", end)
			}
			if err := wr.Err(); err != nil {
				t.Fatalf("watch: %v (compact revision %d)", err, wr.CompactRevision)
			}
			out = append(out, wr.Events...)
			if n := len(out); n > 0 && out[n-1].Kv.ModRevision >= end {
				return out
			}
		case <-timeout:
			last := int64(0)
			if n := len(out); n > 0 {
				last = out[n-1].Kv.ModRevision
			}
			t.Fatalf("watch: no event at revision %d within 30s (last %d, %d events)", end, last, len(out))
		}
	}
}

func wrNorm(evs []*mvccpb.Event, withPrev bool) []wdEvent {
	out := make([]wdEvent, 0, len(evs))
	for _, ev := range evs {
		e := wdEvent{Type: ev.Type.String(), KV: normKV(ev.Kv)}
		if withPrev && ev.PrevKv != nil {
			p := normKV(ev.PrevKv)
			e.Prev = &p
		}
		out = append(out, e)
	}
	return out
}
