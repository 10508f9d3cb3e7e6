package server

import (
	"context"
	"errors"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// autoCompact is etcd's periodic auto-compaction: keep `retention` of
// history. It samples the revision every retention/10 and, once per
// min(retention, 1h), compacts to the newest sample at least `retention`
// old.
func (s *Server) autoCompact(ctx context.Context, retention time.Duration) {
	type sample struct {
		at  time.Time
		rev int64
	}
	step := max(retention/10, 100*time.Millisecond)
	every := min(retention, time.Hour)
	samples := []sample{{time.Now(), s.hub.Rev()}}
	tick := time.NewTicker(step)
	defer tick.Stop()
	lastRun := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			samples = append(samples, sample{now, s.hub.Rev()})
			if now.Sub(lastRun) < every {
				continue
			}
			// The newest sample old enough to fall out of the retention window.
			target, i := int64(0), -1
			for j, sm := range samples {
				if now.Sub(sm.at) >= retention {
					target, i = sm.rev, j
				}
			}
			if i < 0 {
				continue
			}
			samples = samples[i:]
			lastRun = now
			w := s.writer()
			if w == nil || target <= w.CompactedRev() {
				continue // only the leader compacts
			}
			_, err := w.Compact(ctx, &pb.CompactionRequest{Revision: target})
			switch {
			case err == nil:
				s.cfg.Logger.Info("auto compaction", "revision", target, "retention", retention)
			case errors.Is(err, rpctypes.ErrGRPCCompacted), errors.Is(err, context.Canceled):
			default:
				s.cfg.Logger.Warn("auto compaction failed", "revision", target, "err", err)
			}
		}
	}
}
