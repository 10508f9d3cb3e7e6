package server_test

// Lease integration: the same lease workload against embedded etcd and Axon
// — keys attached to a short lease vanish with DELETE events when it
// expires, keep-alive holds keys past their TTL, TimeToLive reports granted
// TTL and attached keys, revoked or expired lease IDs get etcd's not-found
// answers, Txn compares on LEASE — and, on Axon alone, leases and their keys
// surviving a restart on the same Badger data dir.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/axon-kv/axon/internal/testenv"
	"github.com/axon-kv/axon/server"
)

func TestLease(t *testing.T) {
	t.Run("against-etcd", func(t *testing.T) {
		t.Parallel()
		testLeaseAgainstEtcd(t)
	})
	t.Run("survives-restart", func(t *testing.T) {
		t.Parallel()
		testLeaseSurvivesRestart(t)
	})
}

// lsSide is one server of the comparison.
type lsSide struct {
	name   string
	cli    *clientv3.Client
	dt     *diffTarget
	lc     pb.LeaseClient
	mu     sync.Mutex
	events []*mvccpb.Event
	wake   chan struct{}
}

func (s *lsSide) watch(t *testing.T, prefix string) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch := s.cli.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithCreatedNotify())
	wr := <-ch
	if !wr.Created {
		t.Fatalf("%s: watch not created: %v", s.name, wr.Err())
	}
	go func() {
		for wr := range ch {
			s.mu.Lock()
			s.events = append(s.events, wr.Events...)
			s.mu.Unlock()
			select {
			case s.wake <- struct{}{}:
			default:
			}
		}
	}()
}

// waitDeleted waits until DELETE events for every key have been seen and
// returns their revisions.
func (s *lsSide) waitDeleted(t *testing.T, d time.Duration, keys ...string) map[string]int64 {
	t.Helper()
	deadline := time.After(d)
	for {
		s.mu.Lock()
		got := map[string]int64{}
		for _, ev := range s.events {
			if ev.Type == mvccpb.DELETE && slices.Contains(keys, string(ev.Kv.Key)) {
				got[string(ev.Kv.Key)] = ev.Kv.ModRevision
			}
		}
		s.mu.Unlock()
		if len(got) == len(keys) {
			return got
		}
		select {
		case <-s.wake:
		case <-deadline:
			t.Fatalf("%s: no DELETE events for %v within %v (saw %v)", s.name, keys, d, got)
		}
	}
}

func (s *lsSide) keys(t *testing.T, prefix string) []string {
	t.Helper()
	r, err := s.cli.Get(context.Background(), prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatalf("%s: get %s: %v", s.name, prefix, err)
	}
	var out []string
	for _, kv := range r.Kvs {
		out = append(out, string(kv.Key))
	}
	return out
}

// lsTTL is a normalised TimeToLive answer; TTL is compared by the caller.
type lsTTL struct {
	ID         int64
	GrantedTTL int64
	Keys       []string
	Gone       bool // TTL -1
}

func lsTimeToLive(t *testing.T, cli *clientv3.Client, id int64) (lsTTL, int64) {
	t.Helper()
	r, err := cli.TimeToLive(context.Background(), clientv3.LeaseID(id), clientv3.WithAttachedKeys())
	if err != nil {
		t.Fatalf("TimeToLive(%#x): %v", id, err)
	}
	out := lsTTL{ID: int64(r.ID), GrantedTTL: r.GrantedTTL, Gone: r.TTL == -1}
	for _, k := range r.Keys {
		out.Keys = append(out.Keys, string(k))
	}
	slices.Sort(out.Keys)
	return out, r.TTL
}

func lsErr(err error) string {
	if err == nil {
		return "<nil>"
	}
	return errResp(err).Code + ": " + errResp(err).Msg
}

func testLeaseAgainstEtcd(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	_, axon := testenv.StartAxon(t, server.Config{})
	var sides [2]*lsSide
	for i, c := range []*clientv3.Client{etcd, axon} {
		name := []string{"etcd", "axon"}[i]
		sides[i] = &lsSide{name: name, cli: c, dt: newDiffTarget(t, name, c.Endpoints()), lc: pb.NewLeaseClient(c.ActiveConnection()), wake: make(chan struct{}, 1)}
		sides[i].watch(t, "lease/")
	}
	ctx := context.Background()
	const (
		short = 0x100 // TTL 1: raised to the minimum TTL, expires
		kept  = 0x200 // TTL 2, kept alive for a while
	)
	// both runs f on each server in turn and requires equal answers.
	both := func(what string, f func(s *lsSide) any) any {
		t.Helper()
		a, b := f(sides[0]), f(sides[1])
		if d := cmp.Diff(a, b); d != "" {
			t.Errorf("%s: etcd and axon differ (-etcd +axon):\n%s", what, d)
		}
		return a
	}

	granted := time.Now()
	both("grant", func(s *lsSide) any {
		var ttls []int64
		for _, g := range []struct{ id, ttl int64 }{{short, 1}, {kept, 2}} {
			r, err := s.lc.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: g.id, TTL: g.ttl})
			if err != nil {
				t.Fatalf("%s: grant %#x: %v", s.name, g.id, err)
			}
			ttls = append(ttls, r.ID, r.TTL)
		}
		return ttls
	})
	both("puts", func(s *lsSide) any {
		var revs []int64
		for _, p := range []struct {
			key   string
			lease int64
		}{{"lease/e/1", short}, {"lease/e/2", short}, {"lease/e/3", short}, {"lease/k/1", kept}, {"lease/k/2", kept}, {"lease/none", 0}} {
			r, err := s.cli.Put(ctx, p.key, "v", clientv3.WithLease(clientv3.LeaseID(p.lease)))
			if err != nil {
				t.Fatalf("%s: put %s: %v", s.name, p.key, err)
			}
			revs = append(revs, r.Header.Revision)
		}
		return revs
	})
	both("TimeToLive with keys", func(s *lsSide) any {
		out, ttl := lsTimeToLive(t, s.cli, short)
		if ttl <= 0 || ttl > out.GrantedTTL {
			t.Errorf("%s: TimeToLive(%#x) TTL %d, granted %d", s.name, short, ttl, out.GrantedTTL)
		}
		return out
	})
	both("Leases", func(s *lsSide) any {
		r, err := s.cli.Leases(ctx)
		if err != nil {
			t.Fatalf("%s: Leases: %v", s.name, err)
		}
		var ids []int64
		for _, l := range r.Leases {
			ids = append(ids, int64(l.ID))
		}
		slices.Sort(ids)
		return ids
	})

	// Keep the second lease alive on both servers.
	kaCtx, stopKA := context.WithCancel(ctx)
	defer stopKA()
	for _, s := range sides {
		ch, err := s.cli.KeepAlive(kaCtx, kept)
		if err != nil {
			t.Fatalf("%s: KeepAlive: %v", s.name, err)
		}
		go func() {
			for range ch {
			}
		}()
	}

	// The short lease expires: its keys go, with DELETE events in one
	// revision.
	var expiryRevs [2]int64
	for i, s := range sides {
		revs := s.waitDeleted(t, 15*time.Second, "lease/e/1", "lease/e/2", "lease/e/3")
		for _, r := range revs {
			if r != revs["lease/e/1"] {
				t.Errorf("%s: expiry deleted the keys in several revisions: %v", s.name, revs)
			}
		}
		expiryRevs[i] = revs["lease/e/1"]
		if k := s.keys(t, "lease/e/"); len(k) != 0 {
			t.Errorf("%s: keys of the expired lease still there: %v", s.name, k)
		}
	}
	t.Logf("short lease expired %v after the grant", time.Since(granted).Round(10*time.Millisecond))

	// Kept alive: its keys outlive its TTL (2s) by far.
	time.Sleep(time.Until(granted.Add(5 * time.Second)))
	both("kept-alive keys after 5s", func(s *lsSide) any {
		_, ttl := lsTimeToLive(t, s.cli, kept)
		if ttl <= 0 {
			t.Errorf("%s: kept-alive lease TTL %d after 5s", s.name, ttl)
		}
		return s.keys(t, "lease/k/")
	})
	stopKA()
	stopped := time.Now()
	for _, s := range sides {
		s.waitDeleted(t, 15*time.Second, "lease/k/1", "lease/k/2")
	}
	t.Logf("kept-alive lease expired %v after keep-alive stopped", time.Since(stopped).Round(10*time.Millisecond))

	// Expired and revoked leases: TimeToLive -1, revoke and keep-alive
	// answer etcd's "requested lease not found".
	both("grant, attach and revoke a third lease", func(s *lsSide) any {
		if _, err := s.lc.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: 0x300, TTL: 600}); err != nil {
			t.Fatalf("%s: grant: %v", s.name, err)
		}
		if _, err := s.cli.Put(ctx, "lease/r/1", "v", clientv3.WithLease(0x300)); err != nil {
			t.Fatalf("%s: put: %v", s.name, err)
		}
		return s.dt.exec(diffOp{revoke: 0x300})
	})
	for _, id := range []int64{short, kept, 0x300} {
		both(fmt.Sprintf("lease %#x after expiry or revoke", id), func(s *lsSide) any {
			ttl, _ := lsTimeToLive(t, s.cli, id)
			revoke := s.dt.exec(diffOp{revoke: id})
			_, kaErr := s.cli.KeepAliveOnce(ctx, clientv3.LeaseID(id))
			if !errors.Is(kaErr, rpctypes.ErrLeaseNotFound) {
				t.Errorf("%s: KeepAliveOnce(%#x): %v, want %v", s.name, id, kaErr, rpctypes.ErrLeaseNotFound)
			}
			// Put with the dead lease.
			put := s.dt.exec(diffOp{kv: &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("lease/x"), Lease: id}}}})
			return []any{ttl, revoke, lsErr(kaErr), put}
		})
	}

	// Txn compares on LEASE.
	both("grant 0x400 and attach", func(s *lsSide) any {
		if _, err := s.lc.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: 0x400, TTL: 600}); err != nil {
			t.Fatalf("%s: grant: %v", s.name, err)
		}
		r1, _ := s.cli.Put(ctx, "lease/c/1", "v", clientv3.WithLease(0x400))
		r2, _ := s.cli.Put(ctx, "lease/c/2", "v")
		return []int64{r1.Header.Revision, r2.Header.Revision}
	})
	leaseCmp := func(key, end string, res pb.Compare_CompareResult, lease int64) diffOp {
		return diffOp{kv: &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: &pb.TxnRequest{
			Compare: []*pb.Compare{{Key: []byte(key), RangeEnd: bytesOrNil(end), Target: pb.Compare_LEASE, Result: res, TargetUnion: &pb.Compare_Lease{Lease: lease}}},
			Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("lease/txn"), Value: []byte("then"), Lease: lease, IgnoreLease: false}}}},
			Failure: []*pb.RequestOp{{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte(key), RangeEnd: bytesOrNil(end)}}}},
		}}}}
	}
	succeeded := 0
	for _, c := range []struct {
		key, end string
		res      pb.Compare_CompareResult
		lease    int64
	}{
		{"lease/c/1", "", pb.Compare_EQUAL, 0x400},
		{"lease/c/1", "", pb.Compare_EQUAL, 0},
		{"lease/c/1", "", pb.Compare_NOT_EQUAL, 0},
		{"lease/c/1", "", pb.Compare_GREATER, 0x3ff},
		{"lease/c/1", "", pb.Compare_LESS, 0x400},
		{"lease/c/2", "", pb.Compare_EQUAL, 0},
		{"lease/c/2", "", pb.Compare_EQUAL, 0x400},
		{"lease/c/missing", "", pb.Compare_EQUAL, 0},
		{"lease/c/missing", "", pb.Compare_NOT_EQUAL, 0},
		{"lease/c/", "lease/c0", pb.Compare_EQUAL, 0x400},
		{"lease/c/", "lease/c0", pb.Compare_GREATER, 0x100},
		{"lease/c/", "lease/c0", pb.Compare_LESS, 0x401},
	} {
		r := both(fmt.Sprintf("Txn LEASE(%q..%q) %v %#x", c.key, c.end, c.res, c.lease), func(s *lsSide) any {
			return s.dt.exec(leaseCmp(c.key, c.end, c.res, c.lease))
		}).(nResp)
		if r.Txn != nil && r.Txn.Succeeded {
			succeeded++
		}
	}
	if succeeded == 0 {
		t.Errorf("no LEASE compare succeeded: the comparison proves little")
	}

	// Every event both watchers saw, in order, with revisions and prev_kv.
	time.Sleep(200 * time.Millisecond)
	var evs [2][]wdEvent
	for i, s := range sides {
		s.mu.Lock()
		evs[i] = wrNorm(s.events, true)
		s.mu.Unlock()
	}
	if d := cmp.Diff(evs[0], evs[1]); d != "" {
		t.Errorf("watch events on lease/ differ (-etcd +axon):\n%s", d)
	}
	if expiryRevs[0] != expiryRevs[1] {
		t.Errorf("expiry revision: etcd %d, axon %d", expiryRevs[0], expiryRevs[1])
	}
	t.Logf("%d watch events compared", len(evs[0]))
}

func testLeaseSurvivesRestart(t *testing.T) {
	cfg := server.Config{
		Backend:          "badger",
		DataDir:          t.TempDir(),
		ListenClientURLs: []string{"http://127.0.0.1:0"},
		Logger:           slog.New(slog.DiscardHandler),
	}
	start := func() (*server.Server, *clientv3.Client) {
		s, err := server.New(cfg)
		if err != nil {
			t.Fatalf("new: %v", err)
		}
		if err := s.Start(); err != nil {
			t.Fatalf("start: %v", err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s, testenv.NewClient(t, s.ClientURLs()...)
	}
	ctx := context.Background()
	s1, c1 := start()
	lc := pb.NewLeaseClient(c1.ActiveConnection())
	for _, g := range []struct{ id, ttl int64 }{{0x501, 3}, {0x502, 600}, {0x503, 600}, {0x504, 600}} {
		if _, err := lc.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: g.id, TTL: g.ttl}); err != nil {
			t.Fatalf("grant %#x: %v", g.id, err)
		}
	}
	for _, p := range []struct {
		key   string
		lease int64
	}{{"r/a1", 0x501}, {"r/a2", 0x501}, {"r/b1", 0x502}, {"r/b2", 0x502}, {"r/b3", 0x502}, {"r/d1", 0x504}} {
		if _, err := c1.Put(ctx, p.key, "v", clientv3.WithLease(clientv3.LeaseID(p.lease))); err != nil {
			t.Fatalf("put %s: %v", p.key, err)
		}
	}
	if _, err := c1.Revoke(ctx, 0x504); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	before, err := c1.Get(ctx, "r/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	closing := time.Now()
	c1.Close()
	if err := s1.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	s2, c2 := start()
	_ = s2
	t.Logf("restarted in %v", time.Since(closing).Round(time.Millisecond))

	r, err := c2.Leases(ctx)
	if err != nil {
		t.Fatalf("Leases: %v", err)
	}
	var ids []int64
	for _, l := range r.Leases {
		ids = append(ids, int64(l.ID))
	}
	slices.Sort(ids)
	if want := []int64{0x501, 0x502, 0x503}; !slices.Equal(ids, want) {
		t.Errorf("leases after restart: %#x, want %#x", ids, want)
	}
	for _, c := range []struct {
		id      int64
		granted int64
		keys    []string
	}{{0x501, 3, []string{"r/a1", "r/a2"}}, {0x502, 600, []string{"r/b1", "r/b2", "r/b3"}}, {0x503, 600, nil}} {
		got, ttl := lsTimeToLive(t, c2, c.id)
		if got.GrantedTTL != c.granted || !slices.Equal(got.Keys, c.keys) || got.Gone {
			t.Errorf("TimeToLive(%#x) after restart: %+v, want granted %d keys %v", c.id, got, c.granted, c.keys)
		}
		// The TTL restarts on recovery (plus at most a second).
		if ttl < c.granted-2 || ttl > c.granted+1 {
			t.Errorf("TimeToLive(%#x) after restart: TTL %d, want about %d (restarted)", c.id, ttl, c.granted)
		}
	}
	after, err := c2.Get(ctx, "r/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(normKVs(before.Kvs), normKVs(after.Kvs)); d != "" {
		t.Errorf("keys after restart differ (-before +after):\n%s", d)
	}
	if got, _ := lsTimeToLive(t, c2, 0x504); !got.Gone {
		t.Errorf("revoked lease 0x504 after restart: %+v, want TTL -1", got)
	}
	if _, err := c2.Revoke(ctx, 0x504); !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		t.Errorf("revoke of lease revoked before the restart: %v, want %v", err, rpctypes.ErrLeaseNotFound)
	}

	// The short lease still expires, and the long one can be revoked, both
	// with DELETE events.
	s := &lsSide{name: "axon", cli: c2, wake: make(chan struct{}, 1)}
	s.watch(t, "r/")
	s.waitDeleted(t, 15*time.Second, "r/a1", "r/a2")
	t.Logf("short lease expired %v after the restart began", time.Since(closing).Round(10*time.Millisecond))
	if _, err := c2.Revoke(ctx, 0x502); err != nil {
		t.Fatalf("revoke after restart: %v", err)
	}
	s.waitDeleted(t, 5*time.Second, "r/b1", "r/b2", "r/b3")
	if k := s.keys(t, "r/"); len(k) != 0 {
		t.Errorf("keys left after expiry and revoke: %v", k)
	}
	if _, err := pb.NewLeaseClient(c2.ActiveConnection()).LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: 0x501, TTL: 60}); err != nil {
		t.Errorf("re-grant of the expired lease ID: %v", err)
	}
}
