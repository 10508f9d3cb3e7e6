package storage_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/apiserver/pkg/apis/example"
	"k8s.io/apiserver/pkg/features"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/apiserver/pkg/storage/etcd3"
	st "k8s.io/apiserver/pkg/storage/testing"
	"k8s.io/component-base/featuregate"
	testingclock "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
)

// storageCase is one test of the suite: most call one of the exported
// generic tests of k8s.io/apiserver/pkg/storage/testing with a store built
// over the target; a few are this suite's own checks of server behaviour
// the apiserver depends on.
type storageCase struct {
	name string
	opts envOptions
	// gates are feature gates set for the duration of the case.
	gates map[featuregate.Feature]bool
	// compacts: the case compacts the shared server; such cases run last.
	compacts bool
	run      func(t *testing.T, e *env)
}

func storageCases() []storageCase {
	plain := func(name string, f func(ctx context.Context, t *testing.T, s storage.Interface)) storageCase {
		return storageCase{name: name, run: func(t *testing.T, e *env) { f(e.ctx, t, e.store) }}
	}
	withPT := func(e *env) st.InterfaceWithPrefixTransformer { return withPrefixTransformer{e.store, e} }
	cases := []storageCase{
		// Create, Get, Delete.
		{name: "Create", run: func(t *testing.T, e *env) { st.RunTestCreate(e.ctx, t, e.store, e.storedObjectCheck()) }},
		plain("CreateWithTTL", st.RunTestCreateWithTTL),
		plain("CreateWithKeyExist", st.RunTestCreateWithKeyExist),
		plain("Get", st.RunTestGet),
		plain("UnconditionalDelete", st.RunTestUnconditionalDelete),
		plain("ConditionalDelete", st.RunTestConditionalDelete),
		plain("DeleteWithSuggestion", st.RunTestDeleteWithSuggestion),
		plain("DeleteWithSuggestionAndConflict", st.RunTestDeleteWithSuggestionAndConflict),
		plain("DeleteWithSuggestionOfDeletedObject", st.RunTestDeleteWithSuggestionOfDeletedObject),
		plain("ValidateDeletionWithSuggestion", st.RunTestValidateDeletionWithSuggestion),
		plain("ValidateDeletionWithOnlySuggestionValid", st.RunTestValidateDeletionWithOnlySuggestionValid),
		plain("DeleteWithConflict", st.RunTestDeleteWithConflict),
		plain("PreconditionalDeleteWithSuggestion", st.RunTestPreconditionalDeleteWithSuggestion),
		plain("PreconditionalDeleteWithOnlySuggestionPass", st.RunTestPreconditionalDeleteWithOnlySuggestionPass),

		// Lists and pagination.
		plain("ListPaging", st.RunTestListPaging),
		{name: "GetListNonRecursive", run: func(t *testing.T, e *env) {
			st.RunTestGetListNonRecursive(e.ctx, t, e.bumpRevision(), e.store)
		}},
		plain("GetListRecursivePrefix", st.RunTestGetListRecursivePrefix),
		{name: "ConsistentList", run: func(t *testing.T, e *env) {
			st.RunTestConsistentList(e.ctx, t, e.store, e.bumpRevision(), false, true, false)
		}},
		{name: "ListContinuation", run: func(t *testing.T, e *env) {
			st.RunTestListContinuation(e.ctx, t, e.store, e.callsCheck())
		}},
		{
			name: "ListPaginationRareObject",
			// With ListFromCacheSnapshot the store also reads the compaction
			// key, which the call count would include.
			gates: map[featuregate.Feature]bool{features.ListFromCacheSnapshot: false},
			run: func(t *testing.T, e *env) {
				st.RunTestListPaginationRareObject(e.ctx, t, e.store, e.callsCheck())
			},
		},
		{name: "ListContinuationWithFilter", run: func(t *testing.T, e *env) {
			st.RunTestListContinuationWithFilter(e.ctx, t, e.store, e.callsCheck())
		}},
		plain("NamespaceScopedList", st.RunTestNamespaceScopedList),
		{name: "ListResourceVersionMatch", run: func(t *testing.T, e *env) {
			st.RunTestListResourceVersionMatch(e.ctx, t, withPT(e))
		}},

		// Updates and transformers.
		{name: "GuaranteedUpdate", run: func(t *testing.T, e *env) {
			st.RunTestGuaranteedUpdate(e.ctx, t, withPT(e), e.storedObjectCheck())
		}},
		plain("GuaranteedUpdateWithTTL", st.RunTestGuaranteedUpdateWithTTL),
		{name: "GuaranteedUpdateChecksStoredData", run: func(t *testing.T, e *env) {
			st.RunTestGuaranteedUpdateChecksStoredData(e.ctx, t, withPT(e))
		}},
		plain("GuaranteedUpdateWithConflict", st.RunTestGuaranteedUpdateWithConflict),
		plain("GuaranteedUpdateWithSuggestionAndConflict", st.RunTestGuaranteedUpdateWithSuggestionAndConflict),
		{name: "TransformationFailure", run: func(t *testing.T, e *env) {
			st.RunTestTransformationFailure(e.ctx, t, withPT(e))
		}},

		// Watch.
		plain("Watch", st.RunTestWatch),
		plain("ClusterScopedWatch", st.RunTestClusterScopedWatch),
		plain("NamespaceScopedWatch", st.RunTestNamespaceScopedWatch),
		plain("DeleteTriggerWatch", st.RunTestDeleteTriggerWatch),
		plain("WatchFromNonZero", st.RunTestWatchFromNonZero),
		plain("DelayedWatchDelivery", st.RunTestDelayedWatchDelivery),
		{name: "WatchError", run: func(t *testing.T, e *env) { st.RunTestWatchError(e.ctx, t, withPT(e)) }},
		plain("WatchContextCancel", st.RunTestWatchContextCancel),
		plain("WatcherTimeout", st.RunTestWatcherTimeout),
		plain("WatchDeleteEventObjectHaveLatestRV", st.RunTestWatchDeleteEventObjectHaveLatestRV),
		plain("WatchInitializationSignal", st.RunTestWatchInitializationSignal),
		{name: "ProgressNotify", run: func(t *testing.T, e *env) {
			st.RunOptionalTestProgressNotify(e.ctx, t, e.store, e.bumpRevision())
		}},
		{
			name:  "WatchWithUnsafeDelete",
			gates: map[featuregate.Feature]bool{features.AllowUnsafeMalformedObjectDeletion: true},
			run: func(t *testing.T, e *env) {
				st.RunTestWatchWithUnsafeDelete(e.ctx, t, withCorruptTransformer{e.store, e})
			},
		},
		{name: "WatchDispatchBookmarkEvents", run: func(t *testing.T, e *env) {
			// The etcd3 store itself never sends bookmarks.
			st.RunTestWatchDispatchBookmarkEvents(e.ctx, t, e.store, false)
		}},
		plain("SendInitialEventsBackwardCompatibility", st.RunSendInitialEventsBackwardCompatibility),
		plain("WatchSemantics", st.RunWatchSemantics),
		{
			name:  "WatchSemanticsWithConcurrentDecode",
			gates: map[featuregate.Feature]bool{features.ConcurrentWatchObjectDecode: true},
			run:   func(t *testing.T, e *env) { st.RunWatchSemantics(e.ctx, t, e.store) },
		},
		plain("WatchSemanticInitialEventsExtended", st.RunWatchSemanticInitialEventsExtended),
		plain("WatchListMatchSingle", st.RunWatchListMatchSingle),
		{name: "WatchErrorIsBlockingFurtherEvents", run: func(t *testing.T, e *env) {
			st.RunWatchErrorIsBlockingFurtherEvents(e.ctx, t, withPT(e))
		}},

		// Stats (object counts, keys-only ranges).
		{name: "StatsSizeEstimate", gates: map[featuregate.Feature]bool{features.SizeBasedListCostEstimate: true}, run: func(t *testing.T, e *env) {
			e.store.SetKeysFunc(e.keysUnder("/pods"))
			st.RunTestStats(e.ctx, t, e.store, e.codec, e.transformer, true)
		}},
		{name: "StatsCountOnly", gates: map[featuregate.Feature]bool{features.SizeBasedListCostEstimate: false}, run: func(t *testing.T, e *env) {
			e.store.SetKeysFunc(e.keysUnder("/pods"))
			st.RunTestStats(e.ctx, t, e.store, e.codec, e.transformer, false)
		}},

		// This suite's own checks.
		{name: "CurrentResourceVersion", run: testCurrentResourceVersion},
		{name: "ReadsDoNotMoveRevision", run: testReadsDoNotMoveRevision},
		{name: "WatchListTooLargeResourceVersion", gates: map[featuregate.Feature]bool{features.WatchList: true}, run: testWatchListTooLargeRV},

		// Cases that compact: last, in this order.
		{name: "List", compacts: true, run: func(t *testing.T, e *env) {
			st.RunTestList(e.ctx, t, e.store, e.compaction(), false, e.client.Kubernetes.(*st.KubernetesRecorder))
		}},
		{name: "ListInconsistentContinuation", compacts: true, run: func(t *testing.T, e *env) {
			st.RunTestListInconsistentContinuation(e.ctx, t, e.store, e.compaction())
		}},
		{name: "WatchFromZero", compacts: true, run: func(t *testing.T, e *env) {
			st.RunTestWatchFromZero(e.ctx, t, e.store, e.compaction())
		}},
		{
			name: "CompactRevision", compacts: true,
			// The store follows compactions made by others only through the
			// watch on compact_rev_key that ListFromCacheSnapshot starts.
			gates: map[featuregate.Feature]bool{features.ListFromCacheSnapshot: true},
			run: func(t *testing.T, e *env) {
				st.RunTestCompactRevision(e.ctx, t, e.store, e.bumpRevision(), e.compaction())
			},
		},
		{name: "WatchPrevKVAtCompactRevision", compacts: true, run: testWatchPrevKVAtCompactRevision},
		{name: "CompactorCycles", compacts: true, opts: envOptions{fresh: true}, run: testCompactorCycles},
		{name: "CompactionRace", compacts: true, opts: envOptions{fresh: true}, run: testCompactionRace},
	}
	return cases
}

func podKey(ns, name string) string { return "/pods/" + ns + "/" + name }

// testCurrentResourceVersion: GetCurrentResourceVersion is the header
// revision, which moves with unrelated writes while objects keep theirs.
func testCurrentResourceVersion(t *testing.T, e *env) {
	ctx := e.ctx
	out := &example.Pod{}
	if err := e.store.Create(ctx, podKey("ns", "p1"), &example.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p1"}}, out, 0); err != nil {
		t.Fatal(err)
	}
	created, _ := e.store.Versioner().ParseResourceVersion(out.ResourceVersion)
	cur, err := e.store.GetCurrentResourceVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cur != created {
		t.Fatalf("current resourceVersion %d, want the create's %d", cur, created)
	}
	put, err := e.client.KV.Put(ctx, e.prefix+"-unrelated", "x")
	if err != nil {
		t.Fatal(err)
	}
	if cur, err = e.store.GetCurrentResourceVersion(ctx); err != nil {
		t.Fatal(err)
	}
	if cur != uint64(put.Header.Revision) {
		t.Fatalf("current resourceVersion %d after an unrelated put, want %d", cur, put.Header.Revision)
	}
	got := &example.Pod{}
	if err := e.store.Get(ctx, podKey("ns", "p1"), storage.GetOptions{}, got); err != nil {
		t.Fatal(err)
	}
	if got.ResourceVersion != out.ResourceVersion {
		t.Fatalf("object resourceVersion moved from %s to %s", out.ResourceVersion, got.ResourceVersion)
	}
}

// testReadsDoNotMoveRevision: linearizable reads must not bump the revision
// kube-apiserver reports on lists.
func testReadsDoNotMoveRevision(t *testing.T, e *env) {
	ctx := e.ctx
	out := &example.Pod{}
	if err := e.store.Create(ctx, "/reads/k", &example.Pod{ObjectMeta: metav1.ObjectMeta{Name: "k"}}, out, 0); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if _, err := e.client.KV.Get(ctx, e.prefix+"/reads/k"); err != nil {
			t.Fatal(err)
		}
	}
	list := &example.PodList{}
	if err := e.store.GetList(ctx, "/reads", storage.ListOptions{Predicate: storage.Everything, Recursive: true}, list); err != nil {
		t.Fatal(err)
	}
	if list.ResourceVersion != out.ResourceVersion {
		t.Fatalf("list resourceVersion %s after reads, want the create's %s", list.ResourceVersion, out.ResourceVersion)
	}
}

// testWatchListTooLargeRV: a WatchList (sendInitialEvents) from a revision
// beyond the current one ends with a retriable "too large resource version".
func testWatchListTooLargeRV(t *testing.T, e *env) {
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	cur, err := e.store.GetCurrentResourceVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	future := cur + 100
	w, err := e.store.Watch(ctx, "/abc", storage.ListOptions{
		ResourceVersion:   fmt.Sprint(future),
		SendInitialEvents: ptr.To(true),
		Recursive:         true,
		Predicate:         storage.SelectionPredicate{Label: labels.Everything(), Field: fields.Everything(), AllowWatchBookmarks: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	select {
	case ev := <-w.ResultChan():
		status, ok := ev.Object.(*metav1.Status)
		if ev.Type != watch.Error || !ok {
			t.Fatalf("got %s %T, want an Error event with a Status", ev.Type, ev.Object)
		}
		want := storage.NewTooLargeResourceVersionError(future, cur, 0)
		var se *apierrors.StatusError
		if !errors.As(want, &se) {
			t.Fatalf("unexpected error type %T", want)
		}
		if status.Code != se.ErrStatus.Code || status.Reason != se.ErrStatus.Reason || status.Message != se.ErrStatus.Message {
			t.Fatalf("got status %d %s %q, want %d %s %q", status.Code, status.Reason, status.Message, se.ErrStatus.Code, se.ErrStatus.Reason, se.ErrStatus.Message)
		}
		if status.Details == nil || status.Details.RetryAfterSeconds <= 0 {
			t.Fatalf("want a positive RetryAfterSeconds, got %+v", status.Details)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no event within 30s")
	}
}

// testCompactorCycles runs kube-apiserver's compactor with a fake clock on a
// fresh server: the first cycle only records the revision, each later cycle
// compacts to the revision recorded by the cycle before.
func testCompactorCycles(t *testing.T, e *env) {
	ctx := e.ctx
	cli := e.client.Client
	fake := testingclock.NewFakeClock(time.Now())
	c := etcd3.NewCompactor(cli, time.Minute, fake, nil)
	t.Cleanup(c.Stop)
	tick := func() {
		t.Helper()
		waitClockWaiters(t, fake)
		fake.Step(time.Minute)
		waitClockWaiters(t, fake)
	}
	readAt := func(rev int64) error {
		_, err := cli.Get(ctx, "/cycles", clientv3.WithRev(rev))
		return err
	}
	tick()
	if got := c.CompactRevision(); got != 0 {
		t.Fatalf("after the first cycle: compacted %d, want 0 (nothing compacted)", got)
	}
	p1, err := cli.Put(ctx, "/cycles", "1")
	if err != nil {
		t.Fatal(err)
	}
	tick()
	if err := readAt(p1.Header.Revision); err != nil {
		t.Fatalf("second cycle compacted too far: read at %d: %v", p1.Header.Revision, err)
	}
	if got, want := c.CompactRevision(), p1.Header.Revision-1; got != want {
		t.Fatalf("after the second cycle: compacted %d, want %d", got, want)
	}
	p2, err := cli.Put(ctx, "/cycles", "2")
	if err != nil {
		t.Fatal(err)
	}
	tick()
	if err := readAt(p1.Header.Revision); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("third cycle: read at %d: %v, want %v", p1.Header.Revision, err, rpctypes.ErrCompacted)
	}
	if err := readAt(p2.Header.Revision); err != nil {
		t.Fatalf("third cycle compacted too far: read at %d: %v", p2.Header.Revision, err)
	}
	if got, want := c.CompactRevision(), p1.Header.Revision+1; got != want {
		t.Fatalf("after the third cycle: compacted %d, want %d", got, want)
	}
	tick()
	if err := readAt(p2.Header.Revision); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("fourth cycle: read at %d: %v, want %v", p2.Header.Revision, err, rpctypes.ErrCompacted)
	}
	if got, want := c.CompactRevision(), p2.Header.Revision+1; got != want {
		t.Fatalf("after the fourth cycle: compacted %d, want %d", got, want)
	}
}

func waitClockWaiters(t *testing.T, c *testingclock.FakeClock) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !c.HasWaiters() {
		if time.Now().After(deadline) {
			t.Fatal("compactor is not waiting on the clock")
		}
		time.Sleep(time.Millisecond)
	}
}

// testCompactionRace: two kube-apiservers compacting at the same logical
// time; the compare on compact_rev_key's version lets exactly one win.
func testCompactionRace(t *testing.T, e *env) {
	ctx := e.ctx
	cli := e.client.Client
	put, err := cli.Put(ctx, "/race", "x")
	if err != nil {
		t.Fatal(err)
	}
	target := put.Header.Revision
	v1, rev1, c1, err := etcd3.Compact(ctx, cli, 0, target)
	if err != nil {
		t.Fatal(err)
	}
	if c1 != target || v1 != 1 || rev1 != target+1 {
		t.Fatalf("first compaction: compacted %d version %d revision %d, want %d 1 %d", c1, v1, rev1, target, target+1)
	}
	v2, rev2, c2, err := etcd3.Compact(ctx, cli, 0, target+1)
	if err != nil {
		t.Fatal(err)
	}
	if c2 != target || v2 != v1 || rev2 != rev1 {
		t.Fatalf("losing compaction: compacted %d version %d revision %d, want %d %d %d", c2, v2, rev2, target, v1, rev1)
	}
	v3, _, c3, err := etcd3.Compact(ctx, cli, v2, rev2)
	if err != nil {
		t.Fatal(err)
	}
	if c3 != rev2 || v3 != 2 {
		t.Fatalf("next compaction: compacted %d version %d, want %d 2", c3, v3, rev2)
	}
}

// gateSet applies a case's feature gates for the duration of t.
func gateSet(t *testing.T, gates map[featuregate.Feature]bool) {
	for f, v := range gates {
		setGate(t, f, v)
	}
}

func caseNames(cases []storageCase) []string {
	var n []string
	for _, c := range cases {
		n = append(n, c.name)
	}
	return n
}

func selectCases(all []storageCase, names string) []storageCase {
	if names == "" {
		return all
	}
	want := map[string]bool{}
	for _, n := range strings.Split(names, ",") {
		want[n] = true
	}
	var out []storageCase
	for _, c := range all {
		if want[c.name] {
			out = append(out, c)
		}
	}
	return out
}

// testWatchPrevKVAtCompactRevision pins down, with the raw client, what the
// etcd3 watcher relies on in WatchFromZero: after Compact(R), a watch from
// R with prev_kv delivers the event at R, and its previous version (below
// R) is compacted away, so prev_kv is absent; a watch from below R is
// canceled with compact_revision R.
func testWatchPrevKVAtCompactRevision(t *testing.T, e *env) {
	ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
	defer cancel()
	cli := e.client.Client
	key := e.prefix + "/k"
	p1, err := cli.Put(ctx, key, "v1")
	if err != nil {
		t.Fatal(err)
	}
	p2, err := cli.Put(ctx, key, "v2")
	if err != nil {
		t.Fatal(err)
	}
	r := p2.Header.Revision
	if _, err := cli.Compact(ctx, r); err != nil {
		t.Fatal(err)
	}
	resp := <-cli.Watch(ctx, key, clientv3.WithRev(p1.Header.Revision), clientv3.WithPrevKV())
	if !resp.Canceled || resp.CompactRevision != r {
		t.Errorf("watch from %d (below compaction %d): canceled=%v compact_revision=%d, want canceled with %d", p1.Header.Revision, r, resp.Canceled, resp.CompactRevision, r)
	}
	resp = <-cli.Watch(ctx, key, clientv3.WithRev(r), clientv3.WithPrevKV())
	if resp.Canceled || len(resp.Events) != 1 {
		t.Fatalf("watch from %d (the compaction revision): canceled=%v err=%v events=%d, want the one event at %d", r, resp.Canceled, resp.Err(), len(resp.Events), r)
	}
	ev := resp.Events[0]
	if ev.Kv.ModRevision != r || string(ev.Kv.Value) != "v2" {
		t.Fatalf("event at %d: %s=%s", ev.Kv.ModRevision, ev.Kv.Key, ev.Kv.Value)
	}
	if ev.PrevKv != nil {
		t.Errorf("event at compaction revision %d carries prev_kv (value %q, mod_revision %d) from below the compaction; etcd sends none (that revision is compacted)",
			r, ev.PrevKv.Value, ev.PrevKv.ModRevision)
	}
}
