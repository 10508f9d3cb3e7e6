package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/axon-kv/axon/mvcc"
)

// The metrics and health listener (--listen-metrics-urls), plain HTTP:
//
//	/metrics       Prometheus text format (see metrics.go)
//	/health        etcd's shape: {"health":"true","reason":""}; 503 with
//	               "false" and the reason when there is no leader, the
//	               backend cannot be read, or the NOSPACE alarm is raised
//	               (?exclude=NOSPACE leaves the alarm out, as etcd allows;
//	               ?serializable=true is accepted and changes nothing,
//	               every Axon read is served locally)
//	/livez         200 "ok" while the process serves
//	/readyz        200 "ok" when a leader is known and the backend reads;
//	               503 with the reason otherwise (the alarm does not make
//	               a member unready: reads are still served)
//	/debug/pprof/  with --enable-pprof
//
// The gRPC health service (grpc.health.v1.Health) on the client URLs
// reports SERVING for "" and "etcdserverpb.KV" when /readyz would answer
// 200, NOT_SERVING otherwise; it is refreshed every healthInterval.

const (
	healthInterval = time.Second
	// healthReadTimeout bounds the backend read a health check makes.
	healthReadTimeout = 5 * time.Second
)

// problems lists what makes the member unhealthy; readiness ignores the
// alarm.
func (s *Server) problems(withAlarm bool) []string {
	var out []string
	if s.closing.Load() {
		out = append(out, "SHUTTING DOWN")
	}
	if !s.hasLeader() {
		out = append(out, "NO LEADER")
	}
	if err := s.probeBackend(); err != nil {
		out = append(out, "BACKEND READ FAILED: "+err.Error())
	}
	if withAlarm && s.quota.alarmed() {
		out = append(out, "ALARM NOSPACE")
	}
	return out
}

// probeBackend reads the stored revisions from a fresh snapshot.
func (s *Server) probeBackend() error {
	done := make(chan error, 1)
	go func() {
		snap, err := s.be.Snapshot()
		if err != nil {
			done <- err
			return
		}
		defer snap.Close()
		_, _, err = mvcc.Reader{Snap: snap}.Meta()
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(healthReadTimeout):
		return errors.New("timed out")
	}
}

// healthBody is etcd's /health answer.
type healthBody struct {
	Health string `json:"health"`
	Reason string `json:"reason"`
}

func (s *Server) serveHealth(w http.ResponseWriter, r *http.Request) {
	withAlarm := true
	for _, ex := range r.URL.Query()["exclude"] {
		if strings.EqualFold(ex, "NOSPACE") {
			withAlarm = false
		}
	}
	body := healthBody{Health: "true"}
	code := http.StatusOK
	if p := s.problems(withAlarm); len(p) > 0 {
		body = healthBody{Health: "false", Reason: strings.Join(p, "; ")}
		code = http.StatusServiceUnavailable
		s.cfg.Logger.Debug("/health error", "reason", body.Reason)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(body)
}

func (s *Server) serveLivez(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "ok")
}

func (s *Server) serveReadyz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if p := s.problems(false); len(p) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, strings.Join(p, "; "))
		return
	}
	fmt.Fprintln(w, "ok")
}

// opsHandler routes the metrics listener.
func (s *Server) opsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{
		Registry:          s.metrics.reg,
		ErrorHandling:     promhttp.ContinueOnError,
		EnableOpenMetrics: false,
	}))
	mux.HandleFunc("/health", s.serveHealth)
	mux.HandleFunc("/livez", s.serveLivez)
	mux.HandleFunc("/readyz", s.serveReadyz)
	if s.cfg.EnablePprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// startOps listens on the metrics URLs and serves them. It runs in Start
// after the client listeners opened.
func (s *Server) startOps(ctx context.Context) error {
	for _, raw := range s.cfg.ListenMetricsURLs {
		u, err := url.Parse(raw)
		if err != nil {
			return fmt.Errorf("bad metrics URL %q: %w", raw, err)
		}
		if u.Scheme != "http" {
			return fmt.Errorf("metrics URL %q: only http:// is supported", raw)
		}
		l, err := net.Listen("tcp", u.Host)
		if err != nil {
			return fmt.Errorf("listen %s: %w", raw, err)
		}
		hs := &http.Server{Handler: s.opsHandler(), ReadHeaderTimeout: 10 * time.Second}
		s.httpServers = append(s.httpServers, hs)
		s.metricsURLs = append(s.metricsURLs, "http://"+l.Addr().String())
		s.serveWG.Add(1)
		go func() {
			defer s.serveWG.Done()
			if err := hs.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.cfg.Logger.Error("metrics listener failed", "addr", l.Addr().String(), "err", err)
			}
		}()
	}
	if len(s.metricsURLs) > 0 {
		s.cfg.Logger.Info("serving metrics and health", "urls", s.metricsURLs, "pprof", s.cfg.EnablePprof)
	}
	s.background.Add(1)
	go func() { defer s.background.Done(); s.healthLoop(ctx) }()
	return nil
}

// MetricsURLs are the metrics URLs actually listened on (ports resolved).
func (s *Server) MetricsURLs() []string { return append([]string(nil), s.metricsURLs...) }

// stopOps closes the metrics listeners.
func (s *Server) stopOps() {
	if s.healthSrv != nil {
		s.healthSrv.Shutdown()
	}
	for _, hs := range s.httpServers {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if err := hs.Shutdown(ctx); err != nil {
			hs.Close()
		}
		cancel()
	}
}

// newHealthServer is the gRPC health service, registered in Start.
func newHealthServer() *health.Server {
	h := health.NewServer()
	h.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	return h
}

// healthLoop keeps the gRPC health status current.
func (s *Server) healthLoop(ctx context.Context) {
	t := time.NewTicker(healthInterval)
	defer t.Stop()
	last := healthpb.HealthCheckResponse_UNKNOWN
	for {
		st := healthpb.HealthCheckResponse_SERVING
		if len(s.problems(false)) > 0 {
			st = healthpb.HealthCheckResponse_NOT_SERVING
		}
		if st != last {
			s.healthSrv.SetServingStatus("", st)
			s.healthSrv.SetServingStatus("etcdserverpb.KV", st)
			last = st
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

var _ prometheus.Collector = stateCollector{}
