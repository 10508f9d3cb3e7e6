package testenv

import (
	"context"
	"fmt"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Workload is what WriteWorkload left in the store, as the client saw it.
type Workload struct {
	Revision  int64 // the last revision
	Compacted int64 // the physically compacted revision
	LiveKeys  int   // keys alive at Revision
	Leases    int   // leases granted and not revoked
	// BigRevision is a revision large enough to reach the backend in more
	// than one batch (so its record has several chunks).
	BigRevision int64
}

// WriteWorkload writes a varied history through c, the kinds of change a
// store's format has to keep consistent: creates, updates, deletes and
// re-creates, keys on leases and a revoked lease (which deletes its keys),
// a transaction of over 1 MiB, a physical compaction in the middle and
// changes after it.
func WriteWorkload(t testing.TB, c *clientv3.Client) Workload {
	t.Helper()
	ctx := context.Background()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("testenv: workload: %v", err)
		}
	}
	var ids [3]clientv3.LeaseID
	for i := range ids {
		l, err := c.Grant(ctx, 3600)
		must(err)
		ids[i] = l.ID
	}
	val := strings.Repeat("v", 200)
	for i := 0; i < 300; i++ {
		var opts []clientv3.OpOption
		switch {
		case i%5 == 0:
			opts = append(opts, clientv3.WithLease(ids[0]))
		case i%7 == 0:
			opts = append(opts, clientv3.WithLease(ids[1]))
		}
		_, err := c.Put(ctx, fmt.Sprintf("/reg/a/%03d", i), val, opts...)
		must(err)
	}
	for i := 0; i < 300; i += 3 {
		_, err := c.Put(ctx, fmt.Sprintf("/reg/a/%03d", i), val+"2")
		must(err)
	}
	_, err := c.Delete(ctx, "/reg/a/01", clientv3.WithPrefix())
	must(err)
	for i := 10; i < 15; i++ {
		_, err := c.Put(ctx, fmt.Sprintf("/reg/a/%03d", i), "again")
		must(err)
	}
	_, err = c.Revoke(ctx, ids[1])
	must(err)

	// Past mvcc.WriteOptions' default 1 MiB batch, so split into chunks.
	var ops []clientv3.Op
	for i := 0; i < 100; i++ {
		ops = append(ops, clientv3.OpPut(fmt.Sprintf("/reg/big/%03d", i), strings.Repeat("b", 12<<10)))
	}
	big, err := c.Txn(ctx).Then(ops...).Commit()
	must(err)

	mid, err := c.Get(ctx, "/reg/a/000")
	must(err)
	compacted := mid.Header.Revision - 20
	_, err = c.Compact(ctx, compacted, clientv3.WithCompactPhysical())
	must(err)

	for i := 0; i < 300; i += 10 {
		_, err := c.Put(ctx, fmt.Sprintf("/reg/a/%03d", i), "after", clientv3.WithLease(ids[2]))
		must(err)
	}
	_, err = c.Delete(ctx, "/reg/big/0", clientv3.WithPrefix())
	must(err)
	_, err = c.Put(ctx, "/reg/big/005", "small again")
	must(err)

	all, err := c.Get(ctx, "\x00", clientv3.WithFromKey(), clientv3.WithCountOnly())
	must(err)
	leases, err := c.Leases(ctx)
	must(err)
	return Workload{
		Revision:    all.Header.Revision,
		Compacted:   compacted,
		LiveKeys:    int(all.Count),
		Leases:      len(leases.Leases),
		BigRevision: big.Header.Revision,
	}
}
