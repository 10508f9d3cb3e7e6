// Package powerloss cuts the power under a real axon process many times
// and checks what it recovers. The data dir sits on internal/lazyfs, which
// keeps only what was fsynced (or msynced), so a cut loses exactly what a
// machine losing power could lose.
package powerloss

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/axon-kv/axon/internal/lazyfs"
	"github.com/axon-kv/axon/internal/testenv"
	"github.com/axon-kv/axon/witness"
)

const (
	writers     = 4
	keysPerW    = 150 // keys each writer cycles through
	valueSize   = 512
	leaseTTL    = 3600 // never expires within a run: every lease change is one we asked for
	callTimeout = 10 * time.Second
)

// kv is a key's state in the model; absent keys are not in the map.
type kv struct {
	val   string
	mod   int64
	lease clientv3.LeaseID
}

// event is one change an acknowledged revision made.
type event struct {
	key, val string
	del      bool
}

// writer owns the keys under its prefix, so its model of them is exact:
// after each acknowledged request it knows every key's value and
// mod_revision. Only the one request in flight at the cut is uncertain.
type writer struct {
	id      int
	rng     *rand.Rand
	keys    map[string]kv
	lease   clientv3.LeaseID // current lease, 0 if none
	leases  map[clientv3.LeaseID]bool
	revoked []clientv3.LeaseID
	seq     int

	// The request in flight when the power went, if any: the keys it may
	// have changed and their state if it did.
	inflight map[string]*kv
	revoking clientv3.LeaseID  // a revoke in flight at the cut
	acked    map[int64][]event // this cycle's acknowledged revisions
	all      map[int64][]event // acknowledged revisions not yet compacted
	lastAck  int64
}

func (w *writer) key(i int) string { return fmt.Sprintf("pl/w%d/k%03d", w.id, i) }

func (w *writer) value() string {
	w.seq++
	v := fmt.Sprintf("w%d-s%d-", w.id, w.seq)
	return v + strings.Repeat(string(rune('a'+w.seq%26)), valueSize-len(v))
}

// run issues requests until stop is closed or a request fails. It records
// each acknowledged revision. An error after stop is closed is the power
// cut's; before, it is reported.
func (w *writer) run(cli *clientv3.Client, stop <-chan struct{}) error {
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		if err := w.step(cli); err != nil {
			select {
			case <-stop:
				return nil
			default:
				return err
			}
		}
	}
}

func (w *writer) step(cli *clientv3.Client) error {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	k := w.key(w.rng.IntN(keysPerW))
	cur, exists := w.keys[k]
	switch r := w.rng.IntN(100); {
	case r < 40: // plain put
		v := w.value()
		w.inflight = map[string]*kv{k: {val: v}}
		resp, err := cli.Put(ctx, k, v)
		if err != nil {
			return err
		}
		w.ackPut(k, v, resp.Header.Revision, 0)
	case r < 70: // Txn create if absent, else update if unchanged
		v := w.value()
		var cmp clientv3.Cmp
		if exists {
			cmp = clientv3.Compare(clientv3.ModRevision(k), "=", cur.mod)
		} else {
			cmp = clientv3.Compare(clientv3.CreateRevision(k), "=", 0)
		}
		w.inflight = map[string]*kv{k: {val: v}}
		resp, err := cli.Txn(ctx).If(cmp).Then(clientv3.OpPut(k, v)).Commit()
		if err != nil {
			return err
		}
		if !resp.Succeeded {
			return fmt.Errorf("txn on %s failed its compare (model: exists=%v mod=%d): the store lost or changed the key", k, exists, cur.mod)
		}
		w.ackPut(k, v, resp.Header.Revision, 0)
	case r < 82: // put with a lease
		if w.lease == 0 {
			resp, err := cli.Grant(ctx, leaseTTL)
			if err != nil {
				return err
			}
			w.lease = resp.ID
			w.leases[resp.ID] = true
			return nil
		}
		v := w.value()
		w.inflight = map[string]*kv{k: {val: v, lease: w.lease}}
		resp, err := cli.Put(ctx, k, v, clientv3.WithLease(w.lease))
		if err != nil {
			return err
		}
		w.ackPut(k, v, resp.Header.Revision, w.lease)
	case r < 85: // revoke the lease: its keys go
		if w.lease == 0 {
			return nil
		}
		id := w.lease
		w.revoking = id
		w.inflight = map[string]*kv{}
		for key, s := range w.keys {
			if s.lease == id {
				w.inflight[key] = nil
			}
		}
		if _, err := cli.Revoke(ctx, id); err != nil {
			return err
		}
		for key := range w.inflight {
			delete(w.keys, key)
		}
		delete(w.leases, id)
		w.revoked = append(w.revoked, id)
		w.lease = 0
		w.inflight, w.revoking = nil, 0
	case r < 90: // DeleteRange over ten of this writer's keys
		lo := w.rng.IntN(keysPerW - 10)
		from, to := w.key(lo), w.key(lo+10)
		w.inflight = map[string]*kv{}
		for key := range w.keys {
			if key >= from && key < to {
				w.inflight[key] = nil
			}
		}
		resp, err := cli.Delete(ctx, from, clientv3.WithRange(to), clientv3.WithPrevKV())
		if err != nil {
			return err
		}
		if int(resp.Deleted) != len(w.inflight) {
			return fmt.Errorf("delete [%s, %s) deleted %d keys, the model holds %d", from, to, resp.Deleted, len(w.inflight))
		}
		if resp.Deleted > 0 {
			var evs []event
			for _, p := range resp.PrevKvs {
				evs = append(evs, event{key: string(p.Key), del: true})
			}
			w.acked[resp.Header.Revision] = evs
			w.lastAck = resp.Header.Revision
		}
		for key := range w.inflight {
			delete(w.keys, key)
		}
		w.inflight = nil
	default: // read back a key: the store serves what it acknowledged
		w.inflight = nil
		resp, err := cli.Get(ctx, k)
		if err != nil {
			return err
		}
		if exists != (len(resp.Kvs) == 1) || exists && (string(resp.Kvs[0].Value) != cur.val || resp.Kvs[0].ModRevision != cur.mod) {
			return fmt.Errorf("get %s does not match the last acknowledged write (exists=%v mod=%d)", k, exists, cur.mod)
		}
	}
	return nil
}

func (w *writer) ackPut(k, v string, rev int64, lease clientv3.LeaseID) {
	w.keys[k] = kv{val: v, mod: rev, lease: lease}
	w.acked[rev] = []event{{key: k, val: v}}
	w.lastAck = rev
	w.inflight = nil
}

func cycles(t *testing.T) int {
	n := 10
	if s := os.Getenv("POWERLOSS_CYCLES"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("POWERLOSS_CYCLES=%q: want a positive number", s)
		}
		n = v
	}
	return n
}

// TestPowerLoss runs axon on a lazyfs mount under concurrent writers, cuts
// the power at a random moment, and restarts it on what was durable, many
// times over. After every cut the store must open, keep its identity, hold
// every acknowledged write at its revision, have no revision gaps, and
// keep every acknowledged lease grant, revoke and compaction.
//
// POWERLOSS_CYCLES sets the number of cuts (10 by default);
// POWERLOSS_STRICT=1 mounts with strict POSIX directory semantics (a new
// file's name is durable only after its directory is fsynced) instead of
// ordered metadata (ext4, XFS: any fsync also makes earlier names durable);
// POWERLOSS_SEED fixes the random choices.
func TestPowerLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("builds axon and mounts FUSE; skipped with -short")
	}
	if err := lazyfs.Usable(); err != nil {
		t.Skipf("FUSE not usable here, cannot simulate power loss: %v", err)
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("POWERLOSS_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	opts := lazyfs.Options{OrderedMetadata: os.Getenv("POWERLOSS_STRICT") != "1"}
	n := cycles(t)
	t.Logf("%d cycles, seed %d (POWERLOSS_SEED), ordered metadata %v", n, seed, opts.OrderedMetadata)
	rng := rand.New(rand.NewPCG(seed, 1))

	bin := testenv.BuildAxon(t)
	root := t.TempDir()
	backing, mnt := filepath.Join(root, "backing"), filepath.Join(root, "mnt")
	for _, d := range []string{backing, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dataDir := filepath.Join(mnt, "data")

	ws := make([]*writer, writers)
	for i := range ws {
		ws[i] = &writer{id: i, rng: rand.New(rand.NewPCG(seed, uint64(i+2))), keys: map[string]kv{}, leases: map[clientv3.LeaseID]bool{}, all: map[int64][]event{}}
	}
	var (
		storeID     string
		highestAck  int64
		compactAck  int64 // highest acknowledged compaction
		totalAcked  int
		totalEvents int
		pending     []string // what the last cut discarded, for failure messages
	)
	start := time.Now()
	for cycle := range n {
		fs, err := lazyfs.Mount(backing, mnt, opts)
		if err != nil {
			if cycle == 0 {
				t.Skipf("FUSE mount refused here: %v", err)
			}
			t.Fatalf("cycle %d: remount: %v", cycle, err)
		}
		// Runs after the process is killed (cleanups run last first).
		t.Cleanup(func() { fs.CutPower(); _ = fs.Unmount() })
		if cycle == 0 {
			if err := os.Mkdir(dataDir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		p := testenv.StartAxonProcess(t, bin, dataDir)
		if cycle > 0 {
			lost := pending
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("what the cut before cycle %d threw away:\n%s", cycle, strings.Join(lost, "\n"))
				}
			})
		}
		cli := p.WaitReady(t)

		// Identity: the witness names the same store every time.
		rec, ok, err := witness.Read(filepath.Join(backing, "data"))
		switch {
		case err != nil || !ok:
			t.Fatalf("cycle %d: witness after start: ok=%v err=%v", cycle, ok, err)
		case storeID == "":
			storeID = rec.StoreID
		case rec.StoreID != storeID:
			t.Fatalf("cycle %d: store identity changed from %s to %s", cycle, storeID, rec.StoreID)
		}

		if cycle > 0 {
			ev := verify(t, cycle, cli, ws, highestAck, compactAck)
			totalEvents += ev
		}
		if t.Failed() {
			fs.CutPower()
			_ = p.Cmd.Process.Kill()
			_ = fs.Unmount()
			return
		}

		// Load, then cut at a random moment.
		for _, w := range ws {
			w.acked = map[int64][]event{}
			w.inflight, w.revoking = nil, 0
		}
		loadFor := time.Duration(300+rng.IntN(1700)) * time.Millisecond
		crng := rand.New(rand.NewPCG(seed, uint64(1000+cycle)))
		stop := make(chan struct{})
		var wg sync.WaitGroup
		errs := make(chan error, writers+1)
		for _, w := range ws {
			wg.Go(func() {
				if err := w.run(cli, stop); err != nil {
					errs <- fmt.Errorf("writer %d before the cut: %w", w.id, err)
				}
			})
		}
		var compactMu sync.Mutex
		cycleCompact := compactAck
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(time.Duration(50+crng.IntN(200)) * time.Millisecond):
				}
				ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
				resp, err := cli.Get(ctx, "pl/none")
				if err == nil && resp.Header.Revision > 300 {
					at := resp.Header.Revision - 300
					if _, err = cli.Compact(ctx, at); err == nil {
						compactMu.Lock()
						cycleCompact = max(cycleCompact, at)
						compactMu.Unlock()
					} else if errors.Is(err, rpctypes.ErrCompacted) {
						err = nil
					}
				}
				cancel()
				if err != nil {
					select {
					case <-stop:
					default:
						errs <- fmt.Errorf("compactor before the cut: %w", err)
					}
					return
				}
			}
		})
		time.Sleep(loadFor)
		close(stop) // first: errors from here on are the cut's
		fs.CutPower()
		if err := p.Cmd.Process.Kill(); err != nil {
			t.Fatalf("kill -9: %v", err)
		}
		_ = p.WaitExit(t, time.Minute)
		wg.Wait()
		cli.Close()
		pending = fs.Pending()
		st := fs.Stats()
		if err := fs.Unmount(); err != nil {
			t.Fatalf("cycle %d: unmount after the cut: %v", cycle, err)
		}
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		acked := 0
		compactMu.Lock()
		compactAck = cycleCompact
		compactMu.Unlock()
		for _, w := range ws {
			for rev, evs := range w.acked {
				highestAck = max(highestAck, rev)
				w.all[rev] = evs
			}
			acked += len(w.acked)
			for rev := range w.all {
				if rev <= compactAck {
					delete(w.all, rev)
				}
			}
		}
		totalAcked += acked
		t.Logf("cycle %d: cut after %v: %d acknowledged writes, highest acknowledged revision %d, compacted at %d; lazyfs saw %d writes, %d file and %d dir fsyncs, %d bytes made durable; %d things not durable at the cut",
			cycle, loadFor, acked, highestAck, compactAck, st.Writes, st.FileSyncs, st.DirSyncs, st.BytesSynced, len(pending))
		if acked == 0 {
			t.Fatalf("cycle %d: no write acknowledged before the cut: the test checks nothing", cycle)
		}
		if t.Failed() {
			return
		}
	}

	// One more start to check the last cut.
	fs, err := lazyfs.Mount(backing, mnt, opts)
	if err != nil {
		t.Fatalf("final remount: %v", err)
	}
	t.Cleanup(func() { fs.CutPower(); _ = fs.Unmount() })
	p := testenv.StartAxonProcess(t, bin, dataDir)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("what the last cut threw away:\n%s", strings.Join(pending, "\n"))
		}
	})
	cli := p.WaitReady(t)
	defer cli.Close()
	totalEvents += verify(t, n, cli, ws, highestAck, compactAck)
	t.Logf("%d power cuts in %v: %d acknowledged writes, %d watch events checked, final revision ≥ %d",
		n, time.Since(start).Round(time.Millisecond), totalAcked, totalEvents, highestAck)
}

// verify checks the restarted store against the writers' models and
// returns the number of watch events it checked. It resolves each
// writer's in-flight request to what the store holds, if that is one of
// the two allowed outcomes.
func verify(t *testing.T, cycle int, cli *clientv3.Client, ws []*writer, highestAck, compactAck int64) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := cli.Get(ctx, "pl/", clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("cycle %d: get all: %v", cycle, err)
	}
	cur := resp.Header.Revision
	if cur < highestAck {
		t.Errorf("cycle %d: store revision %d after restart, below the highest acknowledged %d", cycle, cur, highestAck)
	}
	got := map[string]*mvccpb.KeyValue{}
	for _, k := range resp.Kvs {
		got[string(k.Key)] = k
	}
	bad := 0
	report := func(format string, args ...any) {
		bad++
		if bad <= 20 {
			t.Errorf("cycle %d: "+format, append([]any{cycle}, args...)...)
		}
	}
	for _, w := range ws {
		prefix := fmt.Sprintf("pl/w%d/", w.id)
		seen := map[string]bool{}
		for k := range got {
			if strings.HasPrefix(k, prefix) {
				seen[k] = true
			}
		}
		for k := range w.keys {
			seen[k] = true
		}
		for k := range seen {
			want, had := w.keys[k]
			g := got[k]
			matches := func(s kv, present bool) bool {
				if !present {
					return g == nil
				}
				return g != nil && string(g.Value) == s.val && (s.mod == 0 || g.ModRevision == s.mod) && clientv3.LeaseID(g.Lease) == s.lease
			}
			if matches(want, had) {
				continue
			}
			// The request in flight at the cut may have become durable
			// without being acknowledged.
			if after, touched := w.inflight[k]; touched {
				if after == nil && g == nil {
					delete(w.keys, k)
					continue
				}
				if after != nil && matches(*after, true) && g.ModRevision > w.lastAck {
					w.keys[k] = kv{val: after.val, mod: g.ModRevision, lease: after.lease}
					continue
				}
			}
			switch {
			case g == nil:
				report("acknowledged write lost: %s (mod_revision %d) is absent", k, want.mod)
			case !had:
				report("%s present (mod_revision %d) but acknowledged as deleted", k, g.ModRevision)
			default:
				report("%s: mod_revision %d value %.20q lease %x, acknowledged mod_revision %d value %.20q lease %x",
					k, g.ModRevision, g.Value, g.Lease, want.mod, want.val, want.lease)
			}
		}
		w.inflight = nil
		// Leases: acknowledged grants live on, acknowledged revokes stay.
		for id := range w.leases {
			ttl, err := cli.TimeToLive(ctx, id)
			if id == w.revoking && err == nil && ttl.TTL <= 0 {
				delete(w.leases, id) // the revoke in flight at the cut took
				if w.lease == id {
					w.lease = 0
				}
				continue
			}
			if err != nil || ttl.TTL <= 0 {
				report("acknowledged lease %x lost after restart (TTL %v, err %v)", id, ttlOf(ttl), err)
			}
		}
		for _, id := range w.revoked {
			if ttl, err := cli.TimeToLive(ctx, id); err == nil && ttl.TTL > 0 {
				report("lease %x revoked (acknowledged) but alive after restart", id)
			}
		}
		w.revoked, w.revoking = nil, 0
	}
	if compactAck > 1 {
		if _, err := cli.Get(ctx, "pl/none", clientv3.WithRev(compactAck-1)); !errors.Is(err, rpctypes.ErrCompacted) {
			report("compaction at %d was acknowledged, but a read at %d gives %v, not ErrCompacted", compactAck, compactAck-1, err)
		}
	}

	// Every revision from the first uncompacted one to the current one,
	// with no gaps, and every acknowledged one exactly as acknowledged.
	from := compactAck + 1
	events := map[int64][]event{}
	n := 0
	if from <= cur {
		wctx, wcancel := context.WithCancel(ctx)
		defer wcancel()
		wch := cli.Watch(wctx, "", clientv3.WithFromKey(), clientv3.WithRev(from))
	loop:
		for {
			wr, ok := <-wch
			if !ok {
				break
			}
			if wr.CompactRevision != 0 {
				// A compaction in flight at the cut became durable.
				from = wr.CompactRevision
				wch = cli.Watch(wctx, "", clientv3.WithFromKey(), clientv3.WithRev(from))
				continue
			}
			if err := wr.Err(); err != nil {
				t.Fatalf("cycle %d: watch from %d: %v", cycle, from, err)
			}
			for _, e := range wr.Events {
				n++
				rev := e.Kv.ModRevision
				events[rev] = append(events[rev], event{key: string(e.Kv.Key), val: string(e.Kv.Value), del: e.Type == mvccpb.DELETE})
			}
			// A revision's events come in one response: stop after it.
			if l := len(wr.Events); l > 0 && wr.Events[l-1].Kv.ModRevision >= cur {
				break loop
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("cycle %d: watch from %d did not reach revision %d", cycle, from, cur)
		}
	}
	for rev := from; rev <= cur; rev++ {
		if len(events[rev]) == 0 {
			report("revision gap: watch from %d to %d delivers nothing at %d", from, cur, rev)
		}
	}
	for _, w := range ws {
		for rev, want := range w.all {
			if rev < from {
				continue // compacted away; the key check above covers it
			}
			g := slices.Clone(events[rev])
			sortEvents(g)
			sortEvents(want)
			if !slices.Equal(g, want) {
				report("acknowledged revision %d: watch delivers %s, acknowledged %s", rev, describe(g), describe(want))
			}
		}
	}
	if bad > 20 {
		t.Errorf("cycle %d: ... %d problems in all", cycle, bad)
	}
	return n
}

func ttlOf(r *clientv3.LeaseTimeToLiveResponse) any {
	if r == nil {
		return "none"
	}
	return r.TTL
}

func sortEvents(e []event) {
	slices.SortFunc(e, func(a, b event) int { return strings.Compare(a.key, b.key) })
}

func describe(e []event) string {
	var parts []string
	for _, x := range e {
		if x.del {
			parts = append(parts, "delete "+x.key)
		} else {
			parts = append(parts, fmt.Sprintf("put %s=%.16s…", x.key, x.val))
		}
	}
	if len(parts) == 0 {
		return "nothing"
	}
	return strings.Join(parts, ", ")
}
