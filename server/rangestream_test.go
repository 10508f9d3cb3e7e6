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
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/axon-kv/axon/internal/testenv"
	"github.com/axon-kv/axon/server"
)

// streamed is a RangeStream answer put back together.
type streamed struct {
	keys     []string
	rev      int64
	count    int64
	more     bool
	messages int
	err      string
}

func rangeStream(t *testing.T, c *clientv3.Client, r *pb.RangeRequest) streamed {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := pb.NewKVClient(c.ActiveConnection()).RangeStream(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	var out streamed
	for {
		m, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			s, _ := status.FromError(err)
			out.err = s.Code().String() + ": " + s.Message()
			return out
		}
		out.messages++
		rr := m.RangeResponse
		for _, kv := range rr.Kvs {
			out.keys = append(out.keys, fmt.Sprintf("%s@%d/%d/%d/%d", kv.Key, kv.CreateRevision, kv.ModRevision, kv.Version, len(kv.Value)))
		}
		if rr.Header != nil {
			out.rev, out.count, out.more = rr.Header.Revision, rr.Count, rr.More
		}
	}
}

// TestRangeStreamMatchesEtcd compares etcd 3.7's streaming Range, put back
// together, with etcd's: keys, revisions, final count/more/header, errors.
func TestRangeStreamMatchesEtcd(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	_, axon := testenv.StartAxon(t, server.Config{Backend: "badger"})
	val := strings.Repeat("v", 300<<10) // a few values per chunk
	var mid int64
	for _, c := range []*clientv3.Client{etcd, axon} {
		for i := 0; i < 40; i++ {
			v := "small"
			if i%4 == 0 {
				v = val
			}
			r, err := c.Put(context.Background(), fmt.Sprintf("/s/%02d", i), v)
			if err != nil {
				t.Fatal(err)
			}
			if i == 20 {
				mid = r.Header.Revision
			}
		}
		if _, err := c.Delete(context.Background(), "/s/05"); err != nil {
			t.Fatal(err)
		}
	}
	reqs := map[string]*pb.RangeRequest{
		"prefix":          {Key: []byte("/s/"), RangeEnd: []byte("/s0")},
		"limit":           {Key: []byte("/s/"), RangeEnd: []byte("/s0"), Limit: 7},
		"at revision":     {Key: []byte("/s/"), RangeEnd: []byte("/s0"), Revision: mid},
		"keys only":       {Key: []byte("/s/"), RangeEnd: []byte("/s0"), KeysOnly: true},
		"count only":      {Key: []byte("/s/"), RangeEnd: []byte("/s0"), CountOnly: true},
		"single key":      {Key: []byte("/s/10")},
		"future revision": {Key: []byte("/s/"), RangeEnd: []byte("/s0"), Revision: 1 << 40},
		"sort descending": {Key: []byte("/s/"), RangeEnd: []byte("/s0"), SortOrder: pb.RangeRequest_DESCEND},
		"revision filter": {Key: []byte("/s/"), RangeEnd: []byte("/s0"), MinModRevision: 3},
	}
	for name, r := range reqs {
		want, got := rangeStream(t, etcd, r), rangeStream(t, axon, r)
		if fmt.Sprint(want.keys, want.rev, want.count, want.more, want.err) != fmt.Sprint(got.keys, got.rev, got.count, got.more, got.err) {
			t.Errorf("%s:\n etcd: %d keys rev=%d count=%d more=%v err=%q\n axon: %d keys rev=%d count=%d more=%v err=%q",
				name, len(want.keys), want.rev, want.count, want.more, want.err, len(got.keys), got.rev, got.count, got.more, got.err)
		}
		if name == "prefix" && got.messages < 2 {
			t.Errorf("prefix: Axon sent the whole range in %d message(s); want it streamed in chunks", got.messages)
		}
	}
}

// TestRangeStreamEqualsRange checks every field of every key-value a
// RangeStream sends (it writes them in wire form itself) against the
// unary Range of the same request: values empty, small and most of a
// chunk, keys with and without leases, several generations of a key.
func TestRangeStreamEqualsRange(t *testing.T) {
	_, c := testenv.StartAxon(t, server.Config{Backend: "badger", MaxRequestBytes: 64 << 10})
	ctx := context.Background()
	lease, err := c.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	var mid int64
	for i := 0; i < 300; i++ {
		var opts []clientv3.OpOption
		if i%3 == 0 {
			opts = append(opts, clientv3.WithLease(lease.ID))
		}
		v := strings.Repeat(string(rune('a'+i%26)), i*7%900)
		if i%50 == 7 {
			v = strings.Repeat("B", 60<<10) // most of a chunk
		}
		r, err := c.Put(ctx, fmt.Sprintf("/e/%03d", i), v, opts...)
		if err != nil {
			t.Fatal(err)
		}
		if i == 150 {
			mid = r.Header.Revision
		}
	}
	for i := 0; i < 300; i += 7 {
		if _, err := c.Put(ctx, fmt.Sprintf("/e/%03d", i), "again"); err != nil {
			t.Fatal(err)
		}
	}
	kv := pb.NewKVClient(c.ActiveConnection())
	for name, r := range map[string]*pb.RangeRequest{
		"prefix":      {Key: []byte("/e/"), RangeEnd: []byte("/e0")},
		"limit":       {Key: []byte("/e/"), RangeEnd: []byte("/e0"), Limit: 123},
		"at revision": {Key: []byte("/e/"), RangeEnd: []byte("/e0"), Revision: mid},
		"keys only":   {Key: []byte("/e/"), RangeEnd: []byte("/e0"), KeysOnly: true},
		"from key":    {Key: []byte("/e/250"), RangeEnd: []byte{0}},
	} {
		want, err := kv.Range(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		st, err := kv.RangeStream(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		got := &pb.RangeResponse{}
		for {
			m, err := st.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			proto.Merge(got, m.RangeResponse)
		}
		if !proto.Equal(got, want) {
			t.Errorf("%s: the stream put together differs from Range: %d vs %d key-values, count %d vs %d, more %v vs %v",
				name, len(got.Kvs), len(want.Kvs), got.Count, want.Count, got.More, want.More)
		}
	}
}
