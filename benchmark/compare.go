package benchmark

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Target is one server to compare: a name, its endpoints and, optionally,
// its process id and data directory for the memory and scale steps. With a
// Command, Compare starts the server itself (on DataDir), knows its pid,
// stops it while other targets run the scale step and measures its restart.
type Target struct {
	Name      string   `json:"name"`
	Endpoints []string `json:"endpoints"`
	Pid       int      `json:"pid,omitempty"`
	DataDir   string   `json:"data_dir,omitempty"`
	// Command starts the server; DataDirPlaceholder ("{data-dir}") in it
	// stands for the data directory.
	Command []string `json:"command,omitempty"`
}

// ParseTarget reads "name=endpoint[,endpoint...][,pid=N][,data-dir=PATH]".
func ParseTarget(s string) (Target, error) {
	name, rest, ok := strings.Cut(s, "=")
	if !ok || name == "" || rest == "" {
		return Target{}, fmt.Errorf("target %q: want name=endpoint[,endpoint][,pid=N][,data-dir=PATH]", s)
	}
	t := Target{Name: name}
	for _, part := range strings.Split(rest, ",") {
		part = strings.TrimSpace(part)
		switch {
		case part == "":
		case strings.HasPrefix(part, "pid="):
			n, err := strconv.Atoi(strings.TrimPrefix(part, "pid="))
			if err != nil || n <= 0 {
				return Target{}, fmt.Errorf("target %q: bad pid", s)
			}
			t.Pid = n
		case strings.HasPrefix(part, "data-dir="):
			t.DataDir = strings.TrimPrefix(part, "data-dir=")
		default:
			t.Endpoints = append(t.Endpoints, part)
		}
	}
	if len(t.Endpoints) == 0 {
		return Target{}, fmt.Errorf("target %q has no endpoint", s)
	}
	return t, nil
}

// Step is one workload of a suite, with its settings.
type Step struct {
	Name     string
	Workload string
	Apply    func(*Config)
}

// SuiteOptions sizes a suite. Zero fields take the defaults noted.
type SuiteOptions struct {
	// Duration of each timed step (10 s).
	Duration time.Duration
	// MemoryObjects is how many objects the memory step loads (100,000).
	MemoryObjects int
	// ListObjects is how many objects the list step lists (10,000).
	ListObjects int
	// Watchers and WatchPrefixes shape the watch step (10,000 and 100);
	// WatchRate caps its writes per second (0: as fast as the writers go).
	Watchers      int
	WatchPrefixes int
	WatchRate     float64
	// InterferenceObjects is how many objects the interference step's
	// unpaginated lists read (100,000; suite "full" only).
	InterferenceObjects int
	// ScaleObjects is how many objects the scale step creates, one per
	// request (1,000,000).
	ScaleObjects int
	// ScaleClients is how many clients create them (300, over Clients/6
	// connections unless Conns is set).
	ScaleClients int
}

func (o SuiteOptions) withDefaults() SuiteOptions {
	if o.Duration == 0 {
		o.Duration = 10 * time.Second
	}
	if o.MemoryObjects == 0 {
		o.MemoryObjects = 100000
	}
	if o.ListObjects == 0 {
		o.ListObjects = 10000
	}
	if o.Watchers == 0 {
		o.Watchers = 10000
	}
	if o.WatchPrefixes == 0 {
		o.WatchPrefixes = 100
	}
	if o.InterferenceObjects == 0 {
		o.InterferenceObjects = 100000
	}
	if o.ScaleObjects == 0 {
		o.ScaleObjects = 1000000
	}
	if o.ScaleClients == 0 {
		o.ScaleClients = 300
	}
	return o
}

// Suites lists the suite names Suite accepts.
var Suites = []string{"standard", "full", "quick"}

// Suite returns the steps of a named suite:
//
//	standard  create and update at 300 clients, get (linearizable and
//	          serializable) at 100, list of ListObjects with limit 500 at 8,
//	          watch (Watchers on WatchPrefixes, 10 writers), interference
//	          (updates from 100 clients while 4 clients LIST
//	          InterferenceObjects unpaginated; throughput, p99, peak RSS),
//	          memory, scale (ScaleObjects creates, then RSS, data dir and
//	          restart time)
//	full      standard plus mixed and lease
//	quick     standard at a tenth of the sizes, for trying things out
func Suite(name string, o SuiteOptions) ([]Step, error) {
	o = o.withDefaults()
	if name == "quick" {
		o.Duration = max(o.Duration/5, time.Second)
		o.MemoryObjects = max(o.MemoryObjects/10, 1000)
		o.ListObjects = max(o.ListObjects/10, 1000)
		o.Watchers = max(o.Watchers/10, 100)
		o.WatchPrefixes = max(o.WatchPrefixes/10, 10)
		o.ScaleObjects = max(o.ScaleObjects/10, 1000)
		o.InterferenceObjects = max(o.InterferenceObjects/10, 1000)
	}
	timed := func(clients int, more func(c *Config)) func(*Config) {
		return func(c *Config) {
			c.Clients = clients
			c.Duration = o.Duration
			c.Total = 0
			if more != nil {
				more(c)
			}
		}
	}
	steps := []Step{
		{Name: "create", Workload: "create", Apply: timed(300, nil)},
		{Name: "update", Workload: "update", Apply: timed(300, nil)},
		{Name: "get-lin", Workload: "get", Apply: timed(100, func(c *Config) { c.Consistency = "l" })},
		{Name: "get-ser", Workload: "get", Apply: timed(100, func(c *Config) { c.Consistency = "s" })},
		{Name: "list", Workload: "list", Apply: timed(50, func(c *Config) {
			c.Objects = o.ListObjects
			c.PageLimit = 500
		})},
		{Name: "watch", Workload: "watch", Apply: timed(10, func(c *Config) {
			c.Watchers = o.Watchers
			c.WatchPrefixes = o.WatchPrefixes
			c.Rate = o.WatchRate
		})},
		{Name: "interference", Workload: "interference", Apply: timed(104, func(c *Config) {
			c.Objects = o.InterferenceObjects
		})},
	}
	switch name {
	case "standard", "quick":
	case "full":
		steps = append(steps,
			Step{Name: "mixed", Workload: "mixed", Apply: timed(100, nil)},
			Step{Name: "lease", Workload: "lease", Apply: timed(50, nil)},
		)
	default:
		return nil, fmt.Errorf("unknown suite %q (one of %s)", name, strings.Join(Suites, ", "))
	}
	steps = append(steps, Step{Name: "memory", Workload: "memory", Apply: func(c *Config) {
		c.Clients = 16
		c.Objects = o.MemoryObjects
	}}, Step{Name: "scale", Workload: "scale", Apply: func(c *Config) {
		c.Clients = o.ScaleClients
		c.Objects = o.ScaleObjects
		c.Total = 0
		c.Duration = 0
	}})
	return steps, nil
}

// FilterSteps keeps the steps named in only (comma-separated); empty keeps
// all.
func FilterSteps(steps []Step, only string) ([]Step, error) {
	if strings.TrimSpace(only) == "" {
		return steps, nil
	}
	want := map[string]bool{}
	for _, n := range strings.Split(only, ",") {
		want[strings.TrimSpace(n)] = true
	}
	var out []Step
	for _, s := range steps {
		if want[s.Name] {
			out = append(out, s)
			delete(want, s.Name)
		}
	}
	if len(want) > 0 {
		return nil, fmt.Errorf("no such step in the suite: %s", strings.Join(sortedKeys(want), ", "))
	}
	return out, nil
}

// Comparison is the outcome of Compare.
type Comparison struct {
	Suite    string        `json:"suite"`
	Started  time.Time     `json:"started"`
	Host     HostInfo      `json:"host"`
	Targets  []Target      `json:"targets"`
	Baseline string        `json:"baseline,omitempty"`
	Ceiling  string        `json:"ceiling,omitempty"`
	Steps    []*StepResult `json:"steps"`
}

// HostInfo describes the machine the client ran on.
type HostInfo struct {
	NumCPU     int    `json:"num_cpu"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	GoVersion  string `json:"go_version"`
	OS         string `json:"os"`
	Hostname   string `json:"hostname,omitempty"`
}

func hostInfo() HostInfo {
	h, _ := os.Hostname()
	return HostInfo{NumCPU: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0), GoVersion: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH, Hostname: h}
}

// StepResult holds one step's result for each target, in target order.
type StepResult struct {
	Name     string    `json:"name"`
	Workload string    `json:"workload"`
	Results  []*Result `json:"results"`
}

// Result returns the result of target name, or nil.
func (s *StepResult) Result(name string) *Result {
	for _, r := range s.Results {
		if r.Target == name {
			return r
		}
	}
	return nil
}

// CompareOptions configures Compare.
type CompareOptions struct {
	Suite   string
	Targets []Target
	Steps   []Step
	// Base is the configuration every step starts from (connections,
	// timeouts, sizes, progress output).
	Base Config
	// Baseline and Ceiling name the targets ratios are taken against
	// (defaults: "etcd" and "null" when such targets exist).
	Baseline, Ceiling string
	// ReadyTimeout is how long to wait for each target to answer (60 s).
	ReadyTimeout time.Duration
	// Pause between runs, letting the last server settle (1 s).
	Pause time.Duration
	// Log receives each run's text summary (nil: none).
	Log io.Writer
	// ServerLogDir receives NAME.log, the output of each server Compare
	// starts (Target.Command); "" discards it.
	ServerLogDir string
	// StopTimeout bounds a server's exit after SIGTERM before SIGKILL
	// (1 min); RestartTimeout the scale step's wait for a linearizable read
	// after restarting (10 min).
	StopTimeout, RestartTimeout time.Duration
	// KeepScaleData keeps the scale step's data directories (removed after
	// measuring by default).
	KeepScaleData bool
}

// Compare runs every step on every target in turn (step by step, so that
// all targets see the machine in the same state) and returns the results.
//
// Targets with a Command are started here (on their DataDir) and stopped
// at the end. The scale step runs on one target at a time with every
// started server stopped but the one measured, which runs on a fresh data
// directory next to its DataDir (removed afterwards unless KeepScaleData);
// later steps restart the suite's servers as needed.
func Compare(ctx context.Context, o CompareOptions) (*Comparison, error) {
	if len(o.Targets) == 0 {
		return nil, fmt.Errorf("no targets")
	}
	o.Targets = append([]Target(nil), o.Targets...)
	seen := map[string]bool{}
	for _, t := range o.Targets {
		if seen[t.Name] {
			return nil, fmt.Errorf("target %q given twice", t.Name)
		}
		seen[t.Name] = true
		if t.DataDir == "" && strings.Contains(strings.Join(t.Command, " "), DataDirPlaceholder) {
			return nil, fmt.Errorf("target %s: its command uses %s but it has no data-dir", t.Name, DataDirPlaceholder)
		}
	}
	if o.Baseline == "" && seen["etcd"] {
		o.Baseline = "etcd"
	}
	if o.Ceiling == "" && seen["null"] {
		o.Ceiling = "null"
	}
	if o.Baseline != "" && !seen[o.Baseline] {
		return nil, fmt.Errorf("baseline %q is not a target", o.Baseline)
	}
	if o.Ceiling != "" && !seen[o.Ceiling] {
		return nil, fmt.Errorf("ceiling %q is not a target", o.Ceiling)
	}
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = 60 * time.Second
	}
	if o.Pause == 0 {
		o.Pause = time.Second
	}
	if o.StopTimeout == 0 {
		o.StopTimeout = time.Minute
	}
	if o.RestartTimeout == 0 {
		o.RestartTimeout = 10 * time.Minute
	}
	c := &comparer{o: o, procs: map[string]*ServerProc{}, stopped: map[string]bool{}}
	defer c.stopAll()
	for i, t := range o.Targets {
		if len(t.Command) == 0 {
			continue
		}
		p := &ServerProc{Argv: t.Command}
		if o.ServerLogDir != "" {
			p.LogPath = filepath.Join(o.ServerLogDir, t.Name+".log")
		}
		c.progressf("[%s] starting: %s", t.Name, strings.Join(t.Command, " "))
		if err := p.Start(t.DataDir); err != nil {
			return nil, fmt.Errorf("target %s: start: %w", t.Name, err)
		}
		c.procs[t.Name] = p
		o.Targets[i].Pid = p.Pid()
	}
	cmp := &Comparison{Suite: o.Suite, Started: time.Now(), Host: hostInfo(), Targets: o.Targets, Baseline: o.Baseline, Ceiling: o.Ceiling}

	for _, t := range o.Targets {
		if err := c.waitReady(ctx, t); err != nil {
			return nil, err
		}
	}

	first := true
	for _, st := range o.Steps {
		sr := &StepResult{Name: st.Name, Workload: st.Workload}
		cmp.Steps = append(cmp.Steps, sr)
		for _, t := range o.Targets {
			if ctx.Err() != nil {
				return cmp, ctx.Err()
			}
			if !first {
				select {
				case <-time.After(o.Pause):
				case <-ctx.Done():
					return cmp, ctx.Err()
				}
			}
			first = false
			cfg := o.Base
			if st.Apply != nil {
				st.Apply(&cfg)
			}
			cfg.Endpoints = t.Endpoints
			cfg.Target = t.Name
			cfg.Label = st.Name
			cfg.Pid = t.Pid
			cfg.DataDir = t.DataDir
			var res *Result
			var err error
			if st.Workload == "scale" {
				res, err = c.scale(ctx, t, cfg)
				if res == nil && err == nil {
					continue // not a storage server: no data dir
				}
			} else {
				// One target at a time: an idle neighbour's compaction and
				// fsyncs would skew the one measured.
				c.isolate(t)
				if err = c.ensureRunning(ctx, t); err == nil {
					if p := c.procs[t.Name]; p != nil {
						cfg.Pid = p.Pid()
					}
					res, err = Run(ctx, st.Workload, cfg)
				}
			}
			if err != nil {
				res = &Result{Label: st.Name, Workload: st.Workload, Target: t.Name, Endpoints: t.Endpoints, Started: time.Now(), Error: err.Error()}
			}
			sr.Results = append(sr.Results, res)
			if o.Log != nil {
				res.WriteText(o.Log)
			}
		}
	}
	return cmp, nil
}

// comparer is the state of one Compare: the servers it started.
type comparer struct {
	o       CompareOptions
	procs   map[string]*ServerProc
	stopped map[string]bool // stopped by the harness, to be restarted on need
}

func (c *comparer) progressf(format string, args ...any) {
	if w := c.o.Base.Progress; w != nil {
		fmt.Fprintf(w, format+"\n", args...)
	}
}

func (c *comparer) stopAll() {
	for name, p := range c.procs {
		if p.Running() {
			if _, err := p.Stop(c.o.StopTimeout); err != nil {
				c.progressf("[%s] stop: %v", name, err)
			}
		}
	}
}

// isolate stops every server the harness started except t's; they are
// started again on their data dirs when their turn comes.
func (c *comparer) isolate(t Target) {
	for name, q := range c.procs {
		if name == t.Name || !q.Running() {
			continue
		}
		c.progressf("[%s] stopping %s (pid %d) while %s is measured", t.Name, name, q.Pid(), t.Name)
		if _, err := q.Stop(c.o.StopTimeout); err != nil {
			c.progressf("[%s] stop %s: %v", t.Name, name, err)
		}
		c.stopped[name] = true
	}
}

// waitReady waits until target t answers Maintenance.Status.
func (c *comparer) waitReady(ctx context.Context, t Target) error {
	cfg := c.o.Base
	cfg.Endpoints = t.Endpoints
	cfg.Conns = 1
	cfg = cfg.withDefaults()
	clients, err := Connect(ctx, cfg)
	if err != nil {
		return fmt.Errorf("target %s: %w", t.Name, err)
	}
	defer clients[0].Close()
	if err := WaitReady(ctx, clients[0], t.Endpoints, c.o.ReadyTimeout); err != nil {
		if p := c.procs[t.Name]; p != nil && !p.Running() {
			return fmt.Errorf("target %s: server exited (%v): %w", t.Name, p.ExitErr(), err)
		}
		return fmt.Errorf("target %s: %w", t.Name, err)
	}
	return nil
}

// ensureRunning restarts t's server on its DataDir if the harness stopped
// it (for the scale step); a server that exited by itself is an error.
func (c *comparer) ensureRunning(ctx context.Context, t Target) error {
	p := c.procs[t.Name]
	if p == nil || p.Running() {
		return nil
	}
	if !c.stopped[t.Name] {
		return fmt.Errorf("server %s exited during the run: %v", t.Name, p.ExitErr())
	}
	c.progressf("[%s] starting again on %s", t.Name, t.DataDir)
	if err := p.Start(t.DataDir); err != nil {
		return err
	}
	c.stopped[t.Name] = false
	return c.waitReady(ctx, t)
}

// scale runs the scale step on t. A server the harness started runs alone,
// on a fresh data directory: every other server is stopped first; after
// the load it is stopped (SIGTERM) and started again on the same
// directory, and the time until a linearizable Get succeeds is its
// restart time. A target without a data dir is skipped (nil, nil).
func (c *comparer) scale(ctx context.Context, t Target, cfg Config) (*Result, error) {
	if t.DataDir == "" {
		c.progressf("[scale %s] skipped: no data dir, not a storage server", t.Name)
		return nil, nil
	}
	p := c.procs[t.Name]
	if p == nil {
		res, err := Run(ctx, "scale", cfg)
		if err == nil {
			res.Notes = append(res.Notes, "loaded into the running server: restart not measured and other servers not stopped (compare did not start it; see --server)")
		}
		return res, err
	}
	for name, q := range c.procs {
		if q.Running() {
			c.progressf("[scale %s] stopping %s (pid %d) while %s is measured", t.Name, name, q.Pid(), t.Name)
			if _, err := q.Stop(c.o.StopTimeout); err != nil {
				c.progressf("[scale %s] stop %s: %v", t.Name, name, err)
			}
			c.stopped[name] = true
		}
	}
	dir, err := os.MkdirTemp(filepath.Dir(filepath.Clean(t.DataDir)), filepath.Base(filepath.Clean(t.DataDir))+"-scale-")
	if err != nil {
		return nil, err
	}
	if !c.o.KeepScaleData {
		defer os.RemoveAll(dir)
	}
	c.progressf("[scale %s] starting on a fresh data dir %s", t.Name, dir)
	if err := p.Start(dir); err != nil {
		return nil, err
	}
	defer func() {
		if p.Running() {
			_, _ = p.Stop(c.o.StopTimeout)
		}
		c.stopped[t.Name] = true
	}()
	if err := c.waitReady(ctx, t); err != nil {
		return nil, err
	}
	cfg.Pid, cfg.DataDir = p.Pid(), dir
	res, err := Run(ctx, "scale", cfg)
	if err != nil {
		return nil, err
	}
	note := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		res.Notes = append(res.Notes, msg)
		c.progressf("[scale %s] %s", t.Name, msg)
	}
	if res.Gauges == nil {
		res.Gauges = map[string]float64{}
	}
	if ctx.Err() != nil {
		return res, nil
	}

	c.progressf("[scale %s] stopping pid %d with SIGTERM", t.Name, p.Pid())
	took, err := p.Stop(c.o.StopTimeout)
	res.Gauges["stop_s"] = took.Seconds()
	if err != nil {
		note("stop: %v", err)
	}
	c.progressf("[scale %s] stopped in %.2fs; starting again on the same data dir", t.Name, took.Seconds())
	start := time.Now()
	if err := p.Start(dir); err != nil {
		note("restart: %v", err)
		return res, nil
	}
	if err := WaitServing(ctx, t.Endpoints, c.o.RestartTimeout); err != nil {
		note("restart: %v", err)
		return res, nil
	}
	restart := time.Since(start)
	res.Gauges["restart_s"] = restart.Seconds()
	c.progressf("[scale %s] serving linearizable reads %.2fs after the restart", t.Name, restart.Seconds())
	if rss, _, err := ProcessMemory(p.Pid()); err == nil {
		res.Gauges["rss_after_restart_bytes"] = float64(rss)
	}
	// The objects survived the restart: count them.
	if prefix := res.Params["prefix"]; prefix != "" {
		n, err := countPrefix(ctx, t.Endpoints, prefix, c.o.RestartTimeout)
		if err != nil {
			note("count after restart: %v", err)
		} else {
			res.Counters["objects_after_restart"] = n
			if n != res.Counters["objects_loaded"] {
				note("%d objects after the restart, %d loaded", n, res.Counters["objects_loaded"])
			}
		}
	}
	return res, nil
}

// countPrefix counts the keys under prefix (a count-only Range).
func countPrefix(ctx context.Context, endpoints []string, prefix string, timeout time.Duration) (int64, error) {
	clients, err := Connect(ctx, Config{Endpoints: endpoints, Conns: 1})
	if err != nil {
		return 0, err
	}
	defer clients[0].Close()
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := clients[0].Get(cctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return resp.Count, nil
}

// Metric is one row of the comparison table.
type Metric struct {
	Name string
	// HigherBetter tells how to read ratios (throughput) or not (latency,
	// memory).
	HigherBetter bool
	Value        func(*Result) (float64, bool)
	// Fmt formats a value (default fmtNum).
	Fmt func(float64) string
}

func primaryThroughput(r *Result) (float64, bool) {
	p := r.Primary()
	if p == nil || p.Ops == 0 {
		return 0, false
	}
	return p.Throughput, true
}

func seriesP99(name string) func(*Result) (float64, bool) {
	return func(r *Result) (float64, bool) {
		s := r.Primary()
		if name != "" {
			s = r.SeriesNamed(name)
		}
		if s == nil || s.Ops == 0 {
			return 0, false
		}
		return s.Latency.P99Ms, true
	}
}

func counterMetric(name string) func(*Result) (float64, bool) {
	return func(r *Result) (float64, bool) {
		v, ok := r.Counters[name]
		return float64(v), ok
	}
}

func gaugeMiB(name string) func(*Result) (float64, bool) {
	return func(r *Result) (float64, bool) {
		v, ok := r.Gauges[name]
		return v / (1 << 20), ok
	}
}

// loadRate is objects loaded per second of the run.
func loadRate(r *Result) (float64, bool) {
	n, ok := r.Counters["objects_loaded"]
	if !ok || r.ElapsedSec <= 0 {
		return 0, false
	}
	return float64(n) / r.ElapsedSec, true
}

func totalErrors(r *Result) (float64, bool) {
	var n int64
	for _, s := range r.Series {
		n += s.Errors
	}
	return float64(n), true
}

// MetricsFor returns the table rows of a workload.
func MetricsFor(workload string) []Metric {
	ms := fmtMs
	switch workload {
	case "list":
		return []Metric{
			{Name: "pages/s", HigherBetter: true, Value: primaryThroughput},
			{Name: "p99 ms", Value: seriesP99(""), Fmt: ms},
			{Name: "errors", Value: totalErrors, Fmt: fmtCount},
		}
	case "watch":
		return []Metric{
			{Name: "events/s", HigherBetter: true, Value: primaryThroughput},
			{Name: "delivery p99 ms", Value: seriesP99("delivery"), Fmt: ms},
			{Name: "from-send p99 ms", Value: seriesP99("delivery-from-send"), Fmt: ms},
			{Name: "puts/s", HigherBetter: true, Value: func(r *Result) (float64, bool) {
				s := r.SeriesNamed("put")
				if s == nil || s.Ops == 0 {
					return 0, false
				}
				return s.Throughput, true
			}},
			{Name: "events missing", Value: counterMetric("events_missing"), Fmt: fmtCount},
			{Name: "watchers dropped", Value: counterMetric("watchers_dropped"), Fmt: fmtCount},
			{Name: "errors", Value: totalErrors, Fmt: fmtCount},
		}
	case "memory":
		return []Metric{
			{Name: "load objects/s", HigherBetter: true, Value: loadRate},
			{Name: "RSS MiB", Value: gaugeMiB("rss_bytes")},
			{Name: "data dir MiB", Value: gaugeMiB("data_dir_bytes")},
			{Name: "db size MiB", Value: gaugeMiB("db_size_bytes")},
		}
	case "scale":
		return []Metric{
			{Name: "load objects/s", HigherBetter: true, Value: loadRate},
			{Name: "RSS MiB", Value: gaugeMiB("rss_bytes")},
			{Name: "RSS anon MiB", Value: gaugeMiB("rss_anon_bytes")},
			{Name: "RSS file MiB", Value: gaugeMiB("rss_file_bytes")},
			{Name: "data dir MiB", Value: gaugeMiB("data_dir_bytes")},
			{Name: "restart s", Value: func(r *Result) (float64, bool) {
				v, ok := r.Gauges["restart_s"]
				return v, ok
			}, Fmt: fmtMs},
			{Name: "RSS after restart MiB", Value: gaugeMiB("rss_after_restart_bytes")},
			{Name: "errors", Value: totalErrors, Fmt: fmtCount},
		}
	case "interference":
		return []Metric{
			{Name: "update ops/s", HigherBetter: true, Value: primaryThroughput},
			{Name: "update p99 ms", Value: seriesP99("update"), Fmt: ms},
			{Name: "lists/s", HigherBetter: true, Value: func(r *Result) (float64, bool) {
				s := r.SeriesNamed("list-unpaginated")
				if s == nil || s.Ops == 0 {
					return 0, false
				}
				return s.Throughput, true
			}},
			{Name: "list p99 ms", Value: seriesP99("list-unpaginated"), Fmt: ms},
			{Name: "peak RSS MiB", Value: gaugeMiB("rss_peak_sampled_bytes")},
			{Name: "errors", Value: totalErrors, Fmt: fmtCount},
		}
	}
	return []Metric{
		{Name: "ops/s", HigherBetter: true, Value: primaryThroughput},
		{Name: "p50 ms", Value: func(r *Result) (float64, bool) {
			p := r.Primary()
			if p == nil || p.Ops == 0 {
				return 0, false
			}
			return p.Latency.P50Ms, true
		}, Fmt: ms},
		{Name: "p99 ms", Value: seriesP99(""), Fmt: ms},
		{Name: "errors", Value: totalErrors, Fmt: fmtCount},
	}
}

// ratioColumn is one "a/b" column of the table.
type ratioColumn struct{ num, den string }

func (c *Comparison) ratioColumns() []ratioColumn {
	var out []ratioColumn
	for _, t := range c.Targets {
		if t.Name == c.Ceiling {
			continue
		}
		if c.Baseline != "" && t.Name != c.Baseline {
			out = append(out, ratioColumn{t.Name, c.Baseline})
		}
	}
	for _, t := range c.Targets {
		if c.Ceiling != "" && t.Name != c.Ceiling {
			out = append(out, ratioColumn{t.Name, c.Ceiling})
		}
	}
	return out
}

// TableRow is one rendered row of the comparison table.
type TableRow struct {
	Step, Metric string
	Values       []string  // per target
	Ratios       []string  // per ratio column
	RatioGood    []int     // per ratio column: 1 better, -1 worse, 0 n/a or even
	raw          []float64 // per target, NaN when missing
}

// Table renders the comparison as rows; the header is the step and metric,
// then one column per target, then one per ratio.
func (c *Comparison) Table() (header []string, rows []TableRow) {
	header = []string{"step", "metric"}
	for _, t := range c.Targets {
		header = append(header, t.Name)
	}
	cols := c.ratioColumns()
	for _, rc := range cols {
		header = append(header, rc.num+"/"+rc.den)
	}
	idx := map[string]int{}
	for i, t := range c.Targets {
		idx[t.Name] = i
	}
	for _, st := range c.Steps {
		for _, m := range MetricsFor(st.Workload) {
			row := TableRow{Step: st.Name, Metric: m.Name}
			f := m.Fmt
			if f == nil {
				f = fmtNum
			}
			any := false
			for _, t := range c.Targets {
				r := st.Result(t.Name)
				v, ok := math.NaN(), false
				if r != nil && r.Error == "" {
					v, ok = m.Value(r)
				}
				if !ok {
					v = math.NaN()
					if r != nil && r.Error != "" {
						row.Values = append(row.Values, "FAILED")
					} else {
						row.Values = append(row.Values, "-")
					}
				} else {
					any = true
					row.Values = append(row.Values, f(v))
				}
				row.raw = append(row.raw, v)
			}
			if !any && m.Name == "errors" {
				continue
			}
			if m.Name == "errors" || strings.HasPrefix(m.Name, "events missing") || strings.HasPrefix(m.Name, "watchers dropped") {
				// Counts: ratios say nothing.
				for range cols {
					row.Ratios = append(row.Ratios, "")
					row.RatioGood = append(row.RatioGood, 0)
				}
				rows = append(rows, row)
				continue
			}
			for _, rc := range cols {
				a, b := row.raw[idx[rc.num]], row.raw[idx[rc.den]]
				if math.IsNaN(a) || math.IsNaN(b) || b == 0 {
					row.Ratios = append(row.Ratios, "-")
					row.RatioGood = append(row.RatioGood, 0)
					continue
				}
				q := a / b
				row.Ratios = append(row.Ratios, fmt.Sprintf("%.2fx", q))
				good := 0
				switch {
				case q > 1.02:
					good = 1
				case q < 0.98:
					good = -1
				}
				if !m.HigherBetter {
					good = -good
				}
				row.RatioGood = append(row.RatioGood, good)
			}
			rows = append(rows, row)
		}
	}
	return header, rows
}

// WriteTable prints the comparison table as aligned text.
func (c *Comparison) WriteTable(w io.Writer) {
	header, rows := c.Table()
	cells := [][]string{header}
	for _, r := range rows {
		line := append([]string{r.Step, r.Metric}, r.Values...)
		line = append(line, r.Ratios...)
		cells = append(cells, line)
	}
	widths := make([]int, len(header))
	for _, line := range cells {
		for i, cell := range line {
			widths[i] = max(widths[i], len([]rune(cell)))
		}
	}
	prevStep := ""
	for n, line := range cells {
		if n > 1 && line[0] != prevStep {
			fmt.Fprintln(w)
		}
		step := line[0]
		if n > 0 && step == prevStep {
			line[0] = ""
		}
		prevStep = step
		var b strings.Builder
		for i, cell := range line {
			pad := widths[i] - len([]rune(cell))
			if i < 2 {
				b.WriteString(cell + strings.Repeat(" ", pad))
			} else {
				b.WriteString(strings.Repeat(" ", pad) + cell)
			}
			if i < len(line)-1 {
				b.WriteString("  ")
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
		if n == 0 {
			total := 0
			for _, wd := range widths {
				total += wd + 2
			}
			fmt.Fprintln(w, strings.Repeat("-", total-2))
		}
	}
	if c.Baseline != "" || c.Ceiling != "" {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Ratios are a/b of the row's values: above 1 is better for throughput, below 1 for latency and sizes.")
	}
}
