// Package tikvtest runs the TiKV engine in tests without a TiKV cluster: it
// builds client-go's in-process mock cluster (mocktikv: a mock PD and mock
// TiKV stores over an in-memory MVCC store) and opens backend/tikv on it.
// The real client-go transaction code runs against it (timestamps, region
// routing, batch gets, prewrite and commit, lock resolution, write
// conflicts); only the servers are simulated.
//
// The mock implements neither 1PC nor async commit: it ignores both
// requests, and client-go falls back to two-phase commit after having spent
// a timestamp request on them. Options (used by NewMock) disables them.
//
// client-go logs through one process-wide logger, which this package points
// at stderr at the level named by $AXON_TIKV_LOG (debug, info, warn or
// error). By default it is silent: the mock makes client-go warn about
// routine things (every declined 1PC attempt) and logs an error of its own
// for every reverse scan of an empty range.
package tikvtest

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tikv/client-go/v2/testutils"
	tikvstore "github.com/tikv/client-go/v2/tikv"
	"github.com/tikv/client-go/v2/tikvrpc"
	"github.com/tikv/client-go/v2/txnkv"
	"github.com/tikv/client-go/v2/util/async"
	pd "github.com/tikv/pd/client"
	"github.com/tikv/pd/client/clients/tso"

	"github.com/axon-kv/axon/backend"
	"github.com/axon-kv/axon/backend/tikv"
)

// Cluster is one mock TiKV cluster. Every client made from it sees the same
// data and the same timestamp oracle, as separate Axon processes sharing a
// real cluster would. It is torn down when the test that made it ends.
type Cluster struct {
	rpc     *testutils.MockClient
	pd      *countingPD
	cluster *testutils.MockCluster

	// client-go resolves some locks in goroutines that outlive the store
	// that started them; closed makes their requests fail instead of
	// reaching the mock's closed MVCC store (which would crash).
	mu     sync.RWMutex
	closed bool

	hook atomic.Pointer[RPCHook]
}

// RPCHook stands between every client of a cluster and the mock TiKV:
// send performs the request. A hook can delay it, fail it, or perform it
// and then lose the answer. It must return before the test ends: the
// cluster's teardown waits for requests in progress.
type RPCHook func(req *tikvrpc.Request, send func() (*tikvrpc.Response, error)) (*tikvrpc.Response, error)

// SetRPCHook installs h (nil removes it).
func (c *Cluster) SetRPCHook(h RPCHook) {
	if h == nil {
		c.hook.Store(nil)
		return
	}
	c.hook.Store(&h)
}

// NewCluster makes a mock cluster with one store. With split keys, the
// keyspace is cut into regions at those (raw) keys, in any order, so batch
// gets, prewrites and scans fan out over several regions and 1PC is
// impossible for batches that span them.
func NewCluster(t testing.TB, splitKeys ...[]byte) *Cluster {
	t.Helper()
	routeLogs.Do(func() {
		level := slog.LevelError + 4 // nothing
		if v := os.Getenv("AXON_TIKV_LOG"); v != "" {
			if err := level.UnmarshalText([]byte(v)); err != nil {
				t.Logf("tikvtest: AXON_TIKV_LOG=%q: %v", v, err)
			}
		}
		h := slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})
		tikv.RouteClientLogs(slog.New(h).With("engine", "tikv-mock"))
	})
	rpc, cluster, pdClient, err := testutils.NewMockTiKV("", nil)
	if err != nil {
		t.Fatalf("tikvtest: mock TiKV: %v", err)
	}
	if len(splitKeys) == 0 {
		testutils.BootstrapWithSingleStore(cluster)
	} else {
		// The mock splits the last region at each key in turn: unsorted
		// keys would make regions whose start is past their end.
		keys := slices.SortedFunc(slices.Values(splitKeys), bytes.Compare)
		keys = slices.CompactFunc(keys, bytes.Equal)
		if len(keys[0]) == 0 {
			keys = keys[1:] // the keyspace already starts there
		}
		testutils.BootstrapWithMultiRegions(cluster, keys...)
	}
	c := &Cluster{rpc: rpc, pd: &countingPD{Client: pdClient}, cluster: cluster}
	// Registered first, so it runs after every client's cleanup.
	t.Cleanup(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.closed = true
		if err := rpc.Close(); err != nil {
			t.Errorf("tikvtest: close mock TiKV: %v", err)
		}
	})
	return c
}

var routeLogs sync.Once

// MockCluster returns client-go's mock cluster, for tests that split
// regions or inject delays themselves.
func (c *Cluster) MockCluster() *testutils.MockCluster { return c.cluster }

// TSORequests is the number of timestamps every client of the cluster has
// asked the mock PD for so far, background refreshes included.
func (c *Cluster) TSORequests() int64 { return c.pd.calls.Load() }

// Client makes a new client-go client on the cluster: its own region cache,
// timestamp oracle and lock resolver, like another process. It is closed
// when t ends.
func (c *Cluster) Client(t testing.TB, opts ...tikvstore.Option) *txnkv.Client {
	t.Helper()
	store, err := tikvstore.NewTestTiKVStore(sharedClient{c}, c.pd, nil, nil, 0, opts...)
	if err != nil {
		t.Fatalf("tikvtest: client store: %v", err)
	}
	t.Cleanup(func() {
		if err := store.Close(); err != nil {
			t.Errorf("tikvtest: close client store: %v", err)
		}
	})
	return &txnkv.Client{KVStore: store}
}

// Options are the engine options suited to the mock: 1PC and async commit
// off (see the package comment), everything else default.
func Options() tikv.Options {
	return tikv.Options{Disable1PC: true, DisableAsyncCommit: true}
}

// Open opens the TiKV engine with opts on a new client of the cluster. The
// DB is closed when t ends.
func (c *Cluster) Open(t testing.TB, opts tikv.Options) *tikv.DB {
	t.Helper()
	d, err := tikv.OpenWithClient(c.Client(t), opts)
	if err != nil {
		t.Fatalf("tikvtest: open: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil && !errors.Is(err, backend.ErrClosed) {
			t.Errorf("tikvtest: close: %v", err)
		}
	})
	return d
}

// NewMock opens the TiKV engine with Options on a fresh single-store mock
// cluster. It is closed when t ends.
func NewMock(t testing.TB) *tikv.DB {
	t.Helper()
	return NewCluster(t).Open(t, Options())
}

// sharedClient is a store's connection to the mock TiKV, which every
// client of the cluster shares: a store's Close leaves it open (the Cluster
// closes it), and it refuses requests once the Cluster is closed.
type sharedClient struct{ c *Cluster }

var errClosed = errors.New("tikvtest: mock cluster closed")

func (s sharedClient) SendRequest(ctx context.Context, addr string, req *tikvrpc.Request, timeout time.Duration) (*tikvrpc.Response, error) {
	s.c.mu.RLock()
	defer s.c.mu.RUnlock()
	if s.c.closed {
		return nil, errClosed
	}
	send := func() (*tikvrpc.Response, error) { return s.c.rpc.SendRequest(ctx, addr, req, timeout) }
	if h := s.c.hook.Load(); h != nil {
		return (*h)(req, send)
	}
	return send()
}

func (s sharedClient) SendRequestAsync(ctx context.Context, addr string, req *tikvrpc.Request, cb async.Callback[*tikvrpc.Response]) {
	go func() { cb.Schedule(s.SendRequest(ctx, addr, req, 0)) }()
}

func (sharedClient) Close() error                                   { return nil }
func (sharedClient) CloseAddr(string) error                         { return nil }
func (sharedClient) SetEventListener(tikvstore.ClientEventListener) {}

// countingPD counts timestamp requests to the mock PD.
type countingPD struct {
	pd.Client
	calls atomic.Int64
}

func (p *countingPD) GetTS(ctx context.Context) (int64, int64, error) {
	p.calls.Add(1)
	return p.Client.GetTS(ctx)
}

func (p *countingPD) GetTSAsync(ctx context.Context) tso.TSFuture {
	p.calls.Add(1)
	return p.Client.GetTSAsync(ctx)
}

// The mock PD's Close does nothing, and client stores call it; keeping it
// here documents that sharing it is safe.
func (p *countingPD) Close() { p.Client.Close() }
