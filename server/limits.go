package server

import (
	"fmt"
	"sync"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
)

// Per-stream watcher limit (--max-watchers-per-stream; etcd has no such
// limit, so 0, the default, means none). It sits in front of the Watch
// service as a stream interceptor: it counts the watchers a stream holds
// from the creations it lets through and the created and canceled
// responses the service sends, and answers a creation past the limit
// itself, the way etcd answers a creation it cannot serve: a response with
// watch_id -1, created and canceled set, and the reason. Such a response
// is only sent once every earlier creation has been answered, since
// clients match creation answers to requests in order.

func (s *Server) watchLimit(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if info.FullMethod != methodWatch || s.cfg.MaxWatchersPerStream <= 0 {
		return handler(srv, ss)
	}
	return handler(srv, &limitedWatchStream{
		ServerStream: ss,
		s:            s,
		max:          s.cfg.MaxWatchersPerStream,
		active:       map[int64]bool{},
		wake:         make(chan struct{}, 1),
	})
}

type limitedWatchStream struct {
	grpc.ServerStream
	s   *Server
	max int

	sendMu sync.Mutex // serializes SendMsg (the service's and ours)

	mu      sync.Mutex
	active  map[int64]bool // created watch IDs not canceled since
	pending int            // creations passed on, not yet answered
	wake    chan struct{}  // signaled when pending drops
}

func (w *limitedWatchStream) SendMsg(m any) error {
	w.sendMu.Lock()
	defer w.sendMu.Unlock()
	if r, ok := m.(*pb.WatchResponse); ok && (r.Created || r.Canceled) {
		w.mu.Lock()
		if r.Created {
			if w.pending > 0 {
				w.pending--
			}
			if !r.Canceled {
				w.active[r.WatchId] = true
			}
			select {
			case w.wake <- struct{}{}:
			default:
			}
		} else {
			delete(w.active, r.WatchId)
		}
		w.mu.Unlock()
	}
	return w.ServerStream.SendMsg(m)
}

func (w *limitedWatchStream) RecvMsg(m any) error {
	for {
		if err := w.ServerStream.RecvMsg(m); err != nil {
			return err
		}
		req, ok := m.(*pb.WatchRequest)
		if !ok || req.GetCreateRequest() == nil {
			return nil
		}
		w.mu.Lock()
		if len(w.active)+w.pending < w.max {
			w.pending++
			w.mu.Unlock()
			return nil
		}
		for w.pending > 0 {
			w.mu.Unlock()
			select {
			case <-w.wake:
			case <-w.Context().Done():
				return w.Context().Err()
			}
			w.mu.Lock()
		}
		full := len(w.active) >= w.max
		if !full {
			w.pending++
		}
		w.mu.Unlock()
		if !full {
			return nil // watchers were canceled meanwhile
		}
		w.s.metrics.watchRefused.Inc()
		err := w.SendMsg(&pb.WatchResponse{
			Header:       w.s.header(),
			WatchId:      -1,
			Created:      true,
			Canceled:     true,
			CancelReason: fmt.Sprintf("axon: too many watchers on this stream (--max-watchers-per-stream=%d)", w.max),
		})
		if err != nil {
			return err
		}
	}
}
