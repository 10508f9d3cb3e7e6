package nullserver

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

func client(t *testing.T, s *Server) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{s.Addr()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestNullServer(t *testing.T) {
	s, err := Start("127.0.0.1:0", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	c := client(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	st, err := c.Status(ctx, s.Addr())
	if err != nil || st.Version == "" {
		t.Fatalf("status %v %v", st, err)
	}
	rev0 := s.Revision()
	put, err := c.Put(ctx, "/a", "b")
	if err != nil || put.Header.Revision != rev0+1 {
		t.Fatalf("put %v %v", put, err)
	}
	get, err := c.Get(ctx, "/some/key")
	if err != nil || len(get.Kvs) != 1 || string(get.Kvs[0].Key) != "/some/key" || len(get.Kvs[0].Value) != 512 {
		t.Fatalf("get %v %v", get, err)
	}
	page, err := c.Get(ctx, "/registry/", clientv3.WithPrefix(), clientv3.WithLimit(500))
	if err != nil || len(page.Kvs) != 500 || page.More {
		t.Fatalf("page: %d kvs, more %v, %v", len(page.Kvs), page.More, err)
	}
	for _, kv := range page.Kvs[:3] {
		if len(kv.Key) != 70 || len(kv.Value) != 512 {
			t.Fatalf("synthetic kv of %d/%d bytes", len(kv.Key), len(kv.Value))
		}
	}
	all, err := c.Get(ctx, "/registry/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil || len(all.Kvs) != 10000 || len(all.Kvs[0].Value) != 0 {
		t.Fatalf("unlimited range: %d kvs, %v", len(all.Kvs), err)
	}
	cnt, err := c.Get(ctx, "/registry/", clientv3.WithPrefix(), clientv3.WithCountOnly(), clientv3.WithLimit(7))
	if err != nil || cnt.Count != 7 || len(cnt.Kvs) != 0 {
		t.Fatalf("count only: %v %v", cnt, err)
	}

	// A txn takes its success branch, however unlikely the compare.
	rev := s.Revision()
	txn, err := c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision("/x"), "=", 123456)).
		Then(clientv3.OpPut("/x", "1"), clientv3.OpGet("/x"), clientv3.OpTxn(nil, []clientv3.Op{clientv3.OpDelete("/y")}, nil)).
		Else(clientv3.OpGet("/x")).Commit()
	if err != nil || !txn.Succeeded || len(txn.Responses) != 3 || txn.Header.Revision != rev+1 {
		t.Fatalf("txn %v %v", txn, err)
	}
	ro, err := c.Txn(ctx).Then(clientv3.OpGet("/x")).Commit()
	if err != nil || ro.Header.Revision != rev+1 {
		t.Fatalf("read-only txn moved the revision: %v %v", ro, err)
	}

	// Watch: created, never an event.
	wctx, wcancel := context.WithCancel(ctx)
	wch := c.Watch(wctx, "/w", clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	if resp := <-wch; !resp.Created {
		t.Fatalf("watch not created: %v", resp)
	}
	if _, err := c.Put(ctx, "/w/1", "x"); err != nil {
		t.Fatal(err)
	}
	select {
	case resp := <-wch:
		if len(resp.Events) > 0 {
			t.Fatalf("null server delivered %v", resp.Events)
		}
	case <-time.After(100 * time.Millisecond):
	}
	wcancel()

	// Leases.
	g, err := c.Grant(ctx, 30)
	if err != nil || g.TTL != 30 {
		t.Fatalf("grant %v %v", g, err)
	}
	ka, err := c.KeepAliveOnce(ctx, g.ID)
	if err != nil || ka.TTL != 30 {
		t.Fatalf("keepalive %v %v", ka, err)
	}
	if _, err := c.Revoke(ctx, g.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.KeepAliveOnce(ctx, g.ID); err != rpctypes.ErrLeaseNotFound {
		t.Fatalf("keepalive of a revoked lease: %v", err)
	}
	if ml, err := c.MemberList(ctx); err != nil || len(ml.Members) != 1 {
		t.Fatalf("member list %v %v", ml, err)
	}
}

func TestNullServerFailEvery(t *testing.T) {
	s, err := Start("127.0.0.1:0", Options{FailEvery: 3, FailCode: codes.ResourceExhausted})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	c := client(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var failed int
	for i := 0; i < 30; i++ {
		if _, err := c.Put(ctx, "/k", "v"); err != nil {
			if rpctypes.ErrorDesc(err) != "nullserver: injected failure" {
				t.Fatalf("unexpected error %v", err)
			}
			failed++
		}
	}
	if failed != 10 {
		t.Fatalf("%d of 30 puts failed, want 10", failed)
	}
}
