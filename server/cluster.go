package server

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net/url"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/axon-kv/axon/backend"
	"github.com/axon-kv/axon/lease"
	"github.com/axon-kv/axon/mvcc"
	"github.com/axon-kv/axon/proto/axonpb"
	"github.com/axon-kv/axon/revision"
)

// Roles. Every node serves reads from backend snapshots and watches from
// its own hub. The leader runs the single writer and the lease table; a
// follower forwards writes, lease and compaction calls to the leader and
// feeds its hub by tailing the stored revision records.

// multiNode reports whether nodes share the backend and must elect.
func (s *Server) multiNode() bool { return s.cfg.Backend == "tikv" || s.cfg.SharedBackend != nil }

// writer is the local single writer, nil on a follower.
func (s *Server) writer() *revision.Sequencer { return s.seq.Load() }

func hashID(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

// becomeLeader starts the writer. The hub first catches up with everything
// stored, so the writer's first revision follows the last one watchers saw.
func (s *Server) becomeLeader(term int64) error {
	s.roleMu.Lock()
	defer s.roleMu.Unlock()
	s.stopTail()
	if err := s.tailOnce(); err != nil {
		s.startTail()
		return fmt.Errorf("catch up before leading: %w", err)
	}
	opts := revision.Options{Logger: s.cfg.Logger, MaxGroupRequests: s.cfg.MaxGroupRequests, QueueLength: s.cfg.WriteQueueLength, Hashes: s.hashes}
	if s.elector != nil {
		opts.Fence = s.elector.Fence
		opts.FenceLost = s.elector.StepDown
	}
	seq, err := revision.New(s.be, s.idx, opts)
	if err != nil {
		s.startTail()
		return err
	}
	if seq.Rev() != s.hub.Rev() && s.hub.Rev() != 0 {
		s.startTail()
		return fmt.Errorf("stored revision %d moved past the caught-up %d: another writer is active", seq.Rev(), s.hub.Rev())
	}
	snap, err := s.be.Snapshot()
	if err != nil {
		s.startTail()
		return err
	}
	err = s.leases.Load(snap, s.idx.Leased)
	snap.Close()
	if err != nil {
		s.startTail()
		return fmt.Errorf("load leases: %w", err)
	}
	// Elected (a single node: started) and recovered, not serving yet.
	// The error term drops seq unstarted: Close would wait for its loop.
	// gofail: var leaderBeforeServe struct{}
	// s.startTail()
	// return errors.New("failpoint leaderBeforeServe")
	seq.SetPublisher(s.hub)
	seq.SetLeases(s.leases)
	seq.OnGroup = s.ObserveGroup
	seq.Start()
	s.leases.Start()
	s.seq.Store(seq)
	s.cfg.Logger.Info("leading", "term", term, "revision", seq.Rev(), "compacted", seq.CompactedRev())
	return nil
}

// becomeFollower stops the writer and starts tailing.
func (s *Server) becomeFollower(term int64) {
	s.roleMu.Lock()
	defer s.roleMu.Unlock()
	// Stepping down, the writer still running. No error term: stepping
	// down cannot be refused.
	// gofail: var leaderStepDown struct{}
	if seq := s.seq.Swap(nil); seq != nil {
		s.leases.Stop()
		seq.Close()
	}
	if !s.closing.Load() {
		s.startTail()
	}
}

func (s *Server) startTail() {
	if s.tailStop != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	s.tailStop = func() { cancel(); <-done }
	go func() {
		defer close(done)
		t := time.NewTicker(s.cfg.FollowerPoll)
		defer t.Stop()
		for {
			if err := s.tailOnce(); err != nil {
				s.cfg.Logger.Warn("tailing the revision log failed", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

func (s *Server) stopTail() {
	if s.tailStop != nil {
		s.tailStop()
		s.tailStop = nil
	}
}

// confirmTerm fails with etcd's "leader changed" unless snap still holds
// this leader's term.
func (s *Server) confirmTerm(snap backend.Snapshot) error {
	term, err := mvcc.Reader{Snap: snap}.LeaderTerm()
	if err != nil {
		return status.Error(codes.Unavailable, err.Error())
	}
	if s.elector == nil || term != s.elector.Term() {
		return rpctypes.ErrGRPCLeaderChanged
	}
	return nil
}

// catchUp brings a follower's index up to the revision the store holds
// now; a linearizable read waits for it.
func (s *Server) catchUp() error {
	snap, err := s.be.Snapshot()
	if err != nil {
		return err
	}
	cur, _, err := mvcc.Reader{Snap: snap}.Meta()
	snap.Close()
	if err != nil {
		return err
	}
	if irev, _ := s.idx.Rev(); irev >= cur {
		return nil
	}
	return s.tailOnce()
}

// tailOnce applies every stored revision the index has not seen and
// publishes it to the hub.
func (s *Server) tailOnce() error {
	s.tailMu.Lock()
	defer s.tailMu.Unlock()
	snap, err := s.be.Snapshot()
	if err != nil {
		return err
	}
	defer snap.Close()
	r := mvcc.Reader{Snap: snap}
	cur, comp, err := r.Meta()
	if err != nil {
		return err
	}
	if _, icomp := s.idx.Rev(); comp > icomp {
		mvcc.CompactIndex(s.idx, comp)
	}
	if comp > s.hub.CompactRev() {
		s.hub.Compacted(comp)
	}
	irev, _ := s.idx.Rev()
	from := irev + 1
	if cur < from {
		return nil
	}
	err = r.Records(from, cur, func(rec *axonpb.RevisionRecord) error {
		// Events first: their prev_kv is read from the store, not the index.
		evs, err := r.RecordEvents(rec, rec.Revision != comp)
		if err != nil {
			return err
		}
		// A committed revision read, not yet in the index or the hub.
		// gofail: var followerBeforeApply struct{}
		// return errors.New("failpoint followerBeforeApply")
		s.idx.Apply(rec.Revision, rec)
		if rec.Revision > s.hub.Rev() {
			s.hub.Publish(rec.Revision, evs)
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.idx.Apply(cur)
	return nil
}

// hasLeader reports whether writes can be served now.
func (s *Server) hasLeader() bool {
	if !s.multiNode() {
		return true
	}
	if s.writer() != nil {
		return true
	}
	if s.elector == nil {
		return false
	}
	rec, ok := s.elector.Leader()
	return rec != nil && ok
}

// leaderConn returns a connection to the current leader.
func (s *Server) leaderConn() (*grpc.ClientConn, error) {
	if s.elector == nil {
		return nil, rpctypes.ErrGRPCNoLeader
	}
	rec, ok := s.elector.Leader()
	if rec == nil || !ok || rec.Id == s.cfg.NodeID || rec.Address == "" {
		return nil, rpctypes.ErrGRPCNoLeader
	}
	s.connMu.Lock()
	defer s.connMu.Unlock()
	if c := s.conns[rec.Address]; c != nil {
		return c, nil
	}
	target := rec.Address
	if u, err := url.Parse(rec.Address); err == nil && u.Host != "" {
		target = u.Host
	}
	c, err := grpc.NewClient(target, grpc.WithTransportCredentials(s.DialCreds(rec.Address)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<31-1)))
	if err != nil {
		return nil, err
	}
	s.conns[rec.Address] = c
	return c, nil
}

// retryable errors leave nothing committed: the request may go to the new
// leader.
func retryable(err error) bool {
	return errors.Is(err, revision.ErrNotLeader) || errors.Is(err, revision.ErrStopped) ||
		errors.Is(err, lease.ErrNotPrimary)
}

// forwardCtx drops the client's metadata but keeps its deadline.
func forwardCtx(ctx context.Context) context.Context {
	return metadata.NewOutgoingContext(ctx, metadata.MD{})
}

// doWrite runs a write on the local writer or forwards it to the leader.
// A write the local writer refused because it lost leadership is retried
// on the new leader once one is known.
func doWrite[T any](ctx context.Context, s *Server, local func(*revision.Sequencer) (T, error), remote func(context.Context, *grpc.ClientConn) (T, error)) (T, error) {
	var zero T
	deadline := time.Now().Add(2 * s.cfg.LeaderLease)
	for {
		if w := s.writer(); w != nil {
			resp, err := local(w)
			if err == nil || !retryable(err) || !s.multiNode() {
				return resp, err
			}
		} else if s.multiNode() {
			c, err := s.leaderConn()
			if err == nil {
				return remote(forwardCtx(ctx), c)
			}
		} else {
			return zero, rpctypes.ErrGRPCNoLeader
		}
		if time.Now().After(deadline) {
			return zero, rpctypes.ErrGRPCNoLeader
		}
		select {
		case <-ctx.Done():
			return zero, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// leaseWriter gives the lease table whichever writer leads now.
type leaseWriter struct{ s *Server }

func (l leaseWriter) GrantLease(ctx context.Context, id, ttl int64) error {
	w := l.s.writer()
	if w == nil {
		return revision.ErrNotLeader
	}
	return w.GrantLease(ctx, id, ttl)
}

func (l leaseWriter) RevokeLease(ctx context.Context, id int64) (int64, error) {
	w := l.s.writer()
	if w == nil {
		return 0, revision.ErrNotLeader
	}
	return w.RevokeLease(ctx, id)
}

// requireLeader answers etcd's "no leader" to unary calls made with
// clientv3.WithRequireLeader when no leader is known.
func (s *Server) requireLeader(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	// The leader is checked first: with one known (always, on one node)
	// the call's metadata is not looked at, and when it is, only the one
	// key is copied out, not the whole map (a twentieth of what a create
	// allocated).
	if !s.hasLeader() {
		if v := metadata.ValueFromIncomingContext(ctx, rpctypes.MetadataRequireLeaderKey); len(v) > 0 && v[0] == rpctypes.MetadataHasLeader {
			return nil, rpctypes.ErrGRPCNoLeader
		}
	}
	return handler(ctx, req)
}

// nodeID defaults to something stable per data dir and listen address.
func defaultNodeID(cfg Config) string {
	return fmt.Sprintf("axon-%x", hashID(cfg.DataDir+"|"+strings.Join(cfg.ListenClientURLs, ",")))
}

// roleState is the part of Server that changes with leadership.
type roleState struct {
	roleMu   sync.Mutex
	tailMu   sync.Mutex // one tailOnce at a time: it moves the index
	tailStop func()
	connMu   sync.Mutex
	conns    map[string]*grpc.ClientConn
}
