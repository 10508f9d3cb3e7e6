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
	"google.golang.org/grpc"

	"github.com/axon-kv/axon/internal/testenv"
	"github.com/axon-kv/axon/server"
)

// BenchmarkReadMemory measures how much heap a read of 100,000 objects
// (70-byte keys, 512-byte values) adds to an `axon serve` process while it
// answers it, as a RangeStream and as one unary Range. The server's live
// heap is sampled after a forced collection (/debug/pprof/heap?gc=1, then
// go_memstats_heap_alloc_bytes) each time the client has received a
// message (the stream) or continuously (the unary answer, one message);
// the peak over the heap before the read is reported in MiB and in chunks
// (one chunk is --max-request-bytes, 1.5 MiB). The client keeps fixed
// 64 KiB flow-control windows, so the stream's server side is sampled
// while it waits on flow control: the chunk it filled and the one being
// sent. Samples fall between messages: a peak shorter than that is not
// seen.
//
//	go test ./server -run '^$' -bench BenchmarkReadMemory -benchtime 1x
func BenchmarkReadMemory(b *testing.B) {
	const n = 100_000
	bin := testenv.BuildAxon(b)
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d", testenv.FreePort(b))
	p := testenv.StartAxonProcess(b, bin, b.TempDir(), "--enable-pprof", "--listen-metrics-urls", metricsURL,
		"--max-read-bytes-in-flight", "0", "--log-level", "warn")
	c := p.WaitReady(b)
	ctx := context.Background()
	val := strings.Repeat("v", 512)
	// 70-byte keys, as kube-apiserver's /registry/<resource>/<namespace>/<name>
	putObjects(b, c, n, func(i int) string {
		return fmt.Sprintf("/registry/configmaps/bench-namespace-000/object-%023d", i)
	}, val)
	time.Sleep(3 * time.Second) // let the engine flush what the load left in memtables

	conn := smallWindowConn(b, p.URL, 64<<10, 64<<10, grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30)))
	kv := pb.NewKVClient(conn)
	req := &pb.RangeRequest{Key: []byte("/registry/configmaps/"), RangeEnd: []byte("/registry/configmaps0")}
	chunk := float64(server.DefaultMaxRequestBytes)
	liveHeap := func() float64 {
		httpGet(b, metricsURL+"/debug/pprof/heap?gc=1") // collects first
		v, ok := scrape(b, metricsURL)["go_memstats_heap_alloc_bytes"]
		if !ok {
			b.Fatal("no go_memstats_heap_alloc_bytes in /metrics")
		}
		return v
	}
	report := func(b *testing.B, peak float64) {
		b.ReportMetric(peak/(1<<20), "peak-MiB")
		b.ReportMetric(peak/chunk, "peak-chunks")
	}

	b.Run("stream", func(b *testing.B) {
		var peak float64
		for range b.N {
			before := liveHeap()
			st, err := kv.RangeStream(ctx, req)
			if err != nil {
				b.Fatal(err)
			}
			got := 0
			for {
				m, err := st.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					b.Fatal(err)
				}
				got += len(m.RangeResponse.Kvs)
				peak = max(peak, liveHeap()-before)
			}
			if got != n {
				b.Fatalf("stream sent %d key-values, want %d", got, n)
			}
		}
		report(b, peak)
	})
	b.Run("unary", func(b *testing.B) {
		var peak float64
		for range b.N {
			before := liveHeap()
			done := make(chan error)
			go func() {
				r, err := kv.Range(ctx, req)
				if err == nil && len(r.Kvs) != n {
					err = fmt.Errorf("range answered %d key-values, want %d", len(r.Kvs), n)
				}
				done <- err
			}()
			for running := true; running; {
				select {
				case err := <-done:
					if err != nil {
						b.Fatal(err)
					}
					running = false
				default:
					peak = max(peak, liveHeap()-before)
				}
			}
		}
		report(b, peak)
	})
}
