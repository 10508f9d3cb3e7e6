package benchmark

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Target is one server to compare: a name, its endpoints and, optionally,
// its process id and data directory for the memory step.
type Target struct {
	Name      string   `json:"name"`
	Endpoints []string `json:"endpoints"`
	Pid       int      `json:"pid,omitempty"`
	DataDir   string   `json:"data_dir,omitempty"`
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
	return o
}

// Suites lists the suite names Suite accepts.
var Suites = []string{"standard", "full", "quick"}

// Suite returns the steps of a named suite:
//
//	standard  create and update at 300 clients, get (linearizable and
//	          serializable) at 100, list of ListObjects with limit 500 at 8,
//	          watch (Watchers on WatchPrefixes, 10 writers), memory
//	full      standard plus mixed, lease and interference (update p99 at 100
//	          clients while 4 clients LIST InterferenceObjects unpaginated)
//	quick     standard at a tenth of the sizes, for trying things out
func Suite(name string, o SuiteOptions) ([]Step, error) {
	o = o.withDefaults()
	if name == "quick" {
		o.Duration = max(o.Duration/5, time.Second)
		o.MemoryObjects = max(o.MemoryObjects/10, 1000)
		o.ListObjects = max(o.ListObjects/10, 1000)
		o.Watchers = max(o.Watchers/10, 100)
		o.WatchPrefixes = max(o.WatchPrefixes/10, 10)
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
		{Name: "list", Workload: "list", Apply: timed(8, func(c *Config) {
			c.Objects = o.ListObjects
			c.PageLimit = 500
		})},
		{Name: "watch", Workload: "watch", Apply: timed(10, func(c *Config) {
			c.Watchers = o.Watchers
			c.WatchPrefixes = o.WatchPrefixes
			c.Rate = o.WatchRate
		})},
	}
	switch name {
	case "standard", "quick":
	case "full":
		steps = append(steps,
			Step{Name: "mixed", Workload: "mixed", Apply: timed(100, nil)},
			Step{Name: "lease", Workload: "lease", Apply: timed(50, nil)},
			Step{Name: "interference", Workload: "interference", Apply: timed(104, func(c *Config) {
				c.Objects = o.InterferenceObjects
			})},
		)
	default:
		return nil, fmt.Errorf("unknown suite %q (one of %s)", name, strings.Join(Suites, ", "))
	}
	steps = append(steps, Step{Name: "memory", Workload: "memory", Apply: func(c *Config) {
		c.Clients = 16
		c.Objects = o.MemoryObjects
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
}

// Compare runs every step on every target in turn (step by step, so that
// all targets see the machine in the same state) and returns the results.
func Compare(ctx context.Context, o CompareOptions) (*Comparison, error) {
	if len(o.Targets) == 0 {
		return nil, fmt.Errorf("no targets")
	}
	seen := map[string]bool{}
	for _, t := range o.Targets {
		if seen[t.Name] {
			return nil, fmt.Errorf("target %q given twice", t.Name)
		}
		seen[t.Name] = true
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
	cmp := &Comparison{Suite: o.Suite, Started: time.Now(), Host: hostInfo(), Targets: o.Targets, Baseline: o.Baseline, Ceiling: o.Ceiling}

	for _, t := range o.Targets {
		cfg := o.Base
		cfg.Endpoints = t.Endpoints
		cfg.Conns = 1
		cfg = cfg.withDefaults()
		clients, err := Connect(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("target %s: %w", t.Name, err)
		}
		err = WaitReady(ctx, clients[0], t.Endpoints, o.ReadyTimeout)
		_ = clients[0].Close()
		if err != nil {
			return nil, fmt.Errorf("target %s: %w", t.Name, err)
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
			res, err := Run(ctx, st.Workload, cfg)
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
			{Name: "load objects/s", HigherBetter: true, Value: func(r *Result) (float64, bool) {
				n, ok := r.Counters["objects_loaded"]
				if !ok || r.ElapsedSec <= 0 {
					return 0, false
				}
				return float64(n) / r.ElapsedSec, true
			}},
			{Name: "RSS MiB", Value: gaugeMiB("rss_bytes")},
			{Name: "data dir MiB", Value: gaugeMiB("data_dir_bytes")},
			{Name: "db size MiB", Value: gaugeMiB("db_size_bytes")},
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
