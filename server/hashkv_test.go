package server_test

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

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
	forDiffPairs(t, seeds, func(t *testing.T, seed int64, ref, cand *diffTarget) {
		runHashDiff(t, seed, nops, ref, cand)
	})
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

// TestHashKVScenarios replays short fixed sequences, each aimed at one rule
// of etcd's hash, and compares HashKV at every revision still hashable
// after each step.
func TestHashKVScenarios(t *testing.T) {
	put := func(k, v string, lease int64) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(k), Value: []byte(v), Lease: lease}}}
	}
	del := func(k, end string) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(k), RangeEnd: bytesOrNil(end)}}}
	}
	txn := func(ops ...*pb.RequestOp) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: &pb.TxnRequest{Success: ops}}}
	}
	kv := func(r *pb.RequestOp) diffOp { return diffOp{kv: r} }
	compact := func(rev int64) diffOp { return diffOp{compact: rev, physical: true} }
	scenarios := map[string][]diffOp{
		// Later states of a transaction's keys have sub > 0; their
		// revision record goes with compaction, the sub must not.
		"multi-op txn survives compaction": {
			kv(txn(put("c", "1", 0), put("a", "2", 0), put("b", "3", 0))), // rev 2
			kv(put("z", "4", 0)),
			compact(3),
			kv(put("y", "5", 0)),
			compact(4),
		},
		// No key alive at the hashed revision: etcd then hashes all that
		// compaction kept instead of filtering by live keys.
		"nothing alive": {
			kv(txn(put("b", "1", 0), put("a", "2", 0))), // rev 2
			kv(put("c", "3", 0)),
			compact(3),
			kv(del("\x00", "\x00")), // rev 4
			kv(put("d", "4", 0)),    // rev 5
			kv(del("d", "")),        // rev 6
			compact(5),
		},
		// A put and a deletion of the same key in one revision (nested
		// transactions allow it), then compactions before and at it.
		"put then delete in one txn": {
			kv(put("k", "0", 0)),
			kv(txn(txn(put("x", "1", 0), put("k", "2", 0)), txn(del("a", "z")))), // rev 3
			kv(put("m", "3", 0)),
			kv(txn(put("n", "4", 0), put("o", "5", 0))),
			compact(2),
			compact(3),
			compact(4),
		},
		// Deletion at exactly the compacted revision (a delete range:
		// several subs), then more compactions reaching past it.
		"compact at a tombstone": {
			kv(txn(put("a", "1", 0), put("b", "2", 0), put("c", "3", 0))),
			kv(del("a", "c")), // rev 3
			compact(3),
			kv(put("b", "4", 0)),
			compact(4),
			kv(del("b", "")), // rev 5
			kv(del("c", "")), // rev 6
			compact(6),
		},
		// A revoke deletes its keys in key order in one revision.
		"lease revoke": {
			{grant: 0x1001},
			kv(txn(put("q", "1", 0x1001), put("p", "2", 0x1001), put("r", "3", 0))),
			kv(put("s", "4", 0x1001)),
			{revoke: 0x1001},
			compact(4),
		},
	}
	for name, ops := range scenarios {
		t.Run(name, func(t *testing.T) {
			etcd := testenv.StartEtcd(t)
			_, axon := testenv.StartAxon(t, server.Config{Backend: "memory"})
			ref := newDiffTarget(t, "etcd", etcd.Endpoints())
			cand := newDiffTarget(t, "axon", axon.Endpoints())
			cur := int64(1)
			for i, op := range ops {
				r, c := ref.exec(op), cand.exec(op)
				if !cmp.Equal(r, c) || r.Code != "" {
					t.Fatalf("step %d %s: etcd %s, axon %s", i, op, r, c)
				}
				for _, a := range []*nResp{&r} {
					switch {
					case a.Put != nil:
						cur = max(cur, a.Put.Rev)
					case a.Del != nil:
						cur = max(cur, a.Del.Rev)
					case a.Txn != nil:
						cur = max(cur, a.Txn.Rev)
					case a.Lease != nil:
						cur = max(cur, a.Lease.Rev)
					}
				}
				for rev := int64(0); rev <= cur+1; rev++ {
					if e, a := hashKV(ref, rev), hashKV(cand, rev); e != a {
						t.Fatalf("after step %d %s, HashKV(%d):\netcd %+v\naxon %+v", i, op, rev, e, a)
					}
				}
			}
		})
	}
}

// TestHashKVEtcdctl runs `etcdctl endpoint hashkv` against Axon: the
// number it prints must be the one the API answers.
func TestHashKVEtcdctl(t *testing.T) {
	bin, err := exec.LookPath("etcdctl")
	if err != nil {
		t.Skip("etcdctl is not installed (apt-get install etcd-client)")
	}
	_, axon := testenv.StartAxon(t, server.Config{Backend: "memory"})
	ctx := context.Background()
	if _, err := axon.Txn(ctx).Then(clientv3.OpPut("a", "1"), clientv3.OpPut("b", "2")).Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := axon.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	want, err := axon.HashKV(ctx, axon.Endpoints()[0], 0)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "--endpoints", strings.Join(axon.Endpoints(), ","), "endpoint", "hashkv", "-w", "json").CombinedOutput()
	if err != nil {
		t.Fatalf("etcdctl: %v\n%s", err, out)
	}
	var got []struct {
		Endpoint string
		HashKV   struct {
			Hash            uint32 `json:"hash"`
			CompactRevision int64  `json:"compact_revision"`
		}
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("etcdctl output %q: %v", out, err)
	}
	// Older etcdctl releases print no hash_revision: the API's is checked.
	if want.HashRevision != 3 || want.CompactRevision != -1 {
		t.Fatalf("HashKV(0) answered revision %d, compacted %d; want 3 and -1", want.HashRevision, want.CompactRevision)
	}
	if len(got) != 1 || got[0].HashKV.Hash != want.Hash || got[0].HashKV.CompactRevision != want.CompactRevision {
		t.Fatalf("etcdctl printed %s; the API answered hash %d", out, want.Hash)
	}
}

// TestHashWholeStore checks Axon's own Hash: stable while nothing is
// written, different after a write, with the current revision in the
// header.
func TestHashWholeStore(t *testing.T) {
	_, axon := testenv.StartAxon(t, server.Config{Backend: "memory"})
	ctx := context.Background()
	mc := pb.NewMaintenanceClient(axon.ActiveConnection())
	if _, err := axon.Put(ctx, "a", "1"); err != nil {
		t.Fatal(err)
	}
	h1, err := mc.Hash(ctx, &pb.HashRequest{})
	if err != nil {
		t.Fatal(err)
	}
	h2, err := mc.Hash(ctx, &pb.HashRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := axon.Put(ctx, "a", "2"); err != nil {
		t.Fatal(err)
	}
	h3, err := mc.Hash(ctx, &pb.HashRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if h1.Hash != h2.Hash || h1.Header.Revision != 2 {
		t.Fatalf("no write in between: %d at %d, then %d", h1.Hash, h1.Header.Revision, h2.Hash)
	}
	if h3.Hash == h1.Hash || h3.Header.Revision != 3 {
		t.Fatalf("after a write: %d at %d, before %d", h3.Hash, h3.Header.Revision, h1.Hash)
	}
}
