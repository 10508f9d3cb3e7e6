// Package server is Axon's gRPC front end: the etcd v3 API (KV, Watch,
// Lease, Maintenance, Cluster) with etcd's behaviour and error texts. It
// translates requests and answers; it must not assign revisions or write to
// the backend itself (package revision does) nor encode MVCC keys (package
// mvcc does).
package server

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"

	"github.com/axon-kv/axon/backend"
	"github.com/axon-kv/axon/backend/badger"
	"github.com/axon-kv/axon/leader"
	"github.com/axon-kv/axon/lease"
	"github.com/axon-kv/axon/mvcc"
	"github.com/axon-kv/axon/revision"
	"github.com/axon-kv/axon/watch"
	"github.com/axon-kv/axon/witness"
)

// grpcOverheadBytes is what etcd allows on top of --max-request-bytes for
// gRPC framing, so that "request is too large" is answered by the server
// and not by the transport.
const grpcOverheadBytes = 512 * 1024

// Server is one running Axon member.
type Server struct {
	cfg Config

	be     backend.Backend
	ownsBE bool
	// badgerDB is be's engine when this node owns a Badger data dir; with
	// witness, they guard the dir against being served damaged (witness.go).
	badgerDB *badger.DB
	witness  *witness.Writer
	seq      atomic.Pointer[revision.Sequencer] // the local writer, nil on a follower
	idx      *mvcc.Index                        // committed keys by revision; readers start here
	hashes   *mvcc.HashCache                    // compaction hashes HashKV answers first, as etcd
	hub      *watch.Hub
	leases   *lease.Manager
	elector  *leader.Elector
	closing  atomic.Bool
	roleState

	memberID  uint64
	clusterID uint64
	startedAt time.Time

	grpc      *grpc.Server
	listeners []net.Listener
	urls      []string

	// operations: metrics.go, quota.go, http.go, tls.go
	metrics     *metrics
	reads       *readBudget
	quota       quota
	healthSrv   *health.Server
	httpServers []*http.Server
	metricsURLs []string

	stopBackground context.CancelFunc
	background     sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
	serveWG   sync.WaitGroup
}

// New opens the backend, recovers state and starts the writer; call Start
// to serve.
func New(cfg Config) (*Server, error) {
	cfg = cfg.WithDefaults()
	if cfg.NodeID == "" {
		cfg.NodeID = defaultNodeID(cfg)
	}
	s := &Server{cfg: cfg, startedAt: time.Now(), metrics: newMetrics(), hashes: &mvcc.HashCache{}}
	s.quota.limit.Store(cfg.QuotaBackendBytes)
	budget := cfg.MaxReadBytesInFlight
	if budget < 0 {
		budget = math.MaxInt64
	}
	s.reads = newReadBudget(budget, cfg.ReadWaitTimeout, s.metrics.reg)
	s.conns = map[string]*grpc.ClientConn{}
	var err error
	switch {
	case cfg.SharedBackend != nil:
		s.be = cfg.SharedBackend
	case cfg.Backend == "badger":
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return nil, fmt.Errorf("create data dir: %w", err)
		}
		s.badgerDB, err = badger.Open(badger.Options{Dir: filepath.Join(cfg.DataDir, "badger"), Logger: cfg.Logger})
		s.be = s.badgerDB
		s.ownsBE = true
	case cfg.Backend == "memory":
		s.be, err = badger.Open(badger.Options{InMemory: true, Logger: cfg.Logger})
		s.ownsBE = true
	case cfg.Backend == "tikv":
		s.be, err = openTiKV(cfg)
		s.ownsBE = true
	default:
		return nil, fmt.Errorf("unknown --backend %q (want badger, memory or tikv)", cfg.Backend)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s backend: %w", cfg.Backend, err)
	}
	s.be = instrumented{Backend: s.be, m: s.metrics}
	if err := s.recover(); err != nil {
		if s.witness != nil {
			s.witness.Close()
		}
		if s.ownsBE {
			s.be.Close()
		}
		return nil, err
	}
	s.metrics.reg.MustRegister(stateCollector{s})
	s.metrics.reg.MustRegister(memoryCollector{s}) // memory_metrics.go
	return s, nil
}

// recover loads what the backend holds. A single node leads at once; nodes
// sharing a backend start as followers and elect a leader once serving.
func (s *Server) recover() error {
	s.clusterID = hashID("axon-cluster")
	s.memberID = hashID(s.cfg.NodeID)
	if !s.multiNode() {
		s.clusterID = hashID("axon-cluster:" + s.cfg.DataDir)
	}
	verified := false
	if !s.multiNode() {
		// One node writes alone: an unfinished revision is rolled back
		// before the index is built. Nodes sharing a backend leave that to
		// whoever leads, behind its fence.
		if s.usesWitness() {
			var err error
			if verified, err = s.checkWitness(); err != nil {
				return err
			}
		}
		rolled, err := mvcc.Recover(s.be, nil)
		if err != nil {
			return fmt.Errorf("load state: %w", err)
		}
		if rolled > 0 {
			s.cfg.Logger.Warn("rolled back an unfinished revision (a crash in the middle of a large write)", "record_chunks", rolled)
		}
	}
	start := time.Now()
	idx, err := mvcc.LoadIndex(s.be)
	if err != nil {
		return fmt.Errorf("load state: %w", err)
	}
	s.idx = idx
	if s.badgerDB != nil {
		s.badgerDB.ReleaseMappedReads()
	}
	if s.usesWitness() {
		// Only now, with every value of the store read once, is it known
		// to be whole.
		if err := s.startWitness(verified); err != nil {
			return err
		}
	}
	cur, comp := idx.Rev()
	s.cfg.Logger.Info("built the key index", "keys", idx.Len(), "live", idx.Live(), "revision", cur, "took", time.Since(start).String())
	s.hub = watch.NewHub(history{s.be}, watch.Options{CurrentRev: cur, CompactedRev: comp})
	s.leases = lease.NewManager(leaseWriter{s}, lease.Options{Logger: s.cfg.Logger})
	if !s.multiNode() {
		if err := s.becomeLeader(0); err != nil {
			return err
		}
	}
	s.cfg.Logger.Info("recovered state", "revision", cur, "compacted", comp, "backend", s.cfg.Backend, "node", s.cfg.NodeID)
	return nil
}

// history serves watches whose start is older than the in-memory ring.
type history struct{ be backend.Backend }

func (h history) Events(from, to int64, withPrev bool, fn func(rev int64, evs []*mvccpb.Event) error) error {
	snap, err := h.be.Snapshot()
	if err != nil {
		return err
	}
	defer snap.Close()
	r := mvcc.Reader{Snap: snap}
	_, comp, err := r.Meta()
	if err != nil {
		return err
	}
	if from < comp {
		return mvcc.ErrCompacted
	}
	return r.Events(from, to, withPrev, fn)
}

// Start listens on every client URL and serves in the background.
func (s *Server) Start() error {
	opts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(s.metrics.grpc.UnaryServerInterceptor(), s.requireLeader, s.quotaCheck, s.leaseCounter),
		grpc.ChainStreamInterceptor(s.metrics.grpc.StreamServerInterceptor(), s.watchLimit),
		grpc.StatsHandler(holdUntilSent{}),
		grpc.ForceServerCodecV2(newServerCodec()),
		grpc.MaxRecvMsgSize(s.cfg.MaxRequestBytes + grpcOverheadBytes),
		grpc.MaxSendMsgSize(1<<31 - 1),
		grpc.MaxConcurrentStreams(s.cfg.MaxConcurrentStreams),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	}
	var certs *certStore
	for _, raw := range s.cfg.ListenClientURLs {
		if u, err := url.Parse(raw); err == nil && u.Scheme == "https" && certs == nil {
			if certs, err = newCertStore(s.cfg); err != nil {
				return err
			}
			opts = append(opts, grpc.Creds(newListenerCreds(certs)))
		}
	}
	s.grpc = grpc.NewServer(opts...)
	s.healthSrv = newHealthServer()
	healthpb.RegisterHealthServer(s.grpc, s.healthSrv)
	s.grpc.RegisterService(&kvServiceDesc, &kvService{s: s})
	pb.RegisterWatchServer(s.grpc, newWatchService(s.hub, s.cfg.WatchProgressNotifyInterval, s.cfg.Logger, s.header,
		withHasLeader(s.hasLeader), withMaxRequestBytes(s.cfg.MaxRequestBytes)))
	pb.RegisterLeaseServer(s.grpc, &leaseRouter{s: s, local: newLeaseService(s.leases, s.header)})
	pb.RegisterMaintenanceServer(s.grpc, &maintenanceService{s: s})
	pb.RegisterClusterServer(s.grpc, &clusterService{s: s})

	for _, raw := range s.cfg.ListenClientURLs {
		u, err := url.Parse(raw)
		if err != nil {
			return fmt.Errorf("bad listen URL %q: %w", raw, err)
		}
		if u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "unix" {
			return fmt.Errorf("listen URL %q: only http:// and https:// are supported", raw)
		}
		l, err := net.Listen("tcp", u.Host)
		if err != nil {
			s.closeListeners()
			return fmt.Errorf("listen %s: %w", raw, err)
		}
		scheme := "http"
		if u.Scheme == "https" {
			l, scheme = tlsListener{l}, "https"
		}
		s.listeners = append(s.listeners, l)
		s.urls = append(s.urls, scheme+"://"+l.Addr().String())
	}
	if s.multiNode() {
		// Created before anything that asks whether a leader is known.
		addr := s.cfg.AdvertiseClientURL
		if addr == "" && len(s.urls) > 0 {
			addr = s.urls[0]
		}
		s.elector = leader.New(s.be, leader.Options{ID: s.cfg.NodeID, Address: addr, Lease: s.cfg.LeaderLease, Logger: s.cfg.Logger},
			leader.Callbacks{Elected: s.becomeLeader, Deposed: s.becomeFollower})
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.stopBackground = cancel
	if err := s.startOps(ctx); err != nil {
		s.closeListeners()
		return err
	}
	if s.cfg.AutoCompactionRetention > 0 {
		s.background.Add(1)
		go func() { defer s.background.Done(); s.autoCompact(ctx, s.cfg.AutoCompactionRetention) }()
	}
	if s.elector != nil {
		s.roleMu.Lock()
		s.startTail()
		s.roleMu.Unlock()
		s.background.Add(1)
		go func() { defer s.background.Done(); s.elector.Run(ctx) }()
	}
	for _, l := range s.listeners {
		s.serveWG.Add(1)
		go func(l net.Listener) {
			defer s.serveWG.Done()
			if err := s.grpc.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				s.cfg.Logger.Error("serve failed", "addr", l.Addr().String(), "err", err)
			}
		}(l)
	}
	return nil
}

func (s *Server) closeListeners() {
	for _, l := range s.listeners {
		l.Close()
	}
}

// ClientURLs are the URLs actually listened on (ports resolved).
func (s *Server) ClientURLs() []string { return append([]string(nil), s.urls...) }

// Close stops serving gracefully: in-flight unary calls finish, streams are
// ended, the writer drains its queue, then the backend closes.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.closing.Store(true)
		s.stopOps()
		if s.grpc != nil {
			done := make(chan struct{})
			go func() { s.grpc.GracefulStop(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				s.grpc.Stop() // watch streams never end by themselves
			}
			s.serveWG.Wait()
		}
		if s.stopBackground != nil {
			s.stopBackground() // releases leadership, if held
		}
		s.background.Wait()
		s.becomeFollower(0)
		s.roleMu.Lock()
		s.stopTail()
		s.roleMu.Unlock()
		s.hub.Close()
		if s.witness != nil {
			if err := s.witness.Close(); err != nil {
				s.cfg.Logger.Warn("closing the witness", "err", err)
			}
		}
		s.connMu.Lock()
		for _, c := range s.conns {
			c.Close()
		}
		s.connMu.Unlock()
		if s.ownsBE {
			s.closeErr = s.be.Close()
		}
	})
	return s.closeErr
}

// Kill stops the member abruptly, as a crash would: no lease release, no
// draining. Tests use it to kill a leader.
func (s *Server) Kill() {
	s.closeOnce.Do(func() {
		s.closing.Store(true)
		if s.elector != nil {
			s.elector.Crash()
		}
		s.stopOps()
		if s.grpc != nil {
			s.grpc.Stop()
		}
		if s.stopBackground != nil {
			s.stopBackground()
		}
		s.background.Wait()
		s.becomeFollower(0)
		s.roleMu.Lock()
		s.stopTail()
		s.roleMu.Unlock()
		s.hub.Close()
		if s.witness != nil {
			s.witness.Close() // holds only what was durable already
		}
	})
}

// IsLeader reports whether this node runs the single writer now.
func (s *Server) IsLeader() bool { return s.writer() != nil }

// header is the response header every answer carries.
func (s *Server) header() *pb.ResponseHeader {
	return &pb.ResponseHeader{ClusterId: s.clusterID, MemberId: s.memberID, Revision: s.hub.Rev(), RaftTerm: s.term()}
}

// term is reported as etcd's raft term: the leader term (1 on one node).
func (s *Server) term() uint64 {
	if s.elector == nil {
		return 1
	}
	if rec, _ := s.elector.Leader(); rec != nil {
		return uint64(rec.Term)
	}
	return 0
}

func (s *Server) fill(h *pb.ResponseHeader) {
	h.ClusterId, h.MemberId, h.RaftTerm = s.clusterID, s.memberID, s.term()
}
