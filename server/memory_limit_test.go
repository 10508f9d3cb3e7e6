package server_test

import (
	"context"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/axon-kv/axon/internal/testenv"
	"github.com/axon-kv/axon/server"
)

// The memory backend holds values under 1 MiB: larger requests get etcd's
// "request is too large" (not a retryable Unavailable), and nothing is
// stored. The disk backend takes them up to --max-request-bytes.
func TestMemoryBackendRequestLimit(t *testing.T) {
	ctx := context.Background()
	big := strings.Repeat("x", 1<<20)
	_, mem := testenv.StartAxon(t, server.Config{Backend: "memory"})
	if _, err := mem.Put(ctx, "big", big); err == nil || err.Error() != rpctypes.ErrRequestTooLarge.Error() {
		t.Fatalf("memory backend, 1 MiB put: got %v, want %v", err, rpctypes.ErrRequestTooLarge)
	}
	if r, err := mem.Get(ctx, "big"); err != nil || len(r.Kvs) != 0 {
		t.Fatalf("after the refused put: %v %v", r, err)
	}
	if _, err := mem.Put(ctx, "ok", strings.Repeat("x", 512<<10)); err != nil {
		t.Fatalf("memory backend, 512 KiB put: %v", err)
	}
	_, disk := testenv.StartAxon(t, server.Config{Backend: "badger"})
	if _, err := disk.Put(ctx, "big", big, clientv3.WithPrevKV()); err != nil {
		t.Fatalf("badger backend, 1 MiB put: %v", err)
	}
}
