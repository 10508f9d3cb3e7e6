package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/axon-kv/axon/watch"
)

const (
	// minWatchProgressInterval is etcd's floor for the progress notify
	// interval.
	minWatchProgressInterval = 100 * time.Millisecond
	// noLeaderChecks consecutive failed leader checks cancel the streams
	// that required a leader, as etcd does after three election timeouts.
	noLeaderChecks = 3
)

// watchService is etcd's Watch API over a watch.Hub.
type watchService struct {
	etcdserverpb.UnimplementedWatchServer

	hub              *watch.Hub
	progressInterval time.Duration
	lg               *slog.Logger
	header           func() *etcdserverpb.ResponseHeader
	hasLeader        func() bool
	leaderCheck      time.Duration
	fragmentBytes    int
}

// watchOption tunes a watchService.
type watchOption func(*watchService)

// withHasLeader sets the "has leader" check used for streams that carry
// the hasleader=true metadata. The default always has one (single node).
func withHasLeader(f func() bool) watchOption {
	return func(ws *watchService) { ws.hasLeader = f }
}

// withLeaderCheckInterval sets how often require-leader streams check for
// a leader; after three failed checks in a row they are canceled with
// "etcdserver: no leader". The default is one second (etcd's election
// timeout).
func withLeaderCheckInterval(d time.Duration) watchOption {
	return func(ws *watchService) { ws.leaderCheck = d }
}

// withMaxRequestBytes passes etcd's --max-request-bytes: responses of
// watchers created with fragment=true are split at that plus
// grpcOverheadBytes, where etcd splits them.
func withMaxRequestBytes(n int) watchOption {
	return func(ws *watchService) { ws.fragmentBytes = n + grpcOverheadBytes }
}

// newWatchService serves etcd's Watch API from hub. progressInterval is
// etcd's progress notify interval (at least 100ms; 0 means 10 minutes).
// header returns the cluster and member fields of response headers; the
// service copies it and sets the revision.
func newWatchService(hub *watch.Hub, progressInterval time.Duration, logger *slog.Logger,
	header func() *etcdserverpb.ResponseHeader, opts ...watchOption) etcdserverpb.WatchServer {
	if logger == nil {
		logger = slog.Default()
	}
	if progressInterval <= 0 {
		progressInterval = DefaultWatchProgressNotifyInterval
	}
	if progressInterval < minWatchProgressInterval {
		logger.Warn("watch progress notify interval raised to the minimum",
			"interval", progressInterval, "minimum", minWatchProgressInterval)
		progressInterval = minWatchProgressInterval
	}
	ws := &watchService{
		hub:              hub,
		progressInterval: progressInterval,
		lg:               logger,
		header:           header,
		hasLeader:        func() bool { return true },
		leaderCheck:      time.Second,
		fragmentBytes:    DefaultMaxRequestBytes + grpcOverheadBytes,
	}
	for _, o := range opts {
		o(ws)
	}
	return ws
}

// Watch serves one client stream: a goroutine reads requests and hands
// them to the hub's stream, this one sends what the stream yields, in its
// order. Like etcd, a client that half-closes keeps receiving events.
func (ws *watchService) Watch(stream etcdserverpb.Watch_WatchServer) error {
	v := metadata.ValueFromIncomingContext(stream.Context(), rpctypes.MetadataRequireLeaderKey)
	requireLeader := len(v) > 0 && v[0] == rpctypes.MetadataHasLeader
	if requireLeader && !ws.hasLeader() {
		return rpctypes.ErrGRPCNoLeader
	}

	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil)
	st := ws.hub.NewStream()
	defer st.Close()

	go ws.recvLoop(stream, st, cancel)
	go ws.progressLoop(ctx, st)
	if requireLeader {
		go ws.leaderLoop(ctx, cancel)
	}

	for {
		resps, err := st.Next(ctx)
		if err != nil {
			return ws.streamError(ctx, err)
		}
		for i := range resps {
			if err := ws.send(stream.Send, &resps[i]); err != nil {
				ws.lg.Debug("watch: send failed", "err", err)
				return err
			}
		}
	}
}

// streamError is what the handler returns when the stream ends: the no-leader
// error or the receive error that canceled it, etcd's "watch canceled" when
// the client went away.
func (ws *watchService) streamError(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); cause != nil {
		err = cause
	}
	if errors.Is(err, context.Canceled) {
		return rpctypes.ErrGRPCWatchCanceled
	}
	if errors.Is(err, watch.ErrClosed) {
		return rpctypes.ErrGRPCStopped
	}
	return err
}

func (ws *watchService) recvLoop(stream etcdserverpb.Watch_WatchServer, st *watch.Stream, cancel context.CancelCauseFunc) {
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return // half-closed: keep sending
		}
		if err != nil {
			cancel(err)
			return
		}
		switch u := req.RequestUnion.(type) {
		case *etcdserverpb.WatchRequest_CreateRequest:
			if u.CreateRequest != nil {
				st.Watch(watchRequest(u.CreateRequest))
			}
		case *etcdserverpb.WatchRequest_CancelRequest:
			if u.CancelRequest != nil {
				st.Cancel(u.CancelRequest.WatchId)
			}
		case *etcdserverpb.WatchRequest_ProgressRequest:
			if u.ProgressRequest != nil {
				st.RequestProgress()
			}
		default:
			ws.lg.Debug("watch: ignoring unknown request", "type", u)
		}
	}
}

func watchRequest(c *etcdserverpb.WatchCreateRequest) watch.WatchRequest {
	r := watch.WatchRequest{
		ID:             c.WatchId,
		Key:            c.Key,
		RangeEnd:       c.RangeEnd,
		StartRev:       c.StartRevision,
		PrevKV:         c.PrevKv,
		ProgressNotify: c.ProgressNotify,
		Fragment:       c.Fragment,
	}
	for _, f := range c.Filters {
		switch f {
		case etcdserverpb.WatchCreateRequest_NOPUT:
			r.NoPut = true
		case etcdserverpb.WatchCreateRequest_NODELETE:
			r.NoDelete = true
		}
	}
	return r
}

// progressLoop ticks the stream's progress notifications, with etcd's
// jitter of up to a tenth of the interval.
func (ws *watchService) progressLoop(ctx context.Context, st *watch.Stream) {
	d := ws.progressInterval + rand.N(ws.progressInterval/10+1)
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			st.TickProgress()
		case <-ctx.Done():
			return
		}
	}
}

// leaderLoop cancels a require-leader stream once the member has had no
// leader for noLeaderChecks checks in a row.
func (ws *watchService) leaderLoop(ctx context.Context, cancel context.CancelCauseFunc) {
	t := time.NewTicker(ws.leaderCheck)
	defer t.Stop()
	misses := 0
	for {
		select {
		case <-t.C:
			if ws.hasLeader() {
				misses = 0
				continue
			}
			if misses++; misses >= noLeaderChecks {
				cancel(rpctypes.ErrGRPCNoLeader)
				return
			}
		case <-ctx.Done():
			return
		}
	}
}

func (ws *watchService) newHeader(rev int64) *etcdserverpb.ResponseHeader {
	h := &etcdserverpb.ResponseHeader{Revision: rev}
	if ws.header != nil {
		if b := ws.header(); b != nil {
			h.ClusterId, h.MemberId, h.RaftTerm = b.ClusterId, b.MemberId, b.RaftTerm
		}
	}
	return h
}

// send sends r, split into fragments when its watcher asked for that and
// it is too large, as etcd does: every fragment but the last has
// fragment=true, each holds at least one event and stays under the limit
// unless that one event alone exceeds it.
func (ws *watchService) send(send func(*etcdserverpb.WatchResponse) error, r *watch.Response) error {
	wr := &etcdserverpb.WatchResponse{
		Header:          ws.newHeader(r.Revision),
		WatchId:         r.WatchID,
		Created:         r.Created,
		Canceled:        r.Canceled,
		CompactRevision: r.CompactRevision,
		CancelReason:    r.CancelReason,
		Events:          r.Events,
	}
	if !r.Fragment || len(r.Events) < 2 || proto.Size(wr) < ws.fragmentBytes {
		return send(wr)
	}
	wr.Events = nil
	wr.Fragment = true
	base := proto.Size(wr)
	evs := r.Events
	for len(evs) > 0 {
		n, size := 0, base
		for n < len(evs) {
			es := eventFieldSize(evs[n])
			if n > 0 && size+es >= ws.fragmentBytes {
				break
			}
			size += es
			n++
		}
		frag := &etcdserverpb.WatchResponse{
			Header:          wr.Header,
			WatchId:         wr.WatchId,
			Created:         wr.Created,
			Canceled:        wr.Canceled,
			CompactRevision: wr.CompactRevision,
			CancelReason:    wr.CancelReason,
			Fragment:        n < len(evs),
			Events:          evs[:n:n],
		}
		if err := send(frag); err != nil {
			return err
		}
		evs = evs[n:]
	}
	return nil
}

// eventFieldSize is the encoded size of ev as a repeated field of
// WatchResponse (tag, length, message).
func eventFieldSize(ev *mvccpb.Event) int {
	n := proto.Size(ev)
	return protowire.SizeTag(11) + protowire.SizeBytes(n)
}
