package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/axon-kv/axon/internal/testenv"
	"github.com/axon-kv/axon/server"
)

// TestReadBudget fills --max-read-bytes-in-flight with a RangeStream whose
// client stops reading (its share stays held while the server waits on flow
// control), then checks that a big unary LIST waits and fails with etcd's
// "too many requests", that small reads and writes go on meanwhile, that
// the budget was never exceeded, and that once the stream is read to its
// end every answer is complete and the budget is free again.
func TestReadBudget(t *testing.T) {
	const (
		maxRequest = 256 << 10 // a stream's share is twice this
		budget     = 640 << 10
		n          = 2000
	)
	srv, c := testenv.StartAxon(t, server.Config{
		MaxRequestBytes:      maxRequest,
		MaxReadBytesInFlight: budget,
		ReadWaitTimeout:      3 * time.Second, // the single-object reads behind a waiting LIST answer well within it
		ListenMetricsURLs:    []string{"http://127.0.0.1:0"},
	})
	metrics := srv.MetricsURLs()[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	val := strings.Repeat("v", 1000)
	putObjects(t, c, n, func(i int) string { return fmt.Sprintf("/big/%05d", i) }, val)

	// The server's Send blocks once the client's 64 KiB window is full.
	conn := smallWindowConn(t, srv.ClientURLs()[0], 64<<10, 64<<10)
	st, err := pb.NewKVClient(conn).RangeStream(ctx, &pb.RangeRequest{Key: []byte("/big/"), RangeEnd: []byte("/big0")})
	if err != nil {
		t.Fatal(err)
	}
	waitMetric(t, metrics, "axon_read_bytes_in_flight", func(v float64) bool { return v >= 2*maxRequest })

	// The whole LIST does not fit next to the stream: it waits, then fails.
	// While it waits, single-object reads, alone and in a Txn (a CAS
	// update's Else), are answered: they do not queue behind it.
	listDone := make(chan error, 1)
	go func() {
		_, err := c.Get(ctx, "/big/", clientv3.WithPrefix())
		listDone <- err
	}()
	waitMetric(t, metrics, "axon_reads_waiting", func(v float64) bool { return v == 1 })
	if r, err := c.Get(ctx, "/big/00005"); err != nil || len(r.Kvs) != 1 {
		t.Fatalf("single-object read while a LIST waits for room: %v, %v", r, err)
	}
	if tr, err := c.Txn(ctx).If(clientv3.Compare(clientv3.Version("/big/00006"), "=", 0)).
		Else(clientv3.OpGet("/big/00006")).Commit(); err != nil || len(tr.Responses) != 1 {
		t.Fatalf("CAS-shaped Txn while a LIST waits for room: %v, %v", tr, err)
	}
	select {
	case err := <-listDone:
		t.Fatalf("the LIST finished (%v) before the single-object reads behind it were answered: they queued behind it", err)
	default:
	}
	err = <-listDone
	if ee, ok := err.(rpctypes.EtcdError); !ok || ee.Code() != codes.ResourceExhausted || ee.Error() != "etcdserver: too many requests" {
		t.Fatalf("LIST over the budget: %v, want ResourceExhausted: etcdserver: too many requests", err)
	}
	// So does a Txn reading the whole range, in either branch: its share
	// is taken before the writer runs it.
	_, err = c.Txn(ctx).If(clientv3.Compare(clientv3.Version("/nothing"), ">", 0)).
		Else(clientv3.OpGet("/big/", clientv3.WithPrefix())).Commit()
	if ee, ok := err.(rpctypes.EtcdError); !ok || ee.Code() != codes.ResourceExhausted {
		t.Fatalf("Txn reading over the budget: %v, want ResourceExhausted", err)
	}
	// A single-object read, in a Txn too, and a write fit.
	if r, err := c.Get(ctx, "/big/00007"); err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != val {
		t.Fatalf("small read while the budget is taken: %v, %v", r, err)
	}
	tr, err := c.Txn(ctx).Then(clientv3.OpGet("/big/00008"), clientv3.OpGet("/big/", clientv3.WithPrefix(), clientv3.WithCountOnly())).Commit()
	if err != nil || len(tr.Responses) != 2 || len(tr.Responses[0].GetResponseRange().Kvs) != 1 || tr.Responses[1].GetResponseRange().Count != n {
		t.Fatalf("small Txn read while the budget is taken: %v, %v", tr, err)
	}
	if _, err := c.Put(ctx, "/big/x", "written meanwhile"); err != nil {
		t.Fatalf("write while the budget is taken: %v", err)
	}
	have := scrape(t, metrics)
	if v := have["axon_read_bytes_in_flight"]; v > budget {
		t.Errorf("reads hold %.0f bytes, over the budget of %d", v, budget)
	}
	if v := have["axon_reads_refused_total"]; v != 2 {
		t.Errorf("axon_reads_refused_total = %v, want 2 (the LIST and the Txn)", v)
	}

	// Reading the stream to its end frees its share.
	got := 0
	for {
		m, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		for _, kv := range m.RangeResponse.Kvs {
			if want := fmt.Sprintf("/big/%05d", got); string(kv.Key) != want || string(kv.Value) != val {
				t.Fatalf("stream entry %d: %q (%d value bytes), want %q", got, kv.Key, len(kv.Value), want)
			}
			got++
		}
		if h := m.RangeResponse.Header; h != nil && m.RangeResponse.Count != n {
			t.Errorf("stream count %d, want %d", m.RangeResponse.Count, n)
		}
	}
	if got != n {
		t.Fatalf("stream sent %d key-values, want %d", got, n)
	}
	r, err := c.Get(ctx, "/big/", clientv3.WithPrefix())
	if err != nil || len(r.Kvs) != n+1 {
		t.Fatalf("LIST after the stream: %v, want %d key-values", err, n+1)
	}
	waitMetric(t, metrics, "axon_read_bytes_in_flight", func(v float64) bool { return v == 0 })
}

// putObjects writes n objects, key(i) holding val, 100 per Txn.
func putObjects(t testing.TB, c *clientv3.Client, n int, key func(int) string, val string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i := 0; i < n; i += 100 {
		ops := make([]clientv3.Op, 0, 100)
		for j := i; j < min(i+100, n); j++ {
			ops = append(ops, clientv3.OpPut(key(j), val))
		}
		if _, err := c.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
}

// smallWindowConn dials clientURL with fixed flow-control windows (no BDP
// growth): a stream the test does not read stops the server's sends once
// they are full. It is closed on t.Cleanup.
func smallWindowConn(t testing.TB, clientURL string, window, connWindow int32, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(opsHostOf(t, clientURL), append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(window), grpc.WithInitialConnWindowSize(connWindow),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// waitMetric waits until the metric name on base's /metrics satisfies ok.
func waitMetric(t *testing.T, base, name string, ok func(float64) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		v := scrape(t, base)[name]
		if ok(v) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s stayed at %v", name, v)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
