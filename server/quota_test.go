package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/axon-kv/axon/internal/testenv"
	"github.com/axon-kv/axon/server"
)

func isNoSpace(err error) bool {
	return errors.Is(err, rpctypes.ErrNoSpace) || (err != nil && strings.Contains(err.Error(), "database space exceeded"))
}

// httpGet returns the status and body of an HTTP GET.
func httpGet(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

type healthJSON struct {
	Health string `json:"health"`
	Reason string `json:"reason"`
}

func getHealth(t testing.TB, url string) (int, healthJSON) {
	t.Helper()
	code, body := httpGet(t, url)
	var h healthJSON
	if err := json.Unmarshal([]byte(body), &h); err != nil {
		t.Fatalf("/health body %q: %v", body, err)
	}
	return code, h
}

// TestQuotaNoSpace fills a Badger backend past a small quota: writes that
// add data fail with etcd's NOSPACE error and raise the alarm; reads,
// deletes and compaction still work; disarming once under the quota lets
// writes through; every acknowledged write is intact.
func TestQuotaNoSpace(t *testing.T) {
	const quota = 2 << 20
	s := opsStartServer(t, server.Config{Backend: "badger", QuotaBackendBytes: quota, ListenMetricsURLs: []string{"http://127.0.0.1:0"}})
	c := testenv.NewClient(t, s.ClientURLs()...)
	ops := s.MetricsURLs()[0]
	ctx := context.Background()

	if code, h := getHealth(t, ops+"/health"); code != 200 || h.Health != "true" {
		t.Fatalf("/health before: %d %+v", code, h)
	}
	val := strings.Repeat("q", 128<<10)
	acked := map[string]string{}
	var err error
	for i := 0; i < 1000 && err == nil; i++ {
		k := fmt.Sprintf("/registry/quota/%04d", i)
		if _, err = c.Put(ctx, k, val); err == nil {
			acked[k] = val
		}
		time.Sleep(10 * time.Millisecond) // the backend size is sampled about once a second
	}
	if !isNoSpace(err) {
		t.Fatalf("writing past the quota: %v, want %v", err, rpctypes.ErrGRPCNoSpace)
	}
	t.Logf("%d writes acknowledged before NOSPACE", len(acked))

	// Writes that add data are refused.
	if _, err := c.Put(ctx, "/registry/quota/small", "v"); !isNoSpace(err) {
		t.Errorf("small put under the alarm: %v", err)
	}
	if _, err := c.Txn(ctx).Then(clientv3.OpPut("/registry/quota/txn", "v")).Commit(); !isNoSpace(err) {
		t.Errorf("txn with a put under the alarm: %v", err)
	}
	if _, err := c.Grant(ctx, 60); !isNoSpace(err) {
		t.Errorf("lease grant under the alarm: %v", err)
	}
	// Reads, deletes, read-only and delete-only txns and compaction work.
	if _, err := c.Get(ctx, "/registry/quota/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil {
		t.Errorf("get under the alarm: %v", err)
	}
	var victim string
	for k := range acked {
		victim = k
		break
	}
	del, err := c.Delete(ctx, victim)
	if err != nil || del.Deleted != 1 {
		t.Fatalf("delete under the alarm: %v %v", del, err)
	}
	delete(acked, victim)
	if _, err := c.Txn(ctx).Then(clientv3.OpDelete("/registry/quota/none"), clientv3.OpGet("/registry/quota/0000")).Commit(); err != nil {
		t.Errorf("delete-only txn under the alarm: %v", err)
	}
	if _, err := c.Compact(ctx, del.Header.Revision); err != nil {
		t.Errorf("compact under the alarm: %v", err)
	}

	// The alarm is listed, reported by Status, /health and /metrics.
	alarms, err := c.AlarmList(ctx)
	if err != nil || len(alarms.Alarms) != 1 || alarms.Alarms[0].Alarm != pb.AlarmType_NOSPACE {
		t.Fatalf("alarm list: %v %v", alarms, err)
	}
	st, err := c.Status(ctx, c.Endpoints()[0])
	if err != nil || st.DbSizeQuota != quota || st.DbSize <= 0 {
		t.Errorf("status: quota %d size %d err %v", st.DbSizeQuota, st.DbSize, err)
	}
	if code, h := getHealth(t, ops+"/health"); code != 503 || h.Health != "false" || !strings.Contains(h.Reason, "NOSPACE") {
		t.Errorf("/health under the alarm: %d %+v", code, h)
	}
	if code, h := getHealth(t, ops+"/health?exclude=NOSPACE"); code != 200 || h.Health != "true" {
		t.Errorf("/health?exclude=NOSPACE: %d %+v", code, h)
	}
	if code, _ := httpGet(t, ops+"/readyz"); code != 200 {
		t.Errorf("/readyz under the alarm: %d (reads are still served)", code)
	}
	if v := scrape(t, ops)["axon_quota_nospace_alarm"]; v != 1 {
		t.Errorf("axon_quota_nospace_alarm = %v", v)
	}

	// Disarming while still over the quota: the next write raises it again.
	if _, err := c.AlarmDisarm(ctx, &clientv3.AlarmMember{MemberID: alarms.Alarms[0].MemberID, Alarm: pb.AlarmType_NOSPACE}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "/registry/quota/small", "v"); !isNoSpace(err) {
		t.Errorf("put after disarming while over the quota: %v", err)
	}
	// Under the quota (raised here), disarming clears it for good.
	s.SetQuotaBackendBytes(1 << 30)
	if _, err := c.Put(ctx, "/registry/quota/small", "v"); !isNoSpace(err) {
		t.Errorf("put before disarming: %v (the alarm stays until disarmed)", err)
	}
	if _, err := c.AlarmDisarm(ctx, &clientv3.AlarmMember{MemberID: alarms.Alarms[0].MemberID, Alarm: pb.AlarmType_NOSPACE}); err != nil {
		t.Fatal(err)
	}
	if a, err := c.AlarmList(ctx); err != nil || len(a.Alarms) != 0 {
		t.Fatalf("alarms after disarm: %v %v", a, err)
	}
	if _, err := c.Put(ctx, "/registry/quota/small", "v"); err != nil {
		t.Fatalf("put after disarming under the quota: %v", err)
	}
	acked["/registry/quota/small"] = "v"
	if _, err := c.Grant(ctx, 60); err != nil {
		t.Errorf("lease grant after disarming: %v", err)
	}
	if code, h := getHealth(t, ops+"/health"); code != 200 || h.Health != "true" {
		t.Errorf("/health after disarming: %d %+v", code, h)
	}

	// Every acknowledged write is intact.
	r, err := c.Get(ctx, "/registry/quota/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) != len(acked) {
		t.Fatalf("%d keys, want %d", len(r.Kvs), len(acked))
	}
	for _, kv := range r.Kvs {
		if acked[string(kv.Key)] != string(kv.Value) {
			t.Fatalf("key %s changed", kv.Key)
		}
	}
}
