package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/axon-kv/axon/internal/testenv"
	"github.com/axon-kv/axon/server"
)

// scrape reads /metrics into a map from series (name{labels} exactly as
// printed) to value; each metric name alone maps to the sum of its series.
func scrape(t testing.TB, base string) map[string]float64 {
	t.Helper()
	code, body := httpGet(t, base+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		series := line[:i]
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[series] = v
		name := series
		if j := strings.IndexByte(series, '{'); j >= 0 {
			name = series[:j]
			out[name] += v
		}
	}
	return out
}

// grpcSeries is the label set go-grpc-middleware prints for a method.
func grpcSeries(name, typ, service, method, code string) string {
	if code == "" {
		return fmt.Sprintf(`%s{grpc_method="%s",grpc_service="%s",grpc_type="%s"}`, name, method, service, typ)
	}
	return fmt.Sprintf(`%s{grpc_code="%s",grpc_method="%s",grpc_service="%s",grpc_type="%s"}`, name, code, method, service, typ)
}

// TestMetricsMove scrapes /metrics around a workload and checks that the
// named series move with it.
func TestMetricsMove(t *testing.T) {
	s := opsStartServer(t, server.Config{Backend: "badger", ListenMetricsURLs: []string{"http://127.0.0.1:0"}, EnablePprof: true, MaxRequestBytes: 4096})
	server.SetKeysCountTTL(s, 0)
	c := testenv.NewClient(t, s.ClientURLs()...)
	ops := s.MetricsURLs()[0]
	ctx := context.Background()

	putOK := grpcSeries("grpc_server_handled_total", "unary", "etcdserverpb.KV", "Put", "OK")
	putTooLarge := grpcSeries("grpc_server_handled_total", "unary", "etcdserverpb.KV", "Put", "InvalidArgument")
	putLatency := grpcSeries("grpc_server_handling_seconds_count", "unary", "etcdserverpb.KV", "Put", "")

	before := scrape(t, ops)
	for _, name := range []string{"etcd_server_has_leader", "etcd_server_is_leader", "go_goroutines", "process_cpu_seconds_total",
		"etcd_mvcc_db_total_size_in_bytes", "etcd_server_quota_backend_bytes", "axon_mvcc_keys"} {
		if _, ok := before[name]; !ok {
			t.Errorf("series %s missing", name)
		}
	}
	if before["etcd_server_has_leader"] != 1 || before["etcd_server_is_leader"] != 1 {
		t.Errorf("has_leader %v is_leader %v", before["etcd_server_has_leader"], before["etcd_server_is_leader"])
	}
	if before["etcd_server_quota_backend_bytes"] != 2<<30 {
		t.Errorf("quota %v", before["etcd_server_quota_backend_bytes"])
	}

	// A watcher that sees every put, a lease, puts, a failing put, reads, a
	// compaction.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := c.Watch(wctx, "/registry/m/", clientv3.WithPrefix())
	waitForWatchers(t, ops, 1)
	lease, err := c.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	var last int64
	for i := 0; i < n; i++ {
		r, err := c.Put(ctx, fmt.Sprintf("/registry/m/%02d", i), "v", clientv3.WithLease(lease.ID))
		if err != nil {
			t.Fatal(err)
		}
		last = r.Header.Revision
	}
	for got := 0; got < n; {
		wr := <-wch
		if wr.Err() != nil {
			t.Fatal(wr.Err())
		}
		got += len(wr.Events)
	}
	if _, err := c.Put(ctx, "/registry/m/big", strings.Repeat("x", 8192)); err == nil {
		t.Fatal("oversized put succeeded")
	}
	for i := 0; i < 5; i++ {
		if _, err := c.Get(ctx, "/registry/m/", clientv3.WithPrefix()); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Compact(ctx, last-5); err != nil {
		t.Fatal(err)
	}

	after := scrape(t, ops)
	grew := func(series string, by float64) {
		t.Helper()
		if d := after[series] - before[series]; d < by {
			t.Errorf("%s moved by %v (%v -> %v), want at least %v", series, d, before[series], after[series], by)
		}
	}
	grew(putOK, n)
	grew(putTooLarge, 1)
	grew(putLatency, n+1)
	grew(grpcSeries("grpc_server_handled_total", "unary", "etcdserverpb.KV", "Range", "OK"), 5)
	grew(grpcSeries("grpc_server_started_total", "bidi_stream", "etcdserverpb.Watch", "Watch", ""), 1)
	grew("etcd_debugging_mvcc_current_revision", n)
	grew("etcd_debugging_mvcc_events_total", n)
	grew("axon_watch_events_published_total", n)
	grew("etcd_disk_backend_commit_duration_seconds_count", n)
	grew("axon_sequencer_group_size_count", 1)
	grew("axon_sequencer_commit_seconds_count", 1)
	grew("axon_backend_read_duration_seconds_count", 5)
	grew("etcd_debugging_lease_granted_total", 1)
	grew("axon_mvcc_keys", n)
	if after["axon_sequencer_group_size_sum"] < n {
		t.Errorf("axon_sequencer_group_size_sum = %v, want >= %d", after["axon_sequencer_group_size_sum"], n)
	}
	if got := after["etcd_debugging_mvcc_current_revision"]; got != float64(last) {
		t.Errorf("current revision %v, want %d", got, last)
	}
	if got := after["etcd_debugging_mvcc_compact_revision"]; got != float64(last-5) {
		t.Errorf("compact revision %v, want %d", got, last-5)
	}
	if after["etcd_debugging_mvcc_watcher_total"] != 1 || after["etcd_debugging_mvcc_watch_stream_total"] < 1 {
		t.Errorf("watchers %v streams %v", after["etcd_debugging_mvcc_watcher_total"], after["etcd_debugging_mvcc_watch_stream_total"])
	}
	if after["axon_leases"] != 1 {
		t.Errorf("axon_leases = %v", after["axon_leases"])
	}
	if after["etcd_mvcc_db_total_size_in_bytes"] <= 0 {
		t.Errorf("db size %v", after["etcd_mvcc_db_total_size_in_bytes"])
	}

	// Health endpoints.
	if code, h := getHealth(t, ops+"/health"); code != 200 || h.Health != "true" || h.Reason != "" {
		t.Errorf("/health: %d %+v", code, h)
	}
	if code, body := httpGet(t, ops+"/health"); strings.TrimSpace(body) != `{"health":"true","reason":""}` {
		t.Errorf("/health body %d %q", code, body)
	}
	for _, p := range []string{"/livez", "/readyz"} {
		if code, body := httpGet(t, ops+p); code != 200 || strings.TrimSpace(body) != "ok" {
			t.Errorf("%s: %d %q", p, code, body)
		}
	}
	if code, _ := httpGet(t, ops+"/debug/pprof/"); code != 200 {
		t.Errorf("/debug/pprof/ with EnablePprof: %d", code)
	}

	// The gRPC health service on the client URL.
	cc, err := grpc.NewClient(opsHostOf(t, s.ClientURLs()[0]), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	opsWaitFor(t, "gRPC health SERVING", func() bool {
		r, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		return err == nil && r.Status == healthpb.HealthCheckResponse_SERVING
	})
}

func waitForWatchers(t testing.TB, ops string, n float64) {
	t.Helper()
	opsWaitFor(t, fmt.Sprintf("%v watchers", n), func() bool { return scrape(t, ops)["etcd_debugging_mvcc_watcher_total"] >= n })
}

func TestPprofOffByDefault(t *testing.T) {
	s := opsStartServer(t, server.Config{ListenMetricsURLs: []string{"http://127.0.0.1:0"}})
	if code, _ := httpGet(t, s.MetricsURLs()[0]+"/debug/pprof/"); code != 404 {
		t.Errorf("/debug/pprof/ without EnablePprof: %d, want 404", code)
	}
}

// TestDashboardMetricsExist checks that every series the Grafana dashboard
// queries is exported.
func TestDashboardMetricsExist(t *testing.T) {
	raw, err := os.ReadFile("../deploy/grafana/axon-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Targets []struct{ Expr string } `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	s := opsStartServer(t, server.Config{ListenMetricsURLs: []string{"http://127.0.0.1:0"}})
	c := testenv.NewClient(t, s.ClientURLs()...)
	if _, err := c.Put(context.Background(), "k", "v"); err != nil {
		t.Fatal(err)
	}
	have := scrape(t, s.MetricsURLs()[0])
	names := regexp.MustCompile(`\b(?:etcd|axon|grpc|go|process)_[a-z_]+`)
	n := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, name := range names.FindAllString(tg.Expr, -1) {
				switch name {
				case "grpc_service", "grpc_method", "grpc_code", "grpc_type":
					continue // label names
				}
				n++
				_, ok := have[name]
				_, hist := have[strings.TrimSuffix(name, "_bucket")+"_count"]
				if !ok && !hist {
					t.Errorf("dashboard queries %s, which /metrics does not export", name)
				}
			}
		}
	}
	if n < 20 {
		t.Fatalf("only %d metric names found in the dashboard", n)
	}
}
