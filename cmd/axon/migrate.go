package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/axon-kv/axon/backend/badger"
	"github.com/axon-kv/axon/mvcc"
	"github.com/axon-kv/axon/server"
)

// axon migrate copies the keys of a running etcd into Axon: every key in
// the range read at one revision R (paged, every page pinned to R), then
// the changes after R from a watch starting at R+1, applied one source
// revision per target transaction. Without --follow it stops once it has
// applied everything up to the source revision current when the copy
// ended; with --follow it keeps applying changes until SIGINT/SIGTERM.
//
// Leases are recreated on the target with the same ID and the remaining
// TTL; a key whose lease already expired is copied without it (its delete
// follows through the watch). Target revisions are Axon's own: values,
// keys and leases are copied, revisions are not. With --to-data-dir the
// target is a new data directory whose revisions start above the source's
// revision at the start of the copy, so that a resourceVersion handed out
// by the etcd (up to that revision) is "too old" on Axon and clients
// relist rather than misread it.

type migrateOptions struct {
	from, to   clientFlags
	toDataDir  string
	prefix     string
	follow     bool
	pageSize   int64
	batchOps   int
	batchBytes int
	out        io.Writer
}

type migrateStats struct {
	// Revision is the source revision the initial copy read.
	Revision int64
	// Keys copied at Revision; Events applied after it; Leases granted.
	Keys, Events, Leases int64
	// Applied is the last source revision applied.
	Applied int64
}

func newMigrateCmd() *cobra.Command {
	o := &migrateOptions{}
	cmd := &cobra.Command{
		Use:   "migrate --from-etcd URL (--to URL | --to-data-dir DIR)",
		Short: "Copy every key of a running etcd into Axon, then follow its changes",
		Long: `Copy every key of a running etcd into Axon, then follow its changes.

The keys are read at one revision, then a watch from the next revision
applies what changed meanwhile, until the target has caught up with the
source (or, with --follow, until SIGINT or SIGTERM).

--to URL writes into a running, empty Axon member. --to-data-dir DIR creates
a new data directory instead (serve it afterwards with axon serve --data-dir
DIR) whose revisions continue above the source's: use it for the cut-over of
a Kubernetes cluster, with the kube-apiservers stopped, so that clients
holding etcd resourceVersions relist.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cmd.SilenceUsage = true
			o.out = cmd.OutOrStdout()
			ctx, cancel := signalContext()
			defer cancel()
			st, err := runMigrate(ctx, o)
			fmt.Fprintf(o.out, "copied %d keys at source revision %d, applied %d later events, granted %d leases; applied up to source revision %d\n",
				st.Keys, st.Revision, st.Events, st.Leases, st.Applied)
			return err
		},
	}
	fs := cmd.Flags()
	o.from.register(fs, "from-", "from-etcd", "source etcd endpoints")
	o.to.register(fs, "to-", "to", "target Axon endpoints")
	fs.StringVar(&o.toDataDir, "to-data-dir", "", "write into this new data directory instead of a running member (revisions continue above the source's)")
	fs.StringVar(&o.prefix, "prefix", "", "copy only keys with this prefix (default: every key)")
	fs.BoolVar(&o.follow, "follow", false, "keep applying source changes until SIGINT/SIGTERM")
	fs.Int64Var(&o.pageSize, "page-size", 1000, "keys read per source request")
	fs.IntVar(&o.batchOps, "batch-ops", 100, "most operations per target transaction (at most the target's --max-txn-ops)")
	fs.IntVar(&o.batchBytes, "batch-bytes", 1<<20, "most bytes per target transaction (under the target's --max-request-bytes)")
	return cmd
}

func runMigrate(ctx context.Context, o *migrateOptions) (st migrateStats, err error) {
	if o.out == nil {
		o.out = io.Discard
	}
	if (len(o.to.endpoints) == 0) == (o.toDataDir == "") {
		return st, errors.New("give exactly one of --to and --to-data-dir")
	}
	if o.pageSize <= 0 || o.batchOps <= 0 || o.batchBytes <= 0 {
		return st, errors.New("--page-size, --batch-ops and --batch-bytes must be positive")
	}
	src, err := o.from.client()
	if err != nil {
		return st, err
	}
	defer src.Close()

	if o.toDataDir != "" {
		cur, err := src.Get(ctx, "\x00", clientv3.WithFromKey(), clientv3.WithCountOnly())
		if err != nil {
			return st, fmt.Errorf("source revision: %w", err)
		}
		srv, err := serveNewDataDir(o.toDataDir, cur.Header.Revision)
		if err != nil {
			return st, err
		}
		defer func() {
			srv.Close()
			if err != nil { // a half-copied store must not be served
				os.RemoveAll(filepath.Join(o.toDataDir, "badger"))
			}
		}()
		o.to.endpoints = srv.ClientURLs()
		fmt.Fprintf(o.out, "new data dir %s: revisions start above %d\n", o.toDataDir, cur.Header.Revision)
	}
	dst, err := o.to.client()
	if err != nil {
		return st, err
	}
	defer dst.Close()
	if r, err := dst.Get(ctx, "\x00", clientv3.WithFromKey(), clientv3.WithCountOnly()); err != nil {
		return st, fmt.Errorf("target: %w", err)
	} else if r.Count > 0 {
		return st, fmt.Errorf("target already holds %d keys; migrate into an empty member", r.Count)
	}

	m := &migrator{o: o, src: src, dst: dst, st: &st, leases: map[int64]bool{}, lc: pb.NewLeaseClient(dst.ActiveConnection())}
	if err := m.copy(ctx); err != nil {
		return st, err
	}
	fmt.Fprintf(o.out, "copied %d keys at source revision %d\n", st.Keys, st.Revision)
	err = m.catchUp(ctx)
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		fmt.Fprintf(o.out, "stopped by signal\n")
		return st, nil
	}
	return st, err
}

// serveNewDataDir creates dataDir with its revisions starting at rev and
// serves it on a loopback port for the copy.
func serveNewDataDir(dataDir string, rev int64) (*server.Server, error) {
	dbDir := filepath.Join(dataDir, "badger")
	if entries, err := os.ReadDir(dbDir); err == nil && len(entries) > 0 {
		return nil, fmt.Errorf("--to-data-dir %s already holds a database", dataDir)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, err
	}
	be, err := badger.Open(badger.Options{Dir: dbDir})
	if err != nil {
		return nil, err
	}
	err = mvcc.InitStore(be, rev)
	if cerr := be.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	srv, err := server.New(server.Config{
		Backend: "badger", DataDir: dataDir, ListenClientURLs: []string{"http://127.0.0.1:0"},
		QuotaBackendBytes: -1, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return nil, err
	}
	if err := srv.Start(); err != nil {
		srv.Close()
		return nil, err
	}
	return srv, nil
}

type migrator struct {
	o        *migrateOptions
	src, dst *clientv3.Client
	lc       pb.LeaseClient
	st       *migrateStats
	// leases maps a source lease ID to whether it exists on the target
	// (false: it had expired on the source).
	leases map[int64]bool

	ops   []clientv3.Op
	bytes int
}

// keyRange is the source range to copy: the prefix, or every key (an end
// of "\x00" means every key from start on).
func (m *migrator) keyRange() (start, end string) {
	if m.o.prefix == "" {
		return "\x00", "\x00"
	}
	return m.o.prefix, clientv3.GetPrefixRangeEnd(m.o.prefix)
}

func (m *migrator) copy(ctx context.Context) error {
	start, end := m.keyRange()
	key := start
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(m.o.pageSize)}
		if m.st.Revision > 0 {
			opts = append(opts, clientv3.WithRev(m.st.Revision))
		}
		resp, err := m.src.Get(ctx, key, opts...)
		if err != nil {
			return fmt.Errorf("read source at revision %d: %w", m.st.Revision, err)
		}
		if m.st.Revision == 0 {
			m.st.Revision = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			if err := m.put(ctx, kv); err != nil {
				return err
			}
			m.st.Keys++
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	m.st.Applied = m.st.Revision
	return m.flush(ctx)
}

// put queues a put of kv, with its lease when that is still alive.
func (m *migrator) put(ctx context.Context, kv *mvccpb.KeyValue) error {
	var opts []clientv3.OpOption
	if kv.Lease != 0 {
		alive, err := m.lease(ctx, kv.Lease)
		if err != nil {
			return err
		}
		if alive {
			opts = append(opts, clientv3.WithLease(clientv3.LeaseID(kv.Lease)))
		}
	}
	return m.queue(ctx, clientv3.OpPut(string(kv.Key), string(kv.Value), opts...), len(kv.Key)+len(kv.Value))
}

// lease recreates a source lease on the target once.
func (m *migrator) lease(ctx context.Context, id int64) (bool, error) {
	if alive, ok := m.leases[id]; ok {
		return alive, nil
	}
	ttl, err := m.src.TimeToLive(ctx, clientv3.LeaseID(id))
	if err != nil {
		return false, fmt.Errorf("source lease %x: %w", id, err)
	}
	alive := ttl.TTL > 0
	if alive {
		_, err := m.lc.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: id, TTL: ttl.TTL})
		if err != nil && !errors.Is(err, rpctypes.ErrGRPCLeaseExist) {
			return false, fmt.Errorf("grant lease %x on the target: %w", id, err)
		}
		m.st.Leases++
	}
	m.leases[id] = alive
	return alive, nil
}

func (m *migrator) queue(ctx context.Context, op clientv3.Op, size int) error {
	if len(m.ops) > 0 && (len(m.ops) >= m.o.batchOps || m.bytes+size > m.o.batchBytes) {
		if err := m.flush(ctx); err != nil {
			return err
		}
	}
	m.ops = append(m.ops, op)
	m.bytes += size
	return nil
}

func (m *migrator) flush(ctx context.Context) error {
	if len(m.ops) == 0 {
		return nil
	}
	_, err := m.dst.Txn(ctx).Then(m.ops...).Commit()
	if err != nil {
		return fmt.Errorf("write to the target: %w", err)
	}
	m.ops, m.bytes = m.ops[:0], 0
	return nil
}

// catchUp applies the source's changes after the copied revision.
func (m *migrator) catchUp(ctx context.Context) error {
	var target int64
	if !m.o.follow {
		r, err := m.src.Get(ctx, "\x00", clientv3.WithFromKey(), clientv3.WithCountOnly())
		if err != nil {
			return err
		}
		if target = r.Header.Revision; target <= m.st.Applied {
			return nil
		}
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	start, end := m.keyRange()
	wch := m.src.Watch(wctx, start, clientv3.WithRange(end), clientv3.WithRev(m.st.Applied+1), clientv3.WithProgressNotify())
	m.src.RequestProgress(wctx)
	report := time.Now()
	for wr := range wch {
		if err := wr.Err(); err != nil {
			if wr.CompactRevision != 0 {
				return fmt.Errorf("the source compacted revision %d before the copy caught up (at %d); run migrate again into an empty target", wr.CompactRevision, m.st.Applied)
			}
			return fmt.Errorf("watch the source: %w", err)
		}
		if err := m.apply(ctx, wr.Events); err != nil {
			return err
		}
		if wr.IsProgressNotify() && wr.Header.Revision > m.st.Applied {
			m.st.Applied = wr.Header.Revision
		}
		if !m.o.follow {
			if m.st.Applied >= target {
				return nil
			}
			if len(wr.Events) > 0 || wr.IsProgressNotify() {
				m.src.RequestProgress(wctx)
			}
		} else if time.Since(report) > 10*time.Second {
			report = time.Now()
			fmt.Fprintf(m.o.out, "following: applied source revision %d (%d events)\n", m.st.Applied, m.st.Events)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.New("the source watch ended")
}

// apply writes events, one transaction per source revision (split when a
// revision holds more than --batch-ops changes).
func (m *migrator) apply(ctx context.Context, evs []*clientv3.Event) error {
	for i := 0; i < len(evs); {
		rev := evs[i].Kv.ModRevision
		j := i
		for j < len(evs) && evs[j].Kv.ModRevision == rev {
			ev := evs[j]
			var err error
			if ev.Type == clientv3.EventTypeDelete {
				err = m.queue(ctx, clientv3.OpDelete(string(ev.Kv.Key)), len(ev.Kv.Key))
			} else {
				err = m.put(ctx, ev.Kv)
			}
			if err != nil {
				return err
			}
			j++
		}
		if err := m.flush(ctx); err != nil {
			return err
		}
		m.st.Events += int64(j - i)
		if rev > m.st.Applied {
			m.st.Applied = rev
		}
		i = j
	}
	return nil
}
