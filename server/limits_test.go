package server_test

// Overload tests: past each limit the server answers with etcd's codes,
// stays up, takes a write afterwards and keeps every acknowledged write.
// Sizes are bounded for a small shared machine: 2,000 concurrent streams
// (the 10,000 only differ in memory: about 3 goroutines and a few
// KiB per stream), a flood of 2,000 watch creations on one stream.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/axon-kv/axon/internal/testenv"
	"github.com/axon-kv/axon/server"
)

// ackLog records acknowledged writes and checks them later.
type ackLog struct {
	mu   sync.Mutex
	vals map[string]string
}

func (a *ackLog) put(t testing.TB, c *clientv3.Client, k, v string) {
	t.Helper()
	if _, err := c.Put(context.Background(), k, v); err != nil {
		t.Fatalf("put %s: %v", k, err)
	}
	a.mu.Lock()
	if a.vals == nil {
		a.vals = map[string]string{}
	}
	a.vals[k] = v
	a.mu.Unlock()
}

// check proves the server still takes writes and every acknowledged one
// is intact.
func (a *ackLog) check(t testing.TB, c *clientv3.Client, prefix string) {
	t.Helper()
	a.put(t, c, prefix+"after-overload", "ok")
	r, err := c.Get(context.Background(), prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(r.Kvs) != len(a.vals) {
		t.Fatalf("%d keys under %s, want %d", len(r.Kvs), prefix, len(a.vals))
	}
	for _, kv := range r.Kvs {
		if a.vals[string(kv.Key)] != string(kv.Value) {
			t.Fatalf("key %s = %q, want %q", kv.Key, kv.Value, a.vals[string(kv.Key)])
		}
	}
}

func rawConn(t testing.TB, s *server.Server) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(opsHostOf(t, s.ClientURLs()[0]), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func TestOverloadRequestLimits(t *testing.T) {
	const maxBytes, maxOps = 64 << 10, 16
	s, c := testenv.StartAxon(t, server.Config{MaxRequestBytes: maxBytes, MaxTxnOps: maxOps})
	var acked ackLog
	for i := 0; i < 10; i++ {
		acked.put(t, c, fmt.Sprintf("/o/%d", i), strings.Repeat("v", i*1000))
	}
	kv := pb.NewKVClient(rawConn(t, s))
	ctx := context.Background()

	// Over --max-request-bytes: etcd's "request is too large".
	_, err := kv.Put(ctx, &pb.PutRequest{Key: []byte("/o/big"), Value: make([]byte, maxBytes+1)})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), rpctypes.ErrGRPCRequestTooLarge.Error()) {
		t.Errorf("oversized put: %v", err)
	}
	// Past the gRPC receive limit (max-request-bytes plus etcd's 512 KiB
	// framing allowance): the transport's ResourceExhausted.
	_, err = kv.Put(ctx, &pb.PutRequest{Key: []byte("/o/huge"), Value: make([]byte, 4<<20)})
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("huge put: %v, want ResourceExhausted", err)
	}
	// Too many operations.
	txn := &pb.TxnRequest{}
	for i := 0; i <= maxOps; i++ {
		txn.Success = append(txn.Success, &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(fmt.Sprintf("/o/t%d", i))}}})
	}
	if _, err := kv.Txn(ctx, txn); !errors.Is(err, rpctypes.ErrGRPCTooManyOps) && status.Convert(err).Message() != rpctypes.ErrGRPCTooManyOps.Error() {
		t.Errorf("txn with %d ops: %v", maxOps+1, err)
	}
	// A burst of each, concurrently.
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			kv.Put(ctx, &pb.PutRequest{Key: []byte("/o/big"), Value: make([]byte, maxBytes*2)})
		}()
		go func() { defer wg.Done(); kv.Txn(ctx, txn) }()
	}
	wg.Wait()
	acked.check(t, c, "/o/")
}

// TestOverloadWatchFlood floods one stream with creations, with and
// without --max-watchers-per-stream.
func TestOverloadWatchFlood(t *testing.T) {
	const limit, flood = 100, 2000
	s := opsStartServer(t, server.Config{MaxWatchersPerStream: limit, ListenMetricsURLs: []string{"http://127.0.0.1:0"}})
	c := testenv.NewClient(t, s.ClientURLs()...)
	var acked ackLog
	acked.put(t, c, "/w/before", "1")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ws, err := pb.NewWatchClient(rawConn(t, s)).Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for i := 0; i < flood; i++ {
			if err := ws.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{
				Key: []byte(fmt.Sprintf("/w/%d", i))}}}); err != nil {
				return
			}
		}
	}()
	created, refused := 0, 0
	for created+refused < flood {
		r, err := ws.Recv()
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case !r.Created:
			t.Fatalf("unexpected response %v", r)
		case r.Canceled:
			if r.WatchId != -1 || !strings.Contains(r.CancelReason, "too many watchers") {
				t.Fatalf("refusal %v", r)
			}
			refused++
		default:
			created++
		}
	}
	// Answers come in request order: the first `limit` were created.
	if refused != flood-limit {
		t.Fatalf("refused %d of %d, want %d", refused, flood, flood-limit)
	}
	// Canceling one makes room for one.
	ws.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: 0}}})
	for {
		r, err := ws.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if r.Canceled && r.WatchId == 0 {
			break
		}
	}
	ws.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte("/w/1")}}})
	ws.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte("/w/1")}}})
	if r, _ := ws.Recv(); !r.Created || r.Canceled {
		t.Fatalf("creation after a cancel: %v", r)
	}
	if r, _ := ws.Recv(); !r.Created || !r.Canceled {
		t.Fatalf("creation past the limit again: %v", r)
	}
	// Watchers still get events.
	acked.put(t, c, "/w/1", "x")
	r, err := ws.Recv()
	if err != nil || len(r.Events) != 1 || string(r.Events[0].Kv.Key) != "/w/1" {
		t.Fatalf("event after the flood: %v %v", r, err)
	}
	if got := scrape(t, s.MetricsURLs()[0])["axon_watch_refused_total"]; got != flood-limit+1 {
		t.Errorf("axon_watch_refused_total = %v, want %d", got, flood-limit+1)
	}

	// clientv3 sees a refused watch as a canceled channel with the reason.
	cctx, ccancel := context.WithCancel(context.Background())
	defer ccancel()
	for i := 0; i < limit; i++ {
		c.Watch(cctx, fmt.Sprintf("/w/c%d", i), clientv3.WithCreatedNotify())
	}
	wch := c.Watch(cctx, "/w/over", clientv3.WithCreatedNotify())
	select {
	case wr := <-wch:
		if wr.Err() == nil || !strings.Contains(wr.Err().Error(), "too many watchers") {
			t.Fatalf("clientv3 watch past the limit: %+v %v", wr, wr.Err())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no answer to a watch past the limit")
	}
	acked.check(t, c, "/w/")
}

// TestOverloadWatchFloodUnlimited: without a limit (etcd's default) a
// flood of creations is served.
func TestOverloadWatchFloodUnlimited(t *testing.T) {
	const flood = 2000
	s, c := testenv.StartAxon(t, server.Config{})
	var acked ackLog
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ws, err := pb.NewWatchClient(rawConn(t, s)).Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for i := 0; i < flood; i++ {
			ws.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte("/u/k")}}})
		}
	}()
	for i := 0; i < flood; i++ {
		r, err := ws.Recv()
		if err != nil || !r.Created || r.Canceled {
			t.Fatalf("creation %d: %v %v", i, r, err)
		}
	}
	acked.put(t, c, "/u/k", "v")
	for got := 0; got < flood; {
		r, err := ws.Recv()
		if err != nil {
			t.Fatal(err)
		}
		got += len(r.Events)
	}
	acked.check(t, c, "/u/")
}

// TestOverloadConcurrentStreams opens 2,000 watch streams at once; every
// one gets the next event.
func TestOverloadConcurrentStreams(t *testing.T) {
	const streams, conns = 2000, 4
	s, c := testenv.StartAxon(t, server.Config{})
	var acked ackLog
	acked.put(t, c, "/s/before", "1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var ccs []pb.WatchClient
	for i := 0; i < conns; i++ {
		ccs = append(ccs, pb.NewWatchClient(rawConn(t, s)))
	}
	all := make([]pb.Watch_WatchClient, streams)
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ws, err := ccs[i%conns].Watch(ctx)
			if err == nil {
				err = ws.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{
					Key: []byte("/s/"), RangeEnd: []byte("/s0")}}})
			}
			if err == nil {
				var r *pb.WatchResponse
				if r, err = ws.Recv(); err == nil && !r.Created {
					err = fmt.Errorf("first response %v", r)
				}
			}
			if err != nil {
				errs <- err
				return
			}
			all[i] = ws
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("stream: %v", err)
	}
	acked.put(t, c, "/s/event", "x")
	for i, ws := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := ws.Recv()
			if err != nil || len(r.Events) != 1 {
				t.Errorf("stream %d: %v %v", i, r, err)
			}
		}()
	}
	wg.Wait()
	acked.check(t, c, "/s/")
}

// TestMaxConcurrentStreams: past the per-connection stream limit a new
// stream waits for a free slot (HTTP/2 flow control), other connections
// are served.
func TestMaxConcurrentStreams(t *testing.T) {
	const limit = 4
	s, c := testenv.StartAxon(t, server.Config{MaxConcurrentStreams: limit})
	var acked ackLog
	acked.put(t, c, "/m/before", "1")
	wc := pb.NewWatchClient(rawConn(t, s))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var open []context.CancelFunc
	for i := 0; i < limit; i++ {
		sctx, scancel := context.WithCancel(ctx)
		open = append(open, scancel)
		ws, err := wc.Watch(sctx)
		if err != nil {
			t.Fatal(err)
		}
		ws.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte("/m/k")}}})
		if r, err := ws.Recv(); err != nil || !r.Created {
			t.Fatalf("stream %d: %v %v", i, r, err)
		}
	}
	// The next stream on this connection cannot start until one ends.
	tctx, tcancel := context.WithTimeout(ctx, 500*time.Millisecond)
	ws, err := wc.Watch(tctx)
	if err == nil {
		ws.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte("/m/k")}}})
		_, err = ws.Recv()
	}
	tcancel()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("stream past the limit: %v, want it to wait (DeadlineExceeded)", err)
	}
	// Another connection is served meanwhile; ending a stream frees a slot.
	acked.put(t, c, "/m/during", "2")
	open[0]()
	opsWaitFor(t, "a free stream slot", func() bool {
		tctx, tcancel := context.WithTimeout(ctx, 2*time.Second)
		defer tcancel()
		ws, err := wc.Watch(tctx)
		if err != nil {
			return false
		}
		if ws.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte("/m/k")}}}) != nil {
			return false
		}
		r, err := ws.Recv()
		return err == nil && r.Created
	})
	acked.check(t, c, "/m/")
}

// TestWriteQueueBound: with a queue of one, concurrent writers wait for
// room and all succeed, gap-free.
func TestWriteQueueBound(t *testing.T) {
	_, c := testenv.StartAxon(t, server.Config{WriteQueueLength: 1})
	const writers = 200
	var acked ackLog
	var wg sync.WaitGroup
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); acked.put(t, c, fmt.Sprintf("/q/%03d", i), "v") }()
	}
	wg.Wait()
	r, err := c.Get(context.Background(), "/q/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if r.Header.Revision != writers+1 {
		t.Errorf("revision %d after %d writes", r.Header.Revision, writers)
	}
	acked.check(t, c, "/q/")
}
