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
	"hash/fnv"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/axon-kv/axon/backend"
	"github.com/axon-kv/axon/backend/badger"
	"github.com/axon-kv/axon/lease"
	"github.com/axon-kv/axon/mvcc"
	"github.com/axon-kv/axon/revision"
	"github.com/axon-kv/axon/watch"
)

// grpcOverheadBytes is what etcd allows on top of --max-request-bytes for
// gRPC framing, so that "request is too large" is answered by the server
// and not by the transport.
const grpcOverheadBytes = 512 * 1024

// Server is one running Axon member.
type Server struct {
	cfg Config

	be     backend.Backend
	seq    *revision.Sequencer
	hub    *watch.Hub
	leases *lease.Manager

	memberID  uint64
	clusterID uint64
	startedAt time.Time

	grpc      *grpc.Server
	listeners []net.Listener
	urls      []string

	stopBackground context.CancelFunc

	closeOnce sync.Once
	closeErr  error
	serveWG   sync.WaitGroup
}

// New opens the backend, recovers state and starts the writer; call Start
// to serve.
func New(cfg Config) (*Server, error) {
	cfg = cfg.WithDefaults()
	s := &Server{cfg: cfg, startedAt: time.Now()}
	var err error
	switch cfg.Backend {
	case "badger":
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return nil, fmt.Errorf("create data dir: %w", err)
		}
		s.be, err = badger.Open(badger.Options{Dir: filepath.Join(cfg.DataDir, "badger"), Logger: cfg.Logger})
	case "memory":
		s.be, err = badger.Open(badger.Options{InMemory: true, Logger: cfg.Logger})
	default:
		return nil, fmt.Errorf("unknown --backend %q (want badger or memory)", cfg.Backend)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s backend: %w", cfg.Backend, err)
	}
	if err := s.recover(); err != nil {
		s.be.Close()
		return nil, err
	}
	return s, nil
}

func (s *Server) recover() error {
	h := fnv.New64a()
	h.Write([]byte("axon-member:" + s.cfg.DataDir))
	s.memberID = h.Sum64()
	h.Write([]byte("cluster"))
	s.clusterID = h.Sum64()

	seq, err := revision.New(s.be, revision.Options{Logger: s.cfg.Logger})
	if err != nil {
		return fmt.Errorf("load state: %w", err)
	}
	s.seq = seq
	s.hub = watch.NewHub(history{s.be}, watch.Options{
		CurrentRev:   seq.Rev(),
		CompactedRev: seq.CompactedRev(),
	})
	s.leases = lease.NewManager(seq, lease.Options{Logger: s.cfg.Logger})
	snap, err := s.be.Snapshot()
	if err != nil {
		return err
	}
	err = s.leases.Load(snap)
	snap.Close()
	if err != nil {
		return fmt.Errorf("load leases: %w", err)
	}
	seq.SetPublisher(s.hub)
	seq.SetLeases(s.leases)
	seq.Start()
	s.leases.Start()
	s.cfg.Logger.Info("recovered state", "revision", seq.Rev(), "compacted", seq.CompactedRev(), "backend", s.cfg.Backend)
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
	s.grpc = grpc.NewServer(
		grpc.MaxRecvMsgSize(s.cfg.MaxRequestBytes+grpcOverheadBytes),
		grpc.MaxSendMsgSize(1<<31-1),
		grpc.MaxConcurrentStreams(1<<32-1),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	)
	pb.RegisterKVServer(s.grpc, &kvService{s: s})
	pb.RegisterWatchServer(s.grpc, newWatchService(s.hub, s.cfg.WatchProgressNotifyInterval, s.cfg.Logger, s.header))
	pb.RegisterLeaseServer(s.grpc, newLeaseService(s.leases, s.header))
	pb.RegisterMaintenanceServer(s.grpc, &maintenanceService{s: s})
	pb.RegisterClusterServer(s.grpc, &clusterService{s: s})

	for _, raw := range s.cfg.ListenClientURLs {
		u, err := url.Parse(raw)
		if err != nil {
			return fmt.Errorf("bad listen URL %q: %w", raw, err)
		}
		if u.Scheme != "http" && u.Scheme != "unix" {
			return fmt.Errorf("listen URL %q: only http:// is supported so far", raw)
		}
		l, err := net.Listen("tcp", u.Host)
		if err != nil {
			s.closeListeners()
			return fmt.Errorf("listen %s: %w", raw, err)
		}
		s.listeners = append(s.listeners, l)
		s.urls = append(s.urls, "http://"+l.Addr().String())
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.stopBackground = cancel
	if s.cfg.AutoCompactionRetention > 0 {
		go s.autoCompact(ctx, s.cfg.AutoCompactionRetention)
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
		if s.stopBackground != nil {
			s.stopBackground()
		}
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
		s.leases.Stop()
		s.seq.Close()
		if c, ok := any(s.hub).(interface{ Close() }); ok {
			c.Close()
		}
		s.closeErr = s.be.Close()
	})
	return s.closeErr
}

// header is the response header every answer carries.
func (s *Server) header() *pb.ResponseHeader {
	return &pb.ResponseHeader{ClusterId: s.clusterID, MemberId: s.memberID, Revision: s.seq.Rev(), RaftTerm: 1}
}

func (s *Server) fill(h *pb.ResponseHeader) {
	h.ClusterId, h.MemberId, h.RaftTerm = s.clusterID, s.memberID, 1
}
