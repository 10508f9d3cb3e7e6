package badger

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"

	badgerdb "github.com/dgraph-io/badger/v4"

	"github.com/axon-kv/axon/backend"
	"github.com/axon-kv/axon/backend/backendtest"
)

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func open(t testing.TB, opts Options) *DB {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	d, err := Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil && !errors.Is(err, backend.ErrClosed) {
			t.Errorf("Close: %v", err)
		}
	})
	return d
}

func TestConformance(t *testing.T) {
	t.Run("disk", func(t *testing.T) {
		backendtest.Run(t, func(t *testing.T) backend.Backend {
			return open(t, Options{Dir: t.TempDir()})
		})
	})
	t.Run("memory", func(t *testing.T) {
		backendtest.Run(t, func(t *testing.T) backend.Backend {
			return open(t, Options{InMemory: true})
		})
	})
}

func TestOpenValidatesOptions(t *testing.T) {
	if _, err := Open(Options{}); err == nil {
		t.Error("Open without Dir or InMemory succeeded")
	}
	if _, err := Open(Options{Dir: t.TempDir(), InMemory: true}); err == nil {
		t.Error("Open with both Dir and InMemory succeeded")
	}
}

func TestReopen(t *testing.T) {
	dir := t.TempDir()
	d := open(t, Options{Dir: dir})
	var b backend.Batch
	b.Put([]byte("small"), []byte("v"))
	b.Put([]byte("large"), bytes.Repeat([]byte("L"), 64<<10)) // lands in the value log
	b.Put([]byte("deleted"), []byte("x"))
	if err := d.Commit(&b); err != nil {
		t.Fatal(err)
	}
	if err := d.Commit(&backend.Batch{Ops: []backend.Op{{Key: []byte("deleted"), Delete: true}}}); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	// The directory is locked while open, so a successful reopen also shows
	// Close released it.
	d = open(t, Options{Dir: dir})
	s, err := d.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, err := s.Get([]byte("small")); err != nil || string(v) != "v" {
		t.Errorf("small = %q, %v", v, err)
	}
	if v, err := s.Get([]byte("large")); err != nil || !bytes.Equal(v, bytes.Repeat([]byte("L"), 64<<10)) {
		t.Errorf("large: %d bytes, %v", len(v), err)
	}
	if _, err := s.Get([]byte("deleted")); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("deleted: %v; want ErrNotFound", err)
	}
}

// TestValueSizeLimits: on disk the largest object etcd accepts by default
// (1.5 MiB request) must round-trip; in memory, values of 1 MiB and up are
// refused cleanly instead of crashing inside Badger.
func TestValueSizeLimits(t *testing.T) {
	big := bytes.Repeat([]byte("B"), 3<<19)

	d := open(t, Options{Dir: t.TempDir()})
	if err := d.Commit(&backend.Batch{Ops: []backend.Op{{Key: []byte("big"), Value: big}}}); err != nil {
		t.Fatalf("disk: Commit of %d bytes: %v", len(big), err)
	}
	s, err := d.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, err := s.Get([]byte("big")); err != nil || !bytes.Equal(v, big) {
		t.Fatalf("disk: Get big: %d bytes, %v", len(v), err)
	}

	m := open(t, Options{InMemory: true})
	err = m.Commit(&backend.Batch{Ops: []backend.Op{
		{Key: []byte("ok"), Value: []byte("v")},
		{Key: []byte("big"), Value: big[:1<<20]},
	}})
	if err == nil {
		t.Fatal("memory: Commit of a 1 MiB value succeeded")
	}
	ms, err := m.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer ms.Close()
	if _, err := ms.Get([]byte("ok")); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("memory: refused batch was partly written: %v", err)
	}
	almost := big[:1<<20-1]
	if err := m.Commit(&backend.Batch{Ops: []backend.Op{{Key: []byte("almost"), Value: almost}}}); err != nil {
		t.Fatalf("memory: Commit just under 1 MiB: %v", err)
	}
}

func TestTxnTooBigWritesNothing(t *testing.T) {
	for _, inMemory := range []bool{false, true} {
		t.Run(fmt.Sprintf("inMemory=%v", inMemory), func(t *testing.T) {
			opts := Options{InMemory: inMemory}
			if !inMemory {
				opts.Dir = t.TempDir()
			}
			d := open(t, opts)
			// Inline values count fully against Badger's ~4.8 MiB limit.
			var b backend.Batch
			val := bytes.Repeat([]byte("v"), 1<<10)
			for i := range 8000 {
				b.Put(fmt.Appendf(nil, "k%05d", i), val)
			}
			err := d.Commit(&b)
			if !errors.Is(err, badgerdb.ErrTxnTooBig) {
				t.Fatalf("Commit of %d bytes = %v; want ErrTxnTooBig", b.Bytes(), err)
			}
			s, err := d.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			n := 0
			if err := s.Scan(nil, nil, backend.ScanOptions{KeysOnly: true}, func(_, _ []byte) error { n++; return nil }); err != nil {
				t.Fatal(err)
			}
			if n != 0 {
				t.Fatalf("failed batch left %d keys behind", n)
			}
		})
	}
}

func TestSizeCountsAllocatedBytes(t *testing.T) {
	d := open(t, Options{Dir: t.TempDir()})
	// The active value log is a 2 GiB sparse file; an empty store must not
	// look that big.
	if n := d.computeSize(); n >= 256<<20 {
		t.Fatalf("empty store Size = %d; sparse preallocation counted", n)
	}
	if n := d.Size(); n >= 256<<20 {
		t.Fatalf("empty store Size() = %d", n)
	}
	const total = 8 << 20
	val := bytes.Repeat([]byte("x"), 8<<10)
	for i := 0; i < total/len(val); i += 64 {
		var b backend.Batch
		for j := range 64 {
			b.Put(fmt.Appendf(nil, "k%06d", i+j), val)
		}
		if err := d.Commit(&b); err != nil {
			t.Fatal(err)
		}
	}
	if n := d.computeSize(); n < total/2 || n >= 256<<20 {
		t.Fatalf("Size after writing %d bytes = %d", total, n)
	}
}

func TestInMemorySize(t *testing.T) {
	d := open(t, Options{InMemory: true})
	if n := d.Size(); n < 0 {
		t.Fatalf("Size = %d", n)
	}
}

// TestValueLogGC runs a collection pass over a store whose value log is
// mostly garbage; it must finish without reporting a failure.
func TestValueLogGC(t *testing.T) {
	h := &recordingHandler{level: slog.LevelWarn}
	d := open(t, Options{Dir: t.TempDir(), Logger: slog.New(h)})
	val := bytes.Repeat([]byte("g"), 16<<10)
	for round := range 2 {
		for i := 0; i < 256; i += 32 {
			var b backend.Batch
			for j := range 32 {
				k := fmt.Appendf(nil, "k%04d", i+j)
				if round == 0 {
					b.Put(k, val)
				} else {
					b.Delete(k)
				}
			}
			if err := d.Commit(&b); err != nil {
				t.Fatal(err)
			}
		}
	}
	d.collectValueLog()
	if err := d.db.Flatten(2); err != nil {
		t.Fatal(err)
	}
	d.collectValueLog()
	for _, r := range h.records() {
		t.Errorf("unexpected log: %s %s", r.Level, r.Message)
	}
}

// TestCloseWaitsForCallsInProgress closes the store from inside a scan
// callback: Close must refuse new calls at once but let the scan finish
// reading before Badger unmaps anything.
func TestCloseWaitsForCallsInProgress(t *testing.T) {
	d := open(t, Options{Dir: t.TempDir()})
	var b backend.Batch
	for i := range 100 {
		b.Put(fmt.Appendf(nil, "k%03d", i), bytes.Repeat([]byte{byte(i)}, 100))
	}
	if err := d.Commit(&b); err != nil {
		t.Fatal(err)
	}
	s, err := d.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	n := 0
	err = s.Scan(nil, nil, backend.ScanOptions{}, func(k, v []byte) error {
		if n == 10 {
			go func() { closed <- d.Close() }()
			// Re-entering must fail fast rather than deadlock on Close.
			for {
				_, err := d.Snapshot()
				if errors.Is(err, backend.ErrClosed) {
					break
				}
				if err != nil {
					return err
				}
				runtime.Gosched()
			}
		}
		if len(v) != 100 || v[0] != byte(n) {
			return fmt.Errorf("key %q: bad value after Close began", k)
		}
		n++
		return nil
	})
	if err != nil || n != 100 {
		t.Fatalf("scan: %v after %d keys", err, n)
	}
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	s.Close()
}

func TestLoggerAdapter(t *testing.T) {
	h := &recordingHandler{level: slog.LevelInfo}
	a := slogAdapter{slog.New(h)}
	a.Errorf("e %d\n", 1)
	a.Warningf("w %d", 2)
	a.Infof("i %d", 3)
	a.Debugf("d %d", 4)
	got := h.records()
	if len(got) != 2 ||
		got[0].Level != slog.LevelError || got[0].Message != "e 1" ||
		got[1].Level != slog.LevelWarn || got[1].Message != "w 2" {
		t.Fatalf("at info level got %v; want the error and the warning only", got)
	}

	h = &recordingHandler{level: slog.LevelDebug}
	slogAdapter{slog.New(h)}.Infof("i")
	if got := h.records(); len(got) != 1 || got[0].Message != "i" {
		t.Fatalf("at debug level got %v; want Badger's info", got)
	}
}

type recordingHandler struct {
	level slog.Level
	mu    sync.Mutex
	recs  []slog.Record
}

func (h *recordingHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }
func (h *recordingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append(h.recs, r)
	return nil
}
func (h *recordingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordingHandler) WithGroup(string) slog.Handler      { return h }
func (h *recordingHandler) records() []slog.Record {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]slog.Record(nil), h.recs...)
}

// BenchmarkCommit measures durable (fsynced) commits of small batches of
// 512-byte values, the shape of a Kubernetes object write.
func BenchmarkCommit(b *testing.B) {
	val := bytes.Repeat([]byte("v"), 512)
	for _, ops := range []int{1, 16} {
		b.Run(fmt.Sprintf("ops=%d", ops), func(b *testing.B) {
			d := open(b, Options{Dir: b.TempDir()})
			b.SetBytes(int64(ops * len(val)))
			i := 0
			for b.Loop() {
				var batch backend.Batch
				for range ops {
					batch.Put(fmt.Appendf(nil, "/registry/pods/ns/p%09d", i), val)
					i++
				}
				if err := d.Commit(&batch); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	// Concurrent committers: Badger's transactions wait for commits in
	// flight before starting, so this stays near one fsync per commit.
	b.Run("ops=1/parallel", func(b *testing.B) {
		d := open(b, Options{Dir: b.TempDir()})
		b.SetBytes(int64(len(val)))
		b.SetParallelism(8)
		var seq sync.Mutex
		next := 0
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				seq.Lock()
				i := next
				next++
				seq.Unlock()
				var batch backend.Batch
				batch.Put(fmt.Appendf(nil, "/registry/pods/ns/p%09d", i), val)
				if err := d.Commit(&batch); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkScan measures range reads over 100k 512-byte values.
func BenchmarkScan(b *testing.B) {
	const n = 100_000
	d := open(b, Options{Dir: b.TempDir()})
	val := bytes.Repeat([]byte("v"), 512)
	key := func(i int) []byte { return fmt.Appendf(nil, "/registry/pods/ns/p%09d", i) }
	for i := 0; i < n; i += 1000 {
		var batch backend.Batch
		for j := range 1000 {
			batch.Put(key(i+j), val)
		}
		if err := d.Commit(&batch); err != nil {
			b.Fatal(err)
		}
	}
	end := backend.PrefixEnd([]byte("/registry/pods/"))
	for _, c := range []struct {
		name string
		opts backend.ScanOptions
	}{
		{"limit=100", backend.ScanOptions{Limit: 100}},
		{"limit=1000", backend.ScanOptions{Limit: 1000}},
		{"limit=1000/reverse", backend.ScanOptions{Limit: 1000, Reverse: true}},
		{"limit=1000/keysonly", backend.ScanOptions{Limit: 1000, KeysOnly: true}},
	} {
		b.Run(c.name, func(b *testing.B) {
			rng := rand.New(rand.NewPCG(1, 1))
			s, err := d.Snapshot()
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			var got int
			for b.Loop() {
				i := rng.IntN(n - c.opts.Limit)
				if c.opts.Reverse {
					i += c.opts.Limit
				}
				start := key(i)
				lo, hi := start, end
				if c.opts.Reverse {
					lo, hi = []byte("/registry/pods/"), start
				}
				got = 0
				err := s.Scan(lo, hi, c.opts, func(_, v []byte) error {
					got++
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			if got == 0 {
				b.Fatal("scan returned nothing")
			}
			b.ReportMetric(float64(got), "keys/op")
		})
	}
}
