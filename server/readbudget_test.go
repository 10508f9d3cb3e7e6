package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
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
		ReadWaitTimeout:      300 * time.Millisecond,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	val := strings.Repeat("v", 1000)
	for i := 0; i < n; i += 100 {
		ops := make([]clientv3.Op, 0, 100)
		for j := i; j < i+100; j++ {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("/big/%05d", j), val))
		}
		if _, err := c.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
	}

	// A client with fixed 64 KiB flow-control windows (no BDP growth): the
	// server's Send blocks once a window is full.
	conn, err := grpc.NewClient(strings.TrimPrefix(srv.ClientURLs()[0], "http://"),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	st, err := pb.NewKVClient(conn).RangeStream(ctx, &pb.RangeRequest{Key: []byte("/big/"), RangeEnd: []byte("/big0")})
	if err != nil {
		t.Fatal(err)
	}
	waitGauge(t, srv, "axon_read_bytes_in_flight", func(v float64) bool { return v >= 2*maxRequest })

	// The whole LIST does not fit next to the stream: it waits, then fails.
	_, err = c.Get(ctx, "/big/", clientv3.WithPrefix())
	if ee, ok := err.(rpctypes.EtcdError); !ok || ee.Code() != codes.ResourceExhausted || ee.Error() != "etcdserver: too many requests" {
		t.Fatalf("LIST over the budget: %v, want ResourceExhausted: etcdserver: too many requests", err)
	}
	// A single-object read and a write fit.
	if r, err := c.Get(ctx, "/big/00007"); err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != val {
		t.Fatalf("small read while the budget is taken: %v, %v", r, err)
	}
	if _, err := c.Put(ctx, "/big/x", "written meanwhile"); err != nil {
		t.Fatalf("write while the budget is taken: %v", err)
	}
	if v := gauge(t, srv, "axon_read_bytes_in_flight"); v > budget {
		t.Errorf("reads hold %.0f bytes, over the budget of %d", v, budget)
	}
	if v := gauge(t, srv, "axon_reads_refused_total"); v != 1 {
		t.Errorf("axon_reads_refused_total = %v, want 1", v)
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
	waitGauge(t, srv, "axon_read_bytes_in_flight", func(v float64) bool { return v == 0 })
}

func gauge(t *testing.T, srv *server.Server, name string) float64 {
	t.Helper()
	mfs, err := srv.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return metricValue(mf.GetMetric()[0])
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func metricValue(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	}
	return 0
}

func waitGauge(t *testing.T, srv *server.Server, name string, ok func(float64) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		v := gauge(t, srv, name)
		if ok(v) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s stayed at %v", name, v)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
