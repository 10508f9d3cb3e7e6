package server

import (
	"context"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.etcd.io/etcd/api/v3/version"
	"google.golang.org/grpc"

	"github.com/axon-kv/axon/backend"
	"github.com/axon-kv/axon/revision"
)

// Prometheus metrics. Every Server has its own registry (tests run many
// servers in one process); /metrics on the metrics URLs serves it.
//
// Names follow etcd where an etcd dashboard or alert looks for them, and
// use the axon_ prefix for the rest:
//
//	grpc_server_started_total, grpc_server_handled_total,
//	grpc_server_msg_received_total, grpc_server_msg_sent_total,
//	grpc_server_handling_seconds            per method and code (go-grpc-middleware)
//	etcd_server_has_leader, etcd_server_is_leader, etcd_server_version
//	etcd_mvcc_db_total_size_in_bytes, etcd_mvcc_db_total_size_in_use_in_bytes
//	etcd_server_quota_backend_bytes
//	etcd_disk_backend_commit_duration_seconds every backend batch commit
//	etcd_debugging_mvcc_current_revision, etcd_debugging_mvcc_compact_revision
//	etcd_debugging_mvcc_watcher_total, etcd_debugging_mvcc_watch_stream_total
//	etcd_debugging_mvcc_slow_watcher_total  watchers still catching up
//	etcd_debugging_mvcc_events_total        events sent to watchers
//	etcd_debugging_lease_granted_total
//	axon_backend_read_duration_seconds{op="get|scan"}
//	axon_sequencer_group_size, axon_sequencer_commit_seconds
//	axon_watch_events_published_total, axon_watch_slow_canceled_total,
//	axon_watch_compacted_canceled_total, axon_watch_refused_total
//	axon_leases, axon_mvcc_keys, axon_quota_nospace_alarm, axon_quota_rejected_total
//	go_*, process_*
type metrics struct {
	reg  *prometheus.Registry
	grpc *grpcprom.ServerMetrics

	backendCommit prometheus.Histogram
	backendRead   *prometheus.HistogramVec
	groupSize     prometheus.Histogram
	groupCommit   prometheus.Histogram
	leaseGranted  prometheus.Counter
	quotaRejected prometheus.Counter
	watchRefused  prometheus.Counter
}

// latencyBuckets are etcd's disk latency buckets: 1 ms to about 8 s.
var latencyBuckets = prometheus.ExponentialBuckets(0.001, 2, 14)

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		grpc: grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
			grpcprom.WithHistogramBuckets([]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}))),
		backendCommit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "etcd_disk_backend_commit_duration_seconds",
			Help:    "Latency of backend batch commits (durable, one per write group, lease change or compaction batch).",
			Buckets: latencyBuckets,
		}),
		backendRead: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "axon_backend_read_duration_seconds",
			Help:    "Latency of backend reads: point gets and whole range scans (a scan includes the caller's per-key decoding).",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 16),
		}, []string{"op"}),
		groupSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "axon_sequencer_group_size",
			Help:    "Write requests committed together in one sequencer group.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 12),
		}),
		groupCommit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "axon_sequencer_commit_seconds",
			Help:    "Latency of one sequencer group commit.",
			Buckets: latencyBuckets,
		}),
		leaseGranted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "etcd_debugging_lease_granted_total",
			Help: "Leases granted by this member while leading.",
		}),
		quotaRejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "axon_quota_rejected_total",
			Help: "Writes refused with 'database space exceeded'.",
		}),
		watchRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "axon_watch_refused_total",
			Help: "Watch creations refused by --max-watchers-per-stream.",
		}),
	}
	m.reg.MustRegister(m.grpc, m.backendCommit, m.backendRead, m.groupSize, m.groupCommit,
		m.leaseGranted, m.quotaRejected, m.watchRefused,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry is the member's Prometheus registry (served on /metrics).
func (s *Server) Registry() *prometheus.Registry { return s.metrics.reg }

// ObserveGroup records one committed write group. It is the sequencer's
// OnGroup hook: becomeLeader sets `seq.OnGroup = s.ObserveGroup` before
// seq.Start().
func (s *Server) ObserveGroup(st revision.GroupStats) {
	s.metrics.groupSize.Observe(float64(st.Requests))
	s.metrics.groupCommit.Observe(st.Commit.Seconds())
	if s.witness != nil {
		s.witness.Advance(st.Rev)
	}
}

// stateCollector reads gauges from the server at scrape time.
type stateCollector struct{ s *Server }

var (
	descHasLeader      = prometheus.NewDesc("etcd_server_has_leader", "Whether a leader exists: 1 is yes, 0 is no.", nil, nil)
	descIsLeader       = prometheus.NewDesc("etcd_server_is_leader", "Whether this member is the leader (runs the writer): 1 is yes.", nil, nil)
	descVersion        = prometheus.NewDesc("etcd_server_version", "The etcd version this member reports; value 1.", []string{"server_version"}, nil)
	descDBSize         = prometheus.NewDesc("etcd_mvcc_db_total_size_in_bytes", "Bytes the backend occupies.", nil, nil)
	descDBSizeInUse    = prometheus.NewDesc("etcd_mvcc_db_total_size_in_use_in_bytes", "Bytes the backend occupies (Axon does not tell free pages apart).", nil, nil)
	descQuota          = prometheus.NewDesc("etcd_server_quota_backend_bytes", "The backend quota (--quota-backend-bytes); 0 when off.", nil, nil)
	descCurrentRev     = prometheus.NewDesc("etcd_debugging_mvcc_current_revision", "The current revision.", nil, nil)
	descCompactRev     = prometheus.NewDesc("etcd_debugging_mvcc_compact_revision", "The compacted revision.", nil, nil)
	descWatchers       = prometheus.NewDesc("etcd_debugging_mvcc_watcher_total", "Watchers, live or catching up.", nil, nil)
	descStreams        = prometheus.NewDesc("etcd_debugging_mvcc_watch_stream_total", "Open watch streams.", nil, nil)
	descSlowWatchers   = prometheus.NewDesc("etcd_debugging_mvcc_slow_watcher_total", "Watchers still catching up on past revisions.", nil, nil)
	descEventsSent     = prometheus.NewDesc("etcd_debugging_mvcc_events_total", "Events sent to watchers.", nil, nil)
	descEventsPub      = prometheus.NewDesc("axon_watch_events_published_total", "Events committed and handed to the watch hub.", nil, nil)
	descSlowCanceled   = prometheus.NewDesc("axon_watch_slow_canceled_total", "Watchers canceled because their buffer overflowed (slow consumers).", nil, nil)
	descCompactCancels = prometheus.NewDesc("axon_watch_compacted_canceled_total", "Watchers canceled because their start revision was compacted.", nil, nil)
	descLeases         = prometheus.NewDesc("axon_leases", "Leases in the lease table (reported by the leader only).", nil, nil)
	descKeys           = prometheus.NewDesc("axon_mvcc_keys", "Live keys (counted by a keys-only scan at most every 30 s).", nil, nil)
	descAlarm          = prometheus.NewDesc("axon_quota_nospace_alarm", "Whether the NOSPACE alarm is raised: 1 is yes.", nil, nil)
)

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descHasLeader, descIsLeader, descVersion, descDBSize, descDBSizeInUse, descQuota,
		descCurrentRev, descCompactRev, descWatchers, descStreams, descSlowWatchers, descEventsSent, descEventsPub,
		descSlowCanceled, descCompactCancels, descLeases, descKeys, descAlarm} {
		ch <- d
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v int64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	leading := s.writer() != nil
	gauge(descHasLeader, b2f(s.hasLeader()))
	gauge(descIsLeader, b2f(leading))
	gauge(descVersion, 1, version.Version)
	size := float64(s.be.Size())
	gauge(descDBSize, size)
	gauge(descDBSizeInUse, size)
	gauge(descQuota, float64(max(s.cfg.QuotaBackendBytes, 0)))
	gauge(descCurrentRev, float64(s.hub.Rev()))
	gauge(descCompactRev, float64(s.hub.CompactRev()))
	hm := &s.hub.Metrics
	gauge(descWatchers, float64(hm.Watchers.Load()))
	gauge(descStreams, float64(hm.Streams.Load()))
	gauge(descSlowWatchers, float64(hm.CatchingUp.Load()))
	counter(descEventsSent, hm.EventsSent.Load())
	counter(descEventsPub, hm.EventsPublished.Load())
	counter(descSlowCanceled, hm.SlowCancels.Load())
	counter(descCompactCancels, hm.CompactCancels.Load())
	if leading {
		gauge(descLeases, float64(s.leases.Len()))
	}
	gauge(descKeys, float64(s.idx.Live())) // the key index counts them
	gauge(descAlarm, b2f(s.quota.alarmed()))
}

// leaseCounter counts grants this member served as leader (a follower
// forwards them, and the leader counts them once).
func (s *Server) leaseCounter(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	if err == nil && info.FullMethod == methodLeaseGrant && s.writer() != nil {
		s.metrics.leaseGranted.Inc()
	}
	return resp, err
}

// instrumented wraps a backend to time commits and reads.
type instrumented struct {
	backend.Backend
	m *metrics
}

func (b instrumented) Commit(batch *backend.Batch) error {
	start := time.Now()
	err := b.Backend.Commit(batch)
	if err == nil {
		b.m.backendCommit.Observe(time.Since(start).Seconds())
	}
	return err
}

func (b instrumented) Snapshot() (backend.Snapshot, error) {
	snap, err := b.Backend.Snapshot()
	if err != nil {
		return nil, err
	}
	return instrumentedSnap{Snapshot: snap, get: b.m.backendRead.WithLabelValues("get"), scan: b.m.backendRead.WithLabelValues("scan")}, nil
}

type instrumentedSnap struct {
	backend.Snapshot
	get, scan prometheus.Observer
}

func (s instrumentedSnap) Get(key []byte) ([]byte, error) {
	start := time.Now()
	v, err := s.Snapshot.Get(key)
	s.get.Observe(time.Since(start).Seconds())
	return v, err
}

// Scan times the whole scan, the callback included: timing every key
// apart would cost more than the engine's own per-key work.
func (s instrumentedSnap) Scan(start, end []byte, opts backend.ScanOptions, fn func(key, value []byte) error) error {
	begin := time.Now()
	err := s.Snapshot.Scan(start, end, opts, fn)
	s.scan.Observe(time.Since(begin).Seconds())
	return err
}
