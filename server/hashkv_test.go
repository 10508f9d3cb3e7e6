package server_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/google/go-cmp/cmp"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/axon-kv/axon/internal/testenv"
	"github.com/axon-kv/axon/server"
)

// hashAnswer is a HashKV answer or error as compared between servers.
type hashAnswer struct {
	Hash            uint32
	CompactRevision int64
	HashRevision    int64
	HeaderRevision  int64
	Code, Msg       string
}

func hashKV(d *diffTarget, rev int64) hashAnswer {
	ctx, cancel := context.WithTimeout(context.Background(), diffOpTimeout)
	defer cancel()
	r, err := pb.NewMaintenanceClient(d.cli.ActiveConnection()).HashKV(ctx, &pb.HashKVRequest{Revision: rev})
	if err != nil {
		e := errResp(err)
		return hashAnswer{Code: e.Code, Msg: e.Msg}
	}
	return hashAnswer{Hash: r.Hash, CompactRevision: r.CompactRevision, HashRevision: r.HashRevision, HeaderRevision: hdrRev(r.Header)}
}

// TestHashKVDifferential sends the differential test's random workload
// (puts, deletes, delete ranges, nested multi-op transactions, leases) to
// etcd and Axon, compacts both now and then (at random revisions and at
// revisions that are a deletion), and requires HashKV to answer the same
// at many revisions: current, compacted, in between, below the compaction
// and in the future.
func TestHashKVDifferential(t *testing.T) {
	seeds := diffSeeds(t)
	nops := 600
	if testing.Short() {
		nops = 250
	}
	for _, backend := range []string{"memory", "badger"} {
		t.Run(backend, func(t *testing.T) {
			for _, seed := range seeds {
				t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
					etcd := testenv.StartEtcd(t, testenv.WithEtcdMaxTxnOps(diffMaxTxnOps))
					_, axon := testenv.StartAxon(t, server.Config{Backend: backend, MaxTxnOps: diffMaxTxnOps})
					ref := newDiffTarget(t, "etcd", etcd.Endpoints())
					cand := newDiffTarget(t, "axon/"+backend, axon.Endpoints())
					runHashDiff(t, seed, nops, ref, cand)
				})
			}
		})
	}
}

func runHashDiff(t *testing.T, seed int64, nops int, ref, cand *diffTarget) {
	t.Helper()
	g := &diffGen{rnd: rand.New(rand.NewPCG(uint64(seed), 0x4a5e)), cur: 1}
	apply := func(i int, what string, op diffOp) nResp {
		t.Helper()
		r, c := ref.exec(op), cand.exec(op)
		if !cmp.Equal(r, c) {
			t.Fatalf("seed=%d op #%d %s %s: answers differ, the hash comparison would be meaningless:\n%s", seed, i, what, op, cmp.Diff(r, c))
		}
		g.observe(op, r)
		return r
	}
	var (
		checked, matched, errs int
		compactions            []int64
		tombstoneCompactions   int
		lastDelete             int64 // revision of the latest deletion
	)
	check := func(i int, rev int64) {
		t.Helper()
		r, c := hashKV(ref, rev), hashKV(cand, rev)
		checked++
		if r != c {
			t.Fatalf("seed=%d after op #%d, HashKV(%d) (current %d, compacted %d, compactions %v):\netcd %+v\naxon %+v",
				seed, i, rev, g.cur, g.compacted, compactions, r, c)
		}
		if r.Code != "" {
			errs++
		} else {
			matched++
		}
	}
	checkAll := func(i int) {
		t.Helper()
		revs := []int64{0, g.cur, g.cur + 1}
		lo := max(g.compacted, 1)
		for range 4 {
			revs = append(revs, lo+int64(g.intn(int(g.cur-lo+1))))
		}
		if g.compacted > 0 {
			revs = append(revs, g.compacted)
		}
		if g.compacted > 1 {
			revs = append(revs, g.compacted-1)
		}
		for _, rev := range revs {
			check(i, rev)
		}
	}
	compact := func(i int, rev int64) {
		t.Helper()
		if rev <= g.compacted || rev > g.cur {
			return
		}
		// Physical, so etcd has finished (and cached the compaction's hash)
		// when it answers, and the comparison does not race it.
		r := apply(i, "compact", diffOp{compact: rev, physical: true})
		if r.Code == "" {
			compactions = append(compactions, rev)
			if rev == lastDelete {
				tombstoneCompactions++
			}
		}
		checkAll(i)
	}

	for i, id := range diffLeases[:2] {
		apply(i-2, "setup", diffOp{grant: id})
	}
	checkAll(-1)
	for i := range nops {
		g.seq = i
		op, kind := g.next()
		if op.compact != 0 {
			op.physical = true
		}
		before := g.cur
		r := apply(i, kind, op)
		if g.cur > before && hasDeletion(r) {
			lastDelete = g.cur
		}
		switch {
		case lastDelete == g.cur && g.chance(25):
			compact(i, g.cur) // compaction at exactly a tombstone
		case g.cur > g.compacted && g.chance(3):
			compact(i, g.compacted+1+int64(g.intn(int(g.cur-g.compacted))))
		case i%25 == 0:
			checkAll(i)
		}
	}
	checkAll(nops)
	if tombstoneCompactions == 0 && lastDelete > g.compacted {
		compact(nops, lastDelete)
	}
	if len(compactions) == 0 || matched == 0 || errs == 0 {
		t.Fatalf("the workload did not cover the cases: %d compactions, %d equal hashes, %d equal errors", len(compactions), matched, errs)
	}
	t.Logf("seed=%d: %d ops, revision %d, compactions %v (%d at a deletion), %d HashKV compared (%d errors)",
		seed, nops, g.cur, compactions, tombstoneCompactions, checked, errs)
}

// hasDeletion reports whether an answer deleted something (a txn counts
// when one of its delete ranges did; lease revokes are not seen here).
func hasDeletion(r nResp) bool {
	if r.Del != nil && r.Del.Deleted > 0 {
		return true
	}
	if r.Txn != nil {
		for _, sub := range r.Txn.Responses {
			if hasDeletion(sub) {
				return true
			}
		}
	}
	return false
}
