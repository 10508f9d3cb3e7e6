package lease

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/protobuf/proto"

	"github.com/axon-kv/axon/backend"
	"github.com/axon-kv/axon/mvcc"
	"github.com/axon-kv/axon/proto/axonpb"
)

// writePathLeases mirrors revision.Leases (asserted against the real
// interface in package server, which may import both packages).
type writePathLeases interface {
	Exists(id int64) bool
	Attach(id int64, key []byte)
	Detach(id int64, key []byte)
	Keys(id int64) [][]byte
}

var _ writePathLeases = (*Manager)(nil)

// unit is one TTL "second" in these tests.
const unit = 10 * time.Millisecond

// fakeWriter stands in for the single writer. RevokeLease behaves like the
// writer goroutine: it asks the table for the keys, "deletes" them and
// detaches them.
type fakeWriter struct {
	m *Manager

	mu          sync.Mutex
	rev         int64
	stored      map[int64]int64 // lease records: id -> ttl
	grants      []int64
	revoked     []int64            // successful revocations in order
	deleted     map[int64][][]byte // keys deleted per revocation
	calls       map[int64]int      // RevokeLease calls per lease
	inflight    int
	maxInflight int
	deadDuring  map[int64]bool // Exists(id) as seen right after Keys(id)

	grantErr   error
	grantGate  chan struct{}                  // GrantLease waits for it when set
	revokeErr  func(id int64, call int) error // failure injection
	revokeGate chan struct{}                  // RevokeLease waits for it (or ctx) when set
	revokeHold time.Duration                  // extra time inside RevokeLease
	entered    chan int64                     // told when RevokeLease starts
}

func newFakeWriter() *fakeWriter {
	return &fakeWriter{
		stored:     make(map[int64]int64),
		deleted:    make(map[int64][][]byte),
		calls:      make(map[int64]int),
		deadDuring: make(map[int64]bool),
	}
}

func (w *fakeWriter) GrantLease(ctx context.Context, id, ttl int64) error {
	w.mu.Lock()
	gate, gerr := w.grantGate, w.grantErr
	w.mu.Unlock()
	if gate != nil {
		<-gate
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if gerr != nil {
		return gerr
	}
	if _, ok := w.stored[id]; ok {
		return fmt.Errorf("fake writer: lease %d stored twice", id)
	}
	w.stored[id] = ttl
	w.grants = append(w.grants, id)
	return nil
}

func (w *fakeWriter) RevokeLease(ctx context.Context, id int64) (int64, error) {
	w.mu.Lock()
	w.calls[id]++
	call := w.calls[id]
	w.inflight++
	w.maxInflight = max(w.maxInflight, w.inflight)
	gate, hold, inj, entered := w.revokeGate, w.revokeHold, w.revokeErr, w.entered
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		w.inflight--
		w.mu.Unlock()
	}()
	if entered != nil {
		entered <- id
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	if hold > 0 {
		time.Sleep(hold)
	}
	// As the writer goroutine: collect the keys, which hides the lease
	// from later writes.
	keys := w.m.Keys(id)
	w.mu.Lock()
	w.deadDuring[id] = !w.m.Exists(id)
	w.mu.Unlock()
	if inj != nil {
		if err := inj(id, call); err != nil {
			return 0, err
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.rev++
	delete(w.stored, id)
	w.revoked = append(w.revoked, id)
	w.deleted[id] = keys
	rev := w.rev
	for _, k := range keys {
		w.m.Detach(id, k)
	}
	return rev, nil
}

func (w *fakeWriter) revokedIDs() []int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.revoked)
}

func (w *fakeWriter) callsFor(id int64) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.calls[id]
}

func testOptions() Options {
	return Options{
		PromoteExtend: -1, // none: deadlines are exactly TTL units away
		RetryInterval: 5 * time.Millisecond,
		Logger:        slog.New(slog.DiscardHandler),
	}
}

func newTestManager(t *testing.T, opts Options) (*Manager, *fakeWriter) {
	t.Helper()
	w := newFakeWriter()
	m := NewManager(w, opts)
	m.second = unit
	m.stopGrace = 20 * unit
	w.m = m
	t.Cleanup(m.Stop)
	return m, w
}

func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func mustGrant(t *testing.T, m *Manager, id, ttl int64) *Lease {
	t.Helper()
	l, err := m.Grant(context.Background(), id, ttl)
	if err != nil {
		t.Fatalf("Grant(%d, %d): %v", id, ttl, err)
	}
	return l
}

func keyList(ks ...string) [][]byte {
	out := make([][]byte, len(ks))
	for i, k := range ks {
		out[i] = []byte(k)
	}
	return out
}

func TestDefaultsMatchEtcd(t *testing.T) {
	o := Options{}.withDefaults()
	if o.MinTTL != 2 {
		t.Errorf("MinTTL = %d, want 2 (ceil(3/2 * 10 ticks * 100ms))", o.MinTTL)
	}
	if o.MaxTTL != 9000000000 {
		t.Errorf("MaxTTL = %d, want etcd's MaxLeaseTTL 9000000000", o.MaxTTL)
	}
	if o.PromoteExtend != time.Second {
		t.Errorf("PromoteExtend = %v, want 1s", o.PromoteExtend)
	}
}

func TestGrantGeneratesPositiveID(t *testing.T) {
	m, w := newTestManager(t, testOptions())
	seen := map[int64]bool{}
	for range 50 {
		l := mustGrant(t, m, 0, 10)
		if l.ID <= 0 {
			t.Fatalf("generated ID %d, want > 0", l.ID)
		}
		if seen[l.ID] {
			t.Fatalf("ID %d generated twice", l.ID)
		}
		seen[l.ID] = true
		if l.TTL != 10 || l.GrantedTTL != 10 {
			t.Fatalf("lease %+v, want TTL 10", l)
		}
		if !m.Exists(l.ID) {
			t.Fatalf("granted lease %d does not exist", l.ID)
		}
		if w.stored[l.ID] != 10 {
			t.Fatalf("writer stored TTL %d, want 10", w.stored[l.ID])
		}
	}
	if m.Len() != 50 {
		t.Fatalf("Len = %d, want 50", m.Len())
	}
}

func TestGrantMinTTLClamp(t *testing.T) {
	m, w := newTestManager(t, testOptions())
	m.Start()
	for i, ttl := range []int64{1, 0, -5, 2} {
		id := int64(i + 1)
		l := mustGrant(t, m, id, ttl)
		if l.TTL != 2 || l.GrantedTTL != 2 {
			t.Errorf("Grant(ttl %d) = %+v, want TTL 2", ttl, l)
		}
		if w.stored[id] != 2 {
			t.Errorf("stored TTL %d, want the clamped 2", w.stored[id])
		}
	}
	l := mustGrant(t, m, 9, 3)
	if l.TTL != 3 {
		t.Errorf("TTL above min changed: %+v", l)
	}

	m2, _ := newTestManager(t, Options{MinTTL: 7, Logger: slog.New(slog.DiscardHandler)})
	if l := mustGrant(t, m2, 1, 5); l.TTL != 7 {
		t.Errorf("custom MinTTL: got %d, want 7", l.TTL)
	}
}

func TestGrantTTLTooLarge(t *testing.T) {
	m, w := newTestManager(t, testOptions())
	if _, err := m.Grant(context.Background(), 1, MaxLeaseTTL+1); !errors.Is(err, ErrLeaseTTLTooLarge) {
		t.Fatalf("err = %v, want ErrLeaseTTLTooLarge", err)
	}
	// Checked before the ID: even an existing ID reports the TTL error.
	mustGrant(t, m, 2, 10)
	if _, err := m.Grant(context.Background(), 2, MaxLeaseTTL+1); !errors.Is(err, ErrLeaseTTLTooLarge) {
		t.Fatalf("err = %v, want ErrLeaseTTLTooLarge", err)
	}
	if len(w.grants) != 1 {
		t.Fatalf("writer saw %d grants, want 1", len(w.grants))
	}
	m.Start()
	l := mustGrant(t, m, 3, MaxLeaseTTL)
	if l.TTL != MaxLeaseTTL {
		t.Fatalf("TTL %d", l.TTL)
	}
	if ttl, err := m.Renew(context.Background(), 3); err != nil || ttl != MaxLeaseTTL {
		t.Fatalf("Renew of max TTL lease = %d, %v", ttl, err)
	}

	m2, _ := newTestManager(t, Options{MaxTTL: 100, Logger: slog.New(slog.DiscardHandler)})
	if _, err := m2.Grant(context.Background(), 1, 101); !errors.Is(err, ErrLeaseTTLTooLarge) {
		t.Fatalf("custom MaxTTL: err = %v", err)
	}
	mustGrant(t, m2, 1, 100)
}

func TestGrantExists(t *testing.T) {
	m, w := newTestManager(t, testOptions())
	mustGrant(t, m, 5, 10)
	if _, err := m.Grant(context.Background(), 5, 10); !errors.Is(err, ErrLeaseExists) {
		t.Fatalf("err = %v, want ErrLeaseExists", err)
	}

	// Concurrent grants of one ID: exactly one reaches the writer.
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, exists := 0, 0
	for range 20 {
		wg.Go(func() {
			_, err := m.Grant(context.Background(), 7, 10)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case errors.Is(err, ErrLeaseExists):
				exists++
			default:
				t.Errorf("unexpected error %v", err)
			}
		})
	}
	wg.Wait()
	if ok != 1 || exists != 19 {
		t.Fatalf("ok %d exists %d, want 1 and 19", ok, exists)
	}
	if len(w.grants) != 2 {
		t.Fatalf("writer grants %v, want 2", w.grants)
	}
}

func TestGrantWriterError(t *testing.T) {
	m, w := newTestManager(t, testOptions())
	boom := errors.New("boom")
	w.grantErr = boom
	if _, err := m.Grant(context.Background(), 3, 10); !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}
	if m.Exists(3) || m.Len() != 0 {
		t.Fatal("failed grant left a lease behind")
	}
	w.grantErr = nil
	mustGrant(t, m, 3, 10)
}

func TestGrantRecordedAfterClientCancel(t *testing.T) {
	m, w := newTestManager(t, testOptions())
	gate := make(chan struct{})
	w.grantGate = gate
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := m.Grant(ctx, 11, 10)
		errc <- err
	}()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	// The writer still finishes; the table must learn about the lease.
	if _, err := m.Grant(context.Background(), 11, 10); !errors.Is(err, ErrLeaseExists) {
		t.Fatalf("while in flight: err = %v, want ErrLeaseExists", err)
	}
	close(gate)
	eventually(t, time.Second, "lease recorded", func() bool { return m.Exists(11) })
}

func TestRevokeDeletesAttachedKeys(t *testing.T) {
	m, w := newTestManager(t, testOptions())
	mustGrant(t, m, 1, 10)
	mustGrant(t, m, 2, 10)
	for _, k := range []string{"b", "a", "c"} {
		m.Attach(1, []byte(k))
	}
	m.Attach(2, []byte("z"))

	rev, err := m.Revoke(context.Background(), 1)
	if err != nil || rev != 1 {
		t.Fatalf("Revoke = %d, %v; want 1, nil", rev, err)
	}
	if got := w.deleted[1]; !slices.EqualFunc(got, keyList("a", "b", "c"), bytes.Equal) {
		t.Fatalf("writer deleted %q, want [a b c]", got)
	}
	if !w.deadDuring[1] {
		t.Fatal("Exists was true while the writer built the revocation")
	}
	if m.Exists(1) || m.Len() != 1 {
		t.Fatal("revoked lease still in the table")
	}
	if _, err := m.Revoke(context.Background(), 1); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("second Revoke: %v, want ErrLeaseNotFound", err)
	}
	if _, err := m.Revoke(context.Background(), 42); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("unknown Revoke: %v, want ErrLeaseNotFound", err)
	}
	if !m.Exists(2) || len(m.Keys(2)) != 1 {
		t.Fatal("other lease disturbed")
	}
	// Revoke works without Start (it is a write, not expiry).
	if rev, err := m.Revoke(context.Background(), 2); err != nil || rev != 2 {
		t.Fatalf("Revoke(2) = %d, %v", rev, err)
	}
}

func TestRevokeFailureRestoresLease(t *testing.T) {
	m, w := newTestManager(t, testOptions())
	m.Start()
	mustGrant(t, m, 1, 100)
	m.Attach(1, []byte("k"))
	boom := errors.New("commit failed")
	w.revokeErr = func(int64, int) error { return boom }
	if _, err := m.Revoke(context.Background(), 1); !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}
	if !w.deadDuring[1] {
		t.Fatal("lease visible to writes during its revocation")
	}
	if !m.Exists(1) {
		t.Fatal("lease hidden after its revocation failed")
	}
	if ttl, err := m.Renew(context.Background(), 1); err != nil || ttl != 100 {
		t.Fatalf("Renew after failed revoke = %d, %v", ttl, err)
	}
	w.revokeErr = nil
	if _, err := m.Revoke(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
}

func TestKeysDoesNotHideLeaseOutsideRevocation(t *testing.T) {
	m, _ := newTestManager(t, testOptions())
	mustGrant(t, m, 1, 10)
	m.Attach(1, []byte("k"))
	if got := m.Keys(1); len(got) != 1 {
		t.Fatalf("Keys = %q", got)
	}
	if !m.Exists(1) {
		t.Fatal("Keys without a revocation in flight hid the lease")
	}
	if m.Keys(99) != nil {
		t.Fatal("Keys of unknown lease not nil")
	}
}

func TestAttachDetachBookkeeping(t *testing.T) {
	m, _ := newTestManager(t, testOptions())
	m.Start()
	mustGrant(t, m, 1, 10)
	mustGrant(t, m, 2, 10)
	m.Attach(1, []byte("foo"))
	m.Attach(1, []byte("bar"))
	m.Attach(1, []byte("foo")) // again: still one
	m.Attach(2, []byte("baz"))
	m.Attach(3, []byte("nolease")) // unknown lease: ignored
	m.Detach(3, []byte("nolease"))
	m.Detach(2, []byte("missing"))

	if got := m.Keys(1); !slices.EqualFunc(got, keyList("bar", "foo"), bytes.Equal) {
		t.Fatalf("Keys(1) = %q", got)
	}
	// Key moves from lease 1 to lease 2 (put with another lease).
	m.Detach(1, []byte("foo"))
	m.Attach(2, []byte("foo"))
	if got := m.Keys(1); !slices.EqualFunc(got, keyList("bar"), bytes.Equal) {
		t.Fatalf("Keys(1) = %q", got)
	}
	l, err := m.TimeToLive(2, true)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(l.Keys, keyList("baz", "foo"), bytes.Equal) {
		t.Fatalf("TimeToLive keys = %q", l.Keys)
	}
	if l, _ := m.TimeToLive(2, false); l.Keys != nil {
		t.Fatalf("keys without asking: %q", l.Keys)
	}
	// The key buffer passed to Attach may be reused by the caller.
	buf := []byte("tmp")
	m.Attach(1, buf)
	copy(buf, "XXX")
	if got := m.Keys(1); !slices.EqualFunc(got, keyList("bar", "tmp"), bytes.Equal) {
		t.Fatalf("Keys(1) = %q", got)
	}
}

func TestTimeToLive(t *testing.T) {
	m, _ := newTestManager(t, testOptions())
	mustGrant(t, m, 1, 100)
	if _, err := m.TimeToLive(1, false); !errors.Is(err, ErrNotPrimary) {
		t.Fatalf("before Start: %v, want ErrNotPrimary", err)
	}
	m.Start()
	l, err := m.TimeToLive(1, false)
	if err != nil {
		t.Fatal(err)
	}
	// Like etcd, the remaining TTL is truncated: just after the grant
	// (restart here) it reads TTL-1.
	if l.GrantedTTL != 100 || l.TTL < 80 || l.TTL > 100 || l.ID != 1 {
		t.Fatalf("TimeToLive = %+v", l)
	}
	time.Sleep(30 * unit)
	l, _ = m.TimeToLive(1, false)
	if l.TTL > 71 || l.TTL < 10 {
		t.Fatalf("after 30 units TTL = %d", l.TTL)
	}
	if _, err := m.TimeToLive(2, true); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("unknown: %v", err)
	}
}

func TestExpiryRevokesInDeadlineOrder(t *testing.T) {
	opts := testOptions()
	opts.MaxConcurrentRevokes = 1 // writer sees exactly the dispatch order
	m, w := newTestManager(t, opts)
	m.Start()
	mustGrant(t, m, 1, 30)
	mustGrant(t, m, 2, 10)
	mustGrant(t, m, 3, 20)
	m.Attach(2, []byte("k2"))
	eventually(t, 2*time.Second, "three revocations", func() bool { return len(w.revokedIDs()) == 3 })
	if got := w.revokedIDs(); !slices.Equal(got, []int64{2, 3, 1}) {
		t.Fatalf("revocation order %v, want [2 3 1]", got)
	}
	if !slices.EqualFunc(w.deleted[2], keyList("k2"), bytes.Equal) {
		t.Fatalf("expiry deleted %q", w.deleted[2])
	}
	if m.Len() != 0 {
		t.Fatalf("%d leases left", m.Len())
	}
}

func TestExpiryNotBeforeTTL(t *testing.T) {
	m, w := newTestManager(t, testOptions())
	m.Start()
	start := time.Now()
	mustGrant(t, m, 1, 10)
	eventually(t, time.Second, "revocation", func() bool { return len(w.revokedIDs()) == 1 })
	if el := time.Since(start); el < 10*unit {
		t.Fatalf("revoked after %v, TTL is %v", el, 10*unit)
	}
}

func TestKeepAliveExtends(t *testing.T) {
	m, w := newTestManager(t, testOptions())
	m.Start()
	// Generous TTL: the renewals must not lose a race against a loaded
	// machine's scheduler.
	mustGrant(t, m, 1, 40)
	stop := time.Now().Add(120 * unit) // 3 TTLs
	for time.Now().Before(stop) {
		ttl, err := m.Renew(context.Background(), 1)
		if err != nil || ttl != 40 {
			t.Fatalf("Renew = %d, %v", ttl, err)
		}
		time.Sleep(unit)
	}
	if len(w.revokedIDs()) != 0 {
		t.Fatal("lease expired although kept alive")
	}
	eventually(t, time.Second, "expiry after keep-alives stop", func() bool { return len(w.revokedIDs()) == 1 })
	if ttl, err := m.Renew(context.Background(), 1); !errors.Is(err, ErrLeaseNotFound) || ttl != -1 {
		t.Fatalf("Renew after expiry = %d, %v", ttl, err)
	}
}

func TestRenewExpiredWaitsForRevocation(t *testing.T) {
	m, w := newTestManager(t, testOptions())
	gate := make(chan struct{})
	w.revokeGate = gate
	w.entered = make(chan int64, 1)
	m.Start()
	mustGrant(t, m, 1, 2)
	<-w.entered // expiry revocation in flight, blocked in the writer

	// The write path is not blocked meanwhile.
	done := make(chan struct{})
	go func() {
		m.Exists(1)
		m.Attach(1, []byte("x"))
		m.Detach(1, []byte("x"))
		m.Keys(1)
		mustGrant(t, m, 2, 100)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("write path blocked by a revocation in flight")
	}

	renewed := make(chan error, 1)
	go func() {
		_, err := m.Renew(context.Background(), 1)
		renewed <- err
	}()
	select {
	case err := <-renewed:
		t.Fatalf("Renew of an expired lease returned early: %v", err)
	case <-time.After(5 * unit):
	}
	close(gate)
	if err := <-renewed; !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("Renew = %v, want ErrLeaseNotFound", err)
	}
}

func TestRenewContextCancelled(t *testing.T) {
	m, w := newTestManager(t, testOptions())
	w.revokeGate = make(chan struct{})
	w.entered = make(chan int64, 1)
	m.Start()
	mustGrant(t, m, 1, 2)
	<-w.entered
	ctx, cancel := context.WithTimeout(context.Background(), 3*unit)
	defer cancel()
	if _, err := m.Renew(ctx, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Renew = %v, want DeadlineExceeded", err)
	}
}

func TestRenewNotPrimary(t *testing.T) {
	m, w := newTestManager(t, testOptions())
	mustGrant(t, m, 1, 10)
	if _, err := m.Renew(context.Background(), 1); !errors.Is(err, ErrNotPrimary) {
		t.Fatalf("before Start: %v, want ErrNotPrimary", err)
	}
	m.Start()
	if _, err := m.Renew(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Renew(context.Background(), 2); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("unknown: %v", err)
	}

	// A Renew waiting on an expired lease ends with ErrNotPrimary on Stop.
	w.revokeGate = make(chan struct{})
	w.entered = make(chan int64, 1)
	mustGrant(t, m, 3, 2)
	<-w.entered
	renewed := make(chan error, 1)
	go func() {
		_, err := m.Renew(context.Background(), 3)
		renewed <- err
	}()
	time.Sleep(3 * unit)
	m.Stop()
	if err := <-renewed; !errors.Is(err, ErrNotPrimary) {
		t.Fatalf("Renew across Stop = %v, want ErrNotPrimary", err)
	}
	if _, err := m.Renew(context.Background(), 1); !errors.Is(err, ErrNotPrimary) {
		t.Fatalf("after Stop: %v", err)
	}
}

func TestStopCancelsRevocationsAndStartRestartsTTL(t *testing.T) {
	m, w := newTestManager(t, testOptions())
	w.revokeGate = make(chan struct{}) // never opened: only ctx ends a call
	w.entered = make(chan int64, 1)
	m.Start()
	mustGrant(t, m, 1, 2)
	mustGrant(t, m, 2, 30)
	<-w.entered

	stopped := make(chan struct{})
	go func() { m.Stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * time.Second):
		t.Fatal("Stop hung on a revocation in flight")
	}
	if !m.Exists(1) || !m.Exists(2) {
		t.Fatal("cancelled revocation lost a lease")
	}
	time.Sleep(40 * unit) // both TTLs pass while stopped
	if got := w.revokedIDs(); len(got) != 0 {
		t.Fatalf("leases %v revoked across Stop", got)
	}

	w.mu.Lock()
	w.revokeGate = nil
	w.entered = nil
	w.mu.Unlock()
	m.Start() // TTLs restart in full
	l, err := m.TimeToLive(2, false)
	if err != nil || l.TTL < 20 {
		t.Fatalf("after restart TimeToLive = %+v, %v; want about 30", l, err)
	}
	eventually(t, time.Second, "both revoked", func() bool { return len(w.revokedIDs()) == 2 })
	if got := w.revokedIDs(); !slices.Equal(got, []int64{1, 2}) {
		t.Fatalf("order %v", got)
	}
}

func TestStopLetsRevocationsInFlightFinish(t *testing.T) {
	m, w := newTestManager(t, testOptions())
	gate := make(chan struct{})
	w.revokeGate = gate
	w.entered = make(chan int64, 1)
	m.Start()
	mustGrant(t, m, 1, 2)
	<-w.entered
	go func() {
		time.Sleep(5 * unit) // well within the grace period
		close(gate)
	}()
	m.Stop()
	if m.Exists(1) || !slices.Equal(w.revokedIDs(), []int64{1}) {
		t.Fatal("revocation in flight at Stop did not complete")
	}
}

func TestWriterNotFoundDropsLease(t *testing.T) {
	// A revocation whose caller saw an error may have committed anyway; the
	// writer then answers "lease not found" and the table must let go.
	m, w := newTestManager(t, testOptions())
	w.revokeErr = func(int64, int) error { return rpctypes.ErrGRPCLeaseNotFound }
	mustGrant(t, m, 1, 100)
	if _, err := m.Revoke(context.Background(), 1); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("Revoke = %v, want ErrLeaseNotFound", err)
	}
	if m.Exists(1) || m.Len() != 0 {
		t.Fatal("lease kept after the writer disowned it")
	}

	m.Start()
	mustGrant(t, m, 2, 2)
	eventually(t, time.Second, "expired lease dropped", func() bool { return m.Len() == 0 })
	if n := w.callsFor(2); n != 1 {
		t.Fatalf("writer called %d times, want 1 (no retries)", n)
	}
}

func TestPromoteExtend(t *testing.T) {
	opts := testOptions()
	opts.PromoteExtend = 50 * unit
	m, w := newTestManager(t, opts)
	mustGrant(t, m, 1, 2)
	m.Start()
	time.Sleep(10 * unit)
	if len(w.revokedIDs()) != 0 {
		t.Fatal("expired before TTL + PromoteExtend")
	}
	eventually(t, time.Second, "revocation", func() bool { return len(w.revokedIDs()) == 1 })
}

func TestRevokeJoinsExpiryRevocation(t *testing.T) {
	m, w := newTestManager(t, testOptions())
	gate := make(chan struct{})
	w.revokeGate = gate
	w.entered = make(chan int64, 1)
	m.Start()
	mustGrant(t, m, 1, 2)
	<-w.entered
	errc := make(chan error, 1)
	go func() {
		_, err := m.Revoke(context.Background(), 1)
		errc <- err
	}()
	time.Sleep(3 * unit)
	close(gate)
	if err := <-errc; !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("Revoke racing expiry = %v, want ErrLeaseNotFound", err)
	}
	if n := w.callsFor(1); n != 1 {
		t.Fatalf("writer called %d times, want 1", n)
	}
}

func TestExpiryRetriesOnError(t *testing.T) {
	m, w := newTestManager(t, testOptions())
	w.revokeErr = func(id int64, call int) error {
		if call <= 2 {
			return errors.New("transient")
		}
		return nil
	}
	m.Start()
	mustGrant(t, m, 1, 2)
	m.Attach(1, []byte("k"))
	eventually(t, 2*time.Second, "revocation after retries", func() bool { return len(w.revokedIDs()) == 1 })
	if n := w.callsFor(1); n != 3 {
		t.Fatalf("writer called %d times, want 3", n)
	}
	if !slices.EqualFunc(w.deleted[1], keyList("k"), bytes.Equal) {
		t.Fatalf("deleted %q", w.deleted[1])
	}
}

func TestExpiryBoundedConcurrency(t *testing.T) {
	opts := testOptions()
	opts.MaxConcurrentRevokes = 3
	m, w := newTestManager(t, opts)
	w.revokeHold = 5 * time.Millisecond
	m.Start()
	for id := int64(1); id <= 30; id++ {
		mustGrant(t, m, id, 2)
	}
	eventually(t, 5*time.Second, "all revoked", func() bool { return len(w.revokedIDs()) == 30 })
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.maxInflight > 3 {
		t.Fatalf("%d revocations in flight, limit 3", w.maxInflight)
	}
	if w.maxInflight < 2 {
		t.Fatalf("revocations never overlapped (max %d)", w.maxInflight)
	}
}

func TestExpiryRateLimit(t *testing.T) {
	opts := testOptions()
	opts.RevokeRate = 20 // burst 10, then 20/s
	m, w := newTestManager(t, opts)
	m.Start()
	for id := int64(1); id <= 20; id++ {
		mustGrant(t, m, id, 2)
	}
	start := time.Now()
	eventually(t, 5*time.Second, "all revoked", func() bool { return len(w.revokedIDs()) == 20 })
	// 10 come from the burst, the other 10 at 20/s: about 450ms.
	if el := time.Since(start); el < 350*time.Millisecond {
		t.Fatalf("20 revocations in %v, rate limit not applied", el)
	}
}

func TestStartSpreadsPileUp(t *testing.T) {
	opts := testOptions()
	opts.RevokeRate = 8 // spread to 6 a second
	m, _ := newTestManager(t, opts)
	for id := int64(1); id <= 8; id++ {
		mustGrant(t, m, id, 1000)
	}
	m.Start()
	m.mu.RLock()
	var ds []time.Time
	for _, e := range m.leases {
		ds = append(ds, e.expiry)
	}
	m.mu.RUnlock()
	sort.Slice(ds, func(i, j int) bool { return ds[i].Before(ds[j]) })
	gap := time.Second / 6
	for i := 1; i < len(ds); i++ {
		if d := ds[i].Sub(ds[i-1]); d < gap {
			t.Fatalf("deadlines %d and %d only %v apart, want >= %v", i-1, i, d, gap)
		}
	}
	if ds[0].Before(time.Now().Add(900 * unit)) {
		t.Fatal("spreading moved a deadline earlier")
	}
}

func TestLeasesSortedByDeadline(t *testing.T) {
	m, _ := newTestManager(t, testOptions())
	m.Start()
	mustGrant(t, m, 10, 300)
	mustGrant(t, m, 20, 100)
	mustGrant(t, m, 30, 200)
	if got := m.Leases(); !slices.Equal(got, []int64{20, 30, 10}) {
		t.Fatalf("Leases = %v", got)
	}
	m.Stop()
	if got := m.Leases(); len(got) != 3 {
		t.Fatalf("Leases when stopped = %v", got)
	}
}

// memSnapshot is a sorted in-memory backend.Snapshot, with the attached
// keys the key index would list for it.
type memSnapshot struct {
	kv       map[string][]byte
	attached []attachment
}

type attachment struct {
	id  int64
	key string
}

// leased lists the attachments as the key index does.
func (s *memSnapshot) leased(fn func(id int64, key []byte)) {
	for _, a := range s.attached {
		fn(a.id, []byte(a.key))
	}
}

func (s *memSnapshot) Get(key []byte) ([]byte, error) {
	v, ok := s.kv[string(key)]
	if !ok {
		return nil, backend.ErrNotFound
	}
	return slices.Clone(v), nil
}

func (s *memSnapshot) Scan(start, end []byte, opts backend.ScanOptions, fn func(k, v []byte) error) error {
	var keys []string
	for k := range s.kv {
		if k >= string(start) && (end == nil || k < string(end)) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	if opts.Reverse {
		slices.Reverse(keys)
	}
	for i, k := range keys {
		if opts.Limit > 0 && i == opts.Limit {
			break
		}
		v := s.kv[k]
		if opts.KeysOnly {
			v = nil
		}
		if err := fn([]byte(k), v); err != nil {
			if errors.Is(err, backend.ErrStop) {
				return nil
			}
			return err
		}
	}
	return nil
}

func (s *memSnapshot) Close() {}

func (s *memSnapshot) putLease(t *testing.T, id, ttl int64) {
	b, err := proto.Marshal(&axonpb.Lease{Id: id, Ttl: ttl})
	if err != nil {
		t.Fatal(err)
	}
	s.kv[string(mvcc.LeaseKey(id))] = b
}

func (s *memSnapshot) attach(id int64, key string) {
	s.attached = append(s.attached, attachment{id, key})
}

func TestLoadRestores(t *testing.T) {
	snap := &memSnapshot{kv: map[string][]byte{}}
	snap.putLease(t, 1, 50)
	snap.putLease(t, 2, 1) // below MinTTL: raised to 2
	snap.putLease(t, 3, 100)
	snap.putLease(t, -4, 100) // etcd accepts negative IDs given by clients
	snap.attach(1, "b")
	snap.attach(1, "a\x00z") // keys are arbitrary bytes
	snap.attach(2, "c")
	snap.attach(-4, "neg")
	snap.attach(99, "orphan") // no record: ignored
	snap.kv["k/unrelated"] = []byte("x")

	m, w := newTestManager(t, testOptions())
	if err := m.Load(snap, snap.leased); err != nil {
		t.Fatal(err)
	}
	if m.Len() != 4 {
		t.Fatalf("Len = %d, want 4", m.Len())
	}
	if got := m.Keys(1); !slices.EqualFunc(got, keyList("a\x00z", "b"), bytes.Equal) {
		t.Fatalf("Keys(1) = %q", got)
	}
	if got := m.Keys(-4); !slices.EqualFunc(got, keyList("neg"), bytes.Equal) {
		t.Fatalf("Keys(-4) = %q", got)
	}
	if m.Exists(99) {
		t.Fatal("orphan attachment created a lease")
	}
	if !m.Exists(1) || !m.Exists(2) || !m.Exists(3) || !m.Exists(-4) {
		t.Fatal("loaded lease missing")
	}
	// Nothing expires before Start, however old the leases are.
	time.Sleep(5 * unit)
	if len(w.revokedIDs()) != 0 {
		t.Fatal("revoked before Start")
	}

	m.Start()
	if err := m.Load(snap, snap.leased); err == nil {
		t.Fatal("Load while started succeeded")
	}
	l, err := m.TimeToLive(2, false)
	if err != nil || l.GrantedTTL != 2 {
		t.Fatalf("TimeToLive(2) = %+v, %v; want GrantedTTL 2 (clamped)", l, err)
	}
	l, _ = m.TimeToLive(1, true)
	if l.GrantedTTL != 50 || l.TTL < 30 {
		t.Fatalf("TimeToLive(1) = %+v; TTL should restart at 50", l)
	}
	eventually(t, time.Second, "loaded lease 2 expires", func() bool { return len(w.revokedIDs()) >= 1 })
	if got := w.revokedIDs()[0]; got != 2 {
		t.Fatalf("first expiry %d, want 2", got)
	}
	if !slices.EqualFunc(w.deleted[2], keyList("c"), bytes.Equal) {
		t.Fatalf("deleted %q", w.deleted[2])
	}

	// A stopped manager can reload (a follower about to lead).
	m.Stop()
	snap2 := &memSnapshot{kv: map[string][]byte{}}
	snap2.putLease(t, 7, 10)
	if err := m.Load(snap2, snap2.leased); err != nil {
		t.Fatal(err)
	}
	if got := m.Leases(); !slices.Equal(got, []int64{7}) {
		t.Fatalf("after reload Leases = %v", got)
	}
}

func TestLoadBadRecord(t *testing.T) {
	snap := &memSnapshot{kv: map[string][]byte{string(mvcc.LeaseKey(1)): {0xff, 0xff}}}
	m, _ := newTestManager(t, testOptions())
	if err := m.Load(snap, snap.leased); err == nil {
		t.Fatal("Load accepted a corrupt lease record")
	}
}

func TestConcurrentUse(t *testing.T) {
	// Exercised under -race: grants, renewals, attachments and expiry at once.
	m, w := newTestManager(t, testOptions())
	m.Start()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				id := int64(g*1000 + i + 1)
				if _, err := m.Grant(context.Background(), id, 2+int64(i%3)); err != nil {
					t.Error(err)
					return
				}
				k := []byte(fmt.Sprintf("key-%d", id))
				if m.Exists(id) {
					m.Attach(id, k)
				}
				_, _ = m.Renew(context.Background(), id)
				_, _ = m.TimeToLive(id, true)
				if i%5 == 0 {
					_, _ = m.Revoke(context.Background(), id)
				}
				m.Leases()
			}
		})
	}
	wg.Wait()
	eventually(t, 5*time.Second, "all leases gone", func() bool { return m.Len() == 0 })
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.stored) != 0 {
		t.Fatalf("%d lease records left in the writer", len(w.stored))
	}
	for id, n := range w.calls {
		if n != 1 {
			t.Fatalf("lease %d revoked %d times", id, n)
		}
	}
}
