package tikv_test

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	tikvstore "github.com/tikv/client-go/v2/tikv"
	"github.com/tikv/client-go/v2/tikvrpc"
	"github.com/tikv/client-go/v2/util/codec"

	"github.com/axon-kv/axon/backend"
	"github.com/axon-kv/axon/backend/backendtest"
	"github.com/axon-kv/axon/backend/tikv"
	"github.com/axon-kv/axon/backend/tikv/tikvtest"
)

// splitKeys cut the default keyspace into regions at the edges the
// conformance suite's keys probe (0x00 and 0xff continuations, the a/ and
// b/ prefixes, the middle of the 100-key batches) and just outside it.
var splitKeys = func() [][]byte {
	var out [][]byte
	for _, k := range []string{
		"axon", "axon/", "axon/\x00\xff", "axon/a", "axon/a\x00\x00", "axon/a\xff",
		"axon/a/2", "axon/b", "axon/b\x00", "axon/b/2", "axon/counter",
		"axon/k050", "axon/many/050", "axon/out05", "axon/\xff", "axon/\xff\xff", "axon0",
	} {
		out = append(out, []byte(k))
	}
	return out
}()

func TestTiKVConformance(t *testing.T) {
	t.Run("SingleRegion", func(t *testing.T) {
		backendtest.Run(t, func(t *testing.T) backend.Backend {
			return tikvtest.NewMock(t)
		})
	})
	t.Run("MultiRegion", func(t *testing.T) {
		backendtest.Run(t, func(t *testing.T) backend.Backend {
			return tikvtest.NewCluster(t, splitKeys...).Open(t, tikvtest.Options())
		})
	})
	// Production defaults: every commit asks for 1PC and async commit,
	// the mock declines, and client-go falls back to two-phase commit.
	t.Run("FastCommitFallback", func(t *testing.T) {
		backendtest.Run(t, func(t *testing.T) backend.Backend {
			return tikvtest.NewCluster(t, splitKeys...).Open(t, tikv.Options{})
		})
	})
	// A prefix ending in 0xff, whose end is not prefix+1.
	t.Run("OtherPrefix", func(t *testing.T) {
		backendtest.Run(t, func(t *testing.T) backend.Backend {
			opts := tikvtest.Options()
			opts.Prefix = "x\xff"
			return tikvtest.NewCluster(t, []byte("x\xff\xff"), []byte("y")).Open(t, opts)
		})
	})
}

func put(t *testing.T, be backend.Backend, kvs ...string) {
	t.Helper()
	var b backend.Batch
	for i := 0; i < len(kvs); i += 2 {
		b.Put([]byte(kvs[i]), []byte(kvs[i+1]))
	}
	if err := be.Commit(&b); err != nil {
		t.Fatalf("Commit: %v", err)
	}
}

// get reads key in a fresh snapshot; "" with ok false when absent.
func get(t *testing.T, be backend.Backend, key string) (string, bool) {
	t.Helper()
	s, err := be.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	v, err := s.Get([]byte(key))
	if errors.Is(err, backend.ErrNotFound) {
		return "", false
	}
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	return string(v), true
}

func want(t *testing.T, be backend.Backend, key, value string) {
	t.Helper()
	v, ok := get(t, be, key)
	switch {
	case value == "" && ok:
		t.Fatalf("%q = %q; want absent", key, v)
	case value != "" && v != value:
		t.Fatalf("%q = %q (present %v); want %q", key, v, ok, value)
	}
}

func keys(t *testing.T, be backend.Backend) []string {
	t.Helper()
	s, err := be.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var out []string
	if err := s.Scan(nil, nil, backend.ScanOptions{KeysOnly: true}, func(k, _ []byte) error {
		out = append(out, string(k))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestTiKVSnapshotBeforeCommit: a snapshot taken before a commit does not
// see it, whether the commit came through the same DB or through another
// process's client; one taken after does.
func TestTiKVSnapshotBeforeCommit(t *testing.T) {
	c := tikvtest.NewCluster(t, splitKeys...)
	a := c.Open(t, tikvtest.Options())
	b := c.Open(t, tikvtest.Options())
	put(t, a, "k", "v0", "gone", "g0")

	before, err := a.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()

	var batch backend.Batch
	batch.Put([]byte("k"), []byte("v1"))
	batch.Delete([]byte("gone"))
	batch.Put([]byte("new"), []byte("n1"))
	if err := b.Commit(&batch); err != nil {
		t.Fatal(err)
	}

	for k, v := range map[string]string{"k": "v0", "gone": "g0"} {
		got, err := before.Get([]byte(k))
		if err != nil || string(got) != v {
			t.Fatalf("old snapshot: %q = %q, %v; want %q", k, got, err, v)
		}
	}
	if _, err := before.Get([]byte("new")); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("old snapshot sees a later key: %v", err)
	}
	var seen []string
	if err := before.Scan(nil, nil, backend.ScanOptions{Reverse: true}, func(k, v []byte) error {
		seen = append(seen, string(k)+"="+string(v))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if w := []string{"k=v0", "gone=g0"}; !slices.Equal(seen, w) {
		t.Fatalf("old snapshot scan = %q; want %q", seen, w)
	}

	// Both DBs see the commit in snapshots taken after it returned.
	for _, be := range []*tikv.DB{a, b} {
		want(t, be, "k", "v1")
		want(t, be, "gone", "")
		want(t, be, "new", "n1")
	}
}

// conflict runs a conditional batch on a whose transaction, after it read
// and checked its conditions, is overtaken by interfere committing on b.
func conflict(t *testing.T, a, b *tikv.DB, batch *backend.Batch, interfere *backend.Batch) error {
	t.Helper()
	var once sync.Once
	a.SetTestHookBeforeWrite(func() {
		once.Do(func() {
			if err := b.Commit(interfere); err != nil {
				t.Errorf("interfering commit: %v", err)
			}
		})
	})
	defer a.SetTestHookBeforeWrite(nil)
	return a.Commit(batch)
}

// TestTiKVWriteConflict: two DBs on one cluster (two Axon processes) make
// conflicting conditional commits; exactly one wins and nothing of the
// other is written.
func TestTiKVWriteConflict(t *testing.T) {
	cas := func(old, new, marker string) *backend.Batch {
		return &backend.Batch{
			Conditions: []backend.Condition{{Key: []byte("k"), Value: []byte(old)}},
			Ops: []backend.Op{
				{Key: []byte("k"), Value: []byte(new)},
				{Key: []byte(marker), Value: []byte("x")},
			},
		}
	}
	// Fencing: the condition key is read, not written, by the loser; the
	// winner changes it. Without the condition keys taking part in
	// conflict detection the loser would commit on a stale read.
	fenced := func(term, marker string) *backend.Batch {
		return &backend.Batch{
			Conditions: []backend.Condition{{Key: []byte("term"), Value: []byte(term)}},
			Ops:        []backend.Op{{Key: []byte(marker), Value: []byte("x")}},
		}
	}
	for _, tc := range []struct {
		name         string
		retries      int
		loser        *backend.Batch
		winner       *backend.Batch
		wantErr      error
		wantAttempts uint64
	}{
		{"CAS/Retry", 0, cas("v0", "A", "markA"), cas("v0", "B", "markB"), backend.ErrConditionFailed, 2},
		{"CAS/NoRetry", -1, cas("v0", "A", "markA"), cas("v0", "B", "markB"), tikv.ErrWriteConflict, 1},
		{"Fence/Retry", 0, fenced("1", "markA"), &backend.Batch{Ops: []backend.Op{{Key: []byte("term"), Value: []byte("2")}}}, backend.ErrConditionFailed, 2},
		{"Fence/NoRetry", -1, fenced("1", "markA"), &backend.Batch{Ops: []backend.Op{{Key: []byte("term"), Value: []byte("2")}}}, tikv.ErrWriteConflict, 1},
		// Rewriting the condition key with the value it had is still a
		// conflicting write; the retry finds the condition holding and
		// commits.
		{"SameValue/Retry", 0, cas("v0", "A", "markA"), cas("v0", "v0", "markB"), nil, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, regions := range []string{"single", "multi"} {
				t.Run(regions, func(t *testing.T) {
					var c *tikvtest.Cluster
					if regions == "single" {
						c = tikvtest.NewCluster(t)
					} else {
						c = tikvtest.NewCluster(t, splitKeys...)
					}
					opts := tikvtest.Options()
					opts.ConflictRetries = tc.retries
					a, b := c.Open(t, opts), c.Open(t, opts)
					put(t, a, "k", "v0", "term", "1")

					before := a.Stats()
					err := conflict(t, a, b, tc.loser, tc.winner)
					if !errors.Is(err, tc.wantErr) {
						t.Fatalf("loser's Commit = %v; want %v", err, tc.wantErr)
					}
					st := a.Stats().Sub(before)
					if st.Conflicts != 1 || st.Attempts != tc.wantAttempts {
						t.Errorf("loser's stats %+v; want 1 conflict in %d attempts", st, tc.wantAttempts)
					}
					if tc.wantErr == nil {
						want(t, b, "markA", "x")
						return
					}
					want(t, b, "markA", "")
					if strings.HasPrefix(tc.name, "CAS") {
						want(t, b, "markB", "x")
						want(t, a, "k", "B")
					} else {
						want(t, a, "term", "2")
					}
				})
			}
		})
	}
}

// TestTiKVCreateRace: writers on two DBs race to create the same key, each
// with its own value; exactly one wins and every other gets
// ErrConditionFailed, with or without retries.
func TestTiKVCreateRace(t *testing.T) {
	for _, retries := range []int{0, -1} {
		t.Run(fmt.Sprintf("retries=%d", retries), func(t *testing.T) {
			c := tikvtest.NewCluster(t, splitKeys...)
			opts := tikvtest.Options()
			opts.ConflictRetries = retries
			dbs := []*tikv.DB{c.Open(t, opts), c.Open(t, opts)}
			const writers = 6
			for round := range 5 {
				key := fmt.Sprintf("lock/%d", round)
				var wg sync.WaitGroup
				errs := make([]error, writers)
				for w := range writers {
					wg.Go(func() {
						errs[w] = dbs[w%2].Commit(&backend.Batch{
							Conditions: []backend.Condition{{Key: []byte(key)}},
							Ops: []backend.Op{
								{Key: []byte(key), Value: fmt.Appendf(nil, "w%d", w)},
								{Key: fmt.Appendf(nil, "owner/%d/w%d", round, w), Value: []byte("x")},
							},
						})
					})
				}
				wg.Wait()
				winner := -1
				for w, err := range errs {
					switch {
					case err == nil:
						if winner >= 0 {
							t.Fatalf("round %d: writers %d and %d both won", round, winner, w)
						}
						winner = w
					case errors.Is(err, backend.ErrConditionFailed):
					case retries < 0 && errors.Is(err, tikv.ErrWriteConflict):
					default:
						t.Fatalf("round %d: writer %d: %v", round, w, err)
					}
				}
				if winner < 0 {
					t.Fatalf("round %d: nobody won: %v", round, errs)
				}
				want(t, dbs[0], key, fmt.Sprintf("w%d", winner))
				var owners []string
				for _, k := range keys(t, dbs[1]) {
					if strings.HasPrefix(k, fmt.Sprintf("owner/%d/", round)) {
						owners = append(owners, k)
					}
				}
				if w := []string{fmt.Sprintf("owner/%d/w%d", round, winner)}; !slices.Equal(owners, w) {
					t.Fatalf("round %d: owner keys %q; want %q", round, owners, w)
				}
			}
		})
	}
}

// TestTiKVPrefix: keys live under the prefix, come back without it, and
// nothing outside it is read or written.
func TestTiKVPrefix(t *testing.T) {
	c := tikvtest.NewCluster(t, splitKeys...)
	def := c.Open(t, tikvtest.Options())
	opts := tikvtest.Options()
	opts.Prefix = "axon" // a prefix of the default one
	wide := c.Open(t, opts)
	opts.Prefix = "other/"
	other := c.Open(t, opts)

	put(t, def, "a", "1", "\xff", "2")
	put(t, other, "a", "other")
	want(t, def, "a", "1")
	want(t, other, "a", "other")
	if got, w := keys(t, def), []string{"a", "\xff"}; !slices.Equal(got, w) {
		t.Fatalf("default prefix keys %q; want %q", got, w)
	}
	if got, w := keys(t, other), []string{"a"}; !slices.Equal(got, w) {
		t.Fatalf("other prefix keys %q; want %q", got, w)
	}
	// The DB with the shorter prefix sees the default one's keys with
	// "/" in front, and only those: its scan must stop at its own end.
	if got, w := keys(t, wide), []string{"/a", "/\xff"}; !slices.Equal(got, w) {
		t.Fatalf("prefix %q keys %q; want %q", "axon", got, w)
	}

	// Raw keys around the default prefix, written by another user of
	// the cluster, stay invisible, in both directions and with limits.
	raw := c.Client(t)
	txn, err := raw.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"axon", "axon.", "axon0", "axon0\x00", "axo\xff"} {
		if err := txn.Set([]byte(k), []byte("foreign")); err != nil {
			t.Fatal(err)
		}
	}
	if err := txn.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	s, err := def.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, rev := range []bool{false, true} {
		for _, limit := range []int{0, 1, 5} {
			var got []string
			if err := s.Scan(nil, nil, backend.ScanOptions{Reverse: rev, Limit: limit}, func(k, v []byte) error {
				got = append(got, string(k))
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			w := []string{"a", "\xff"}
			if rev {
				w = []string{"\xff", "a"}
			}
			if limit > 0 && limit < len(w) {
				w = w[:limit]
			}
			if !slices.Equal(got, w) {
				t.Fatalf("reverse=%v limit=%d: %q; want %q", rev, limit, got, w)
			}
		}
	}

	if _, err := tikv.OpenWithClient(raw, tikv.Options{Prefix: "\xff\xff"}); err == nil {
		t.Fatal("a prefix without an end was accepted")
	}
	if _, err := tikv.Open(tikv.Options{}); err == nil {
		t.Fatal("Open without PD endpoints succeeded")
	}
}

// TestTiKVRoundTrips pins what one Commit costs on the mock and checks the
// engine's timestamp accounting against the requests the mock PD served.
func TestTiKVRoundTrips(t *testing.T) {
	type cost struct{ tso, kv, roundTrips uint64 }
	cond := func(keys ...string) []backend.Condition {
		var out []backend.Condition
		for _, k := range keys {
			out = append(out, backend.Condition{Key: []byte(k), Value: []byte("v")})
		}
		return out
	}
	ops := func(keys ...string) []backend.Op {
		var out []backend.Op
		for _, k := range keys {
			out = append(out, backend.Op{Key: []byte(k), Value: []byte("v")})
		}
		return out
	}
	for _, tc := range []struct {
		name  string
		fast  bool // 1PC and async commit requested (the mock declines)
		multi bool
		batch backend.Batch
		want  cost
	}{
		// TSO start; prewrite; TSO commit; commit.
		{"Put", false, false, backend.Batch{Ops: ops("x")}, cost{2, 2, 4}},
		// TSO start; BatchGet; prewrite; TSO commit; commit.
		{"ConditionalPut", false, false, backend.Batch{Conditions: cond("c"), Ops: ops("x", "y")}, cost{2, 3, 5}},
		// TSO start; BatchGet; nothing to write.
		{"ConditionsOnly", false, false, backend.Batch{Conditions: cond("c", "d")}, cost{1, 1, 2}},
		// Plus the minimum commit timestamp fetched for 1PC / async
		// commit before the mock declines them.
		{"ConditionalPut/Fallback", true, false, backend.Batch{Conditions: cond("c"), Ops: ops("x", "y")}, cost{3, 3, 6}},
		// Three regions: the BatchGet (two regions) and the prewrite
		// (three) fan out in parallel, one round trip each; only the
		// primary's region is committed before Commit returns.
		{"ConditionalPut/ThreeRegions", false, true, backend.Batch{Conditions: cond("c", "y"), Ops: ops("a", "k", "x")}, cost{2, 2 + 3 + 1, 5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c *tikvtest.Cluster
			if tc.multi {
				c = tikvtest.NewCluster(t, []byte("axon/b"), []byte("axon/m"))
			} else {
				c = tikvtest.NewCluster(t)
			}
			opts := tikvtest.Options()
			if tc.fast {
				opts = tikv.Options{}
			}
			// No background timestamp refreshes while counting.
			d, err := tikv.OpenWithClient(c.Client(t, tikvstore.WithUpdateInterval(time.Hour)), opts)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			put(t, d, "c", "v", "d", "v", "y", "v")
			// Wait out the setup's secondary locks (the mock makes reads
			// spin on them until client-go's background commit lands) and
			// warm the region cache.
			if got := keys(t, d); len(got) != 3 {
				t.Fatalf("setup keys %q", got)
			}

			pdBefore, before := c.TSORequests(), d.Stats()
			if err := d.Commit(&tc.batch); err != nil {
				t.Fatal(err)
			}
			st := d.Stats().Sub(before)
			if got := (cost{st.TSORequests, st.KVRequests, st.RoundTrips}); got != tc.want {
				t.Errorf("cost %+v; want %+v (stats %+v)", got, tc.want, st)
			}
			if pd := c.TSORequests() - pdBefore; uint64(pd) != st.TSORequests {
				t.Errorf("mock PD served %d timestamps; stats counted %d", pd, st.TSORequests)
			}
			if len(tc.batch.Ops) > 0 && (st.Commits != 1 || st.TwoPC != 1) {
				t.Errorf("stats %+v; want one two-phase commit", st)
			}
			t.Logf("%s: %d TSO + %d TiKV requests = %d round trips", tc.name, st.TSORequests, st.KVRequests, st.RoundTrips)
		})
	}
}

// TestTiKVLargeBatch commits a batch over TiKV's async-commit key limit
// and over several regions in one transaction.
func TestTiKVLargeBatch(t *testing.T) {
	d := tikvtest.NewCluster(t, splitKeys...).Open(t, tikv.Options{})
	var b backend.Batch
	val := bytes.Repeat([]byte("v"), 1000)
	for i := range 2000 {
		b.Put(fmt.Appendf(nil, "many/%04d", i), val)
	}
	b.Put([]byte("a"), []byte("1"))
	b.Put([]byte("\xff"), []byte("2"))
	if err := d.Commit(&b); err != nil {
		t.Fatal(err)
	}
	if n := len(keys(t, d)); n != 2002 {
		t.Fatalf("%d keys; want 2002", n)
	}
	if d.Size() < 2000*1000 {
		t.Fatalf("Size = %d after writing 2 MB", d.Size())
	}
}

// TestTiKVSizeFromPD: with PD endpoints, Size is PD's approximate size of
// the keyspace's regions, asked over PD's HTTP API with the keyspace's
// bounds in TiKV's key encoding; until PD answers, and when it cannot, it
// is the bytes written.
func TestTiKVSizeFromPD(t *testing.T) {
	var asked atomic.Int64
	pd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if r.URL.Path != "/pd/api/v1/stats/region" ||
			q.Get("start_key") != string(codec.EncodeBytes(nil, []byte("axon/"))) ||
			q.Get("end_key") != string(codec.EncodeBytes(nil, []byte("axon0"))) {
			t.Errorf("unexpected PD request %s", r.URL)
			http.NotFound(w, r)
			return
		}
		asked.Add(1)
		fmt.Fprint(w, `{"count": 3, "empty_count": 0, "storage_size": 7, "storage_keys": 1000}`)
	}))
	defer pd.Close()
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "not ready", http.StatusServiceUnavailable)
	}))
	defer down.Close()

	c := tikvtest.NewCluster(t)
	opts := tikvtest.Options()
	opts.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	// The first endpoint fails; any PD member answers.
	opts.PDEndpoints = []string{down.Listener.Addr().String(), pd.URL + "/"}
	d, err := tikv.OpenWithClient(c.Client(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for deadline := time.Now().Add(5 * time.Second); d.Size() != 7<<20; {
		if time.Now().After(deadline) {
			t.Fatalf("Size = %d after 5s; want PD's 7 MiB", d.Size())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if asked.Load() != 1 {
		t.Fatalf("PD asked %d times; want once", asked.Load())
	}

	// No PD answer: the bytes written (key and value with the prefix and
	// the value header).
	opts.PDEndpoints = []string{down.Listener.Addr().String()}
	d2, err := tikv.OpenWithClient(c.Client(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	put(t, d2, "key", "value")
	if got, w := d2.Size(), int64(len("axon/key")+1+len("value")); got != w {
		t.Fatalf("Size = %d; want %d bytes written", got, w)
	}
}

// TestTiKVUndetermined: when the answer to the request that commits the
// primary key never arrives, Commit cannot know whether the batch was
// applied. It must say so (ErrUndetermined), never retry, and never claim
// a failure: here the mock did apply it.
func TestTiKVUndetermined(t *testing.T) {
	c := tikvtest.NewCluster(t)
	a, b := c.Open(t, tikvtest.Options()), c.Open(t, tikvtest.Options())
	put(t, a, "k", "v0")
	before := a.Stats()

	lost := make(chan struct{}, 1)
	c.SetRPCHook(func(req *tikvrpc.Request, send func() (*tikvrpc.Response, error)) (*tikvrpc.Response, error) {
		if req.Type != tikvrpc.CmdCommit {
			return send()
		}
		resp, err := send()
		if err == nil {
			select {
			case lost <- struct{}{}:
			default:
			}
			err = errors.New("tikvtest: answer lost")
			resp = nil
		}
		return resp, err
	})
	done := make(chan error, 1)
	go func() {
		done <- a.Commit(&backend.Batch{
			Conditions: []backend.Condition{{Key: []byte("k"), Value: []byte("v0")}},
			Ops:        []backend.Op{{Key: []byte("k"), Value: []byte("v1")}},
		})
	}()
	<-lost
	// client-go keeps retrying the commit; closing the DB cancels it.
	time.Sleep(50 * time.Millisecond)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	err := <-done
	c.SetRPCHook(nil)
	if !errors.Is(err, tikv.ErrUndetermined) {
		t.Fatalf("Commit = %v; want ErrUndetermined", err)
	}
	if st := a.Stats().Sub(before); st.Attempts != 1 || st.Errors != 1 || st.Commits+st.TwoPC != 0 {
		t.Fatalf("stats %+v; want one failed attempt", st)
	}
	want(t, b, "k", "v1")
}
