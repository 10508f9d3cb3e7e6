package benchmark

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
	"time"
)

// Result is the outcome of one Run. Latencies are in milliseconds.
type Result struct {
	Label      string            `json:"label"`
	Workload   string            `json:"workload"`
	Target     string            `json:"target,omitempty"`
	Endpoints  []string          `json:"endpoints"`
	Clients    int               `json:"clients"`
	Conns      int               `json:"conns"`
	Started    time.Time         `json:"started"`
	ElapsedSec float64           `json:"elapsed_s"`
	Params     map[string]string `json:"params,omitempty"`
	// Series holds one entry per kind of request; the first is the primary
	// one (e.g. watch: delivery, then delivery-from-send, then put).
	Series   []*SeriesResult    `json:"series"`
	Counters map[string]int64   `json:"counters,omitempty"`
	Gauges   map[string]float64 `json:"gauges,omitempty"`
	Notes    []string           `json:"notes,omitempty"`
	// Error is set (by compare) when the run could not take place.
	Error string `json:"error,omitempty"`
}

// SeriesResult summarizes one kind of request.
type SeriesResult struct {
	Name string `json:"name"`
	// Ops counts successful requests, Errors failed ones.
	Ops          int64             `json:"ops"`
	Errors       int64             `json:"errors"`
	ErrorsByCode map[string]int64  `json:"errors_by_code,omitempty"`
	ErrorSamples map[string]string `json:"error_samples,omitempty"`
	// Throughput is successful requests per second of the measured phase.
	Throughput float64      `json:"throughput"`
	Latency    Latency      `json:"latency_ms"`
	Histogram  []HistBucket `json:"histogram,omitempty"`
	// Percentiles is the latency-by-percentile curve (HdrHistogram's
	// percentile distribution), for plotting.
	Percentiles []PercentilePoint `json:"percentiles,omitempty"`
	Timeline    []TimePoint       `json:"timeline,omitempty"`

	snap *HistSnapshot
}

// Latency is a latency summary in milliseconds.
type Latency struct {
	MinMs  float64 `json:"min"`
	AvgMs  float64 `json:"avg"`
	P50Ms  float64 `json:"p50"`
	P90Ms  float64 `json:"p90"`
	P99Ms  float64 `json:"p99"`
	P999Ms float64 `json:"p99.9"`
	MaxMs  float64 `json:"max"`
}

// PercentilePoint is the latency at percentile Q (0..1).
type PercentilePoint struct {
	Q  float64 `json:"q"`
	Ms float64 `json:"ms"`
}

// percentileCurve samples s at percentiles evenly spaced on the
// log10(1/(1-q)) scale, up to where single requests are resolved.
func percentileCurve(s *HistSnapshot) []PercentilePoint {
	if s.Total == 0 {
		return nil
	}
	limit := math.Log10(float64(s.Total))
	var out []PercentilePoint
	for x := 0.0; x <= limit+1e-9; x += 0.05 {
		q := 1 - math.Pow(10, -x)
		out = append(out, PercentilePoint{Q: q, Ms: nsToMs(s.Percentile(q))})
	}
	return append(out, PercentilePoint{Q: 1, Ms: nsToMs(s.Max)})
}

// TimePoint is one timeline sample: rates and latency over the interval
// ending T seconds after the start.
type TimePoint struct {
	T         float64 `json:"t"`
	OpsPerSec float64 `json:"ops_per_s"`
	ErrPerSec float64 `json:"errors_per_s"`
	P50Ms     float64 `json:"p50_ms"`
	P99Ms     float64 `json:"p99_ms"`
}

// Primary is the first series, or nil.
func (r *Result) Primary() *SeriesResult {
	if r == nil || len(r.Series) == 0 {
		return nil
	}
	return r.Series[0]
}

// SeriesNamed finds a series by name.
func (r *Result) SeriesNamed(name string) *SeriesResult {
	if r == nil {
		return nil
	}
	for _, s := range r.Series {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// Percentile is the q-quantile (0..1) of s's latency in ms, from the full
// histogram when the series came from this process (not from JSON).
func (s *SeriesResult) Percentile(q float64) (float64, bool) {
	if s.snap == nil {
		return 0, false
	}
	return nsToMs(s.snap.Percentile(q)), true
}

// WriteJSON writes v as indented JSON.
func WriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// WriteText writes a human-readable summary of r.
func (r *Result) WriteText(w io.Writer) {
	title := r.Label
	if r.Target != "" {
		title += " @ " + r.Target
	}
	fmt.Fprintf(w, "\n== %s: %s, %d clients over %d conns, %.2fs\n", title, strings.Join(r.Endpoints, ","), r.Clients, r.Conns, r.ElapsedSec)
	if r.Error != "" {
		fmt.Fprintf(w, "   FAILED: %s\n", r.Error)
		return
	}
	if len(r.Params) > 0 {
		var ps []string
		for _, k := range sortedKeys(r.Params) {
			ps = append(ps, k+"="+r.Params[k])
		}
		fmt.Fprintf(w, "   params: %s\n", strings.Join(ps, " "))
	}
	for _, s := range r.Series {
		fmt.Fprintf(w, "   %-20s %10d ok %8d err %12s/s\n", s.Name, s.Ops, s.Errors, fmtNum(s.Throughput))
		if s.Ops > 0 {
			l := s.Latency
			fmt.Fprintf(w, "   %-20s min %s  avg %s  p50 %s  p90 %s  p99 %s  p99.9 %s  max %s\n", "  latency (ms)",
				fmtMs(l.MinMs), fmtMs(l.AvgMs), fmtMs(l.P50Ms), fmtMs(l.P90Ms), fmtMs(l.P99Ms), fmtMs(l.P999Ms), fmtMs(l.MaxMs))
		}
		for _, code := range sortedKeys(s.ErrorsByCode) {
			fmt.Fprintf(w, "   %-20s %s: %d (e.g. %s)\n", "  errors", code, s.ErrorsByCode[code], truncate(s.ErrorSamples[code], 100))
		}
	}
	if len(r.Counters) > 0 {
		var cs []string
		for _, k := range sortedKeys(r.Counters) {
			cs = append(cs, fmt.Sprintf("%s=%d", k, r.Counters[k]))
		}
		fmt.Fprintf(w, "   counters: %s\n", strings.Join(cs, " "))
	}
	if len(r.Gauges) > 0 {
		var gs []string
		for _, k := range sortedKeys(r.Gauges) {
			gs = append(gs, k+"="+fmtGauge(k, r.Gauges[k]))
		}
		fmt.Fprintf(w, "   measured: %s\n", strings.Join(gs, " "))
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "   note: %s\n", n)
	}
}

func fmtGauge(name string, v float64) string {
	if strings.HasSuffix(name, "_bytes") {
		return fmt.Sprintf("%.1fMiB", v/(1<<20))
	}
	if strings.HasSuffix(name, "_s") {
		return fmtMs(v) + "s"
	}
	return fmtNum(v)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// fmtNum formats v with thousands separators and one decimal below 100.
func fmtNum(v float64) string {
	if v != v { // NaN
		return "-"
	}
	if v < 100 && v > -100 {
		return fmt.Sprintf("%.1f", v)
	}
	neg := v < 0
	if neg {
		v = -v
	}
	s := fmt.Sprintf("%.0f", v)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// fmtCount formats a count: no decimals, thousands separators.
func fmtCount(v float64) string {
	if v > -100 && v < 100 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmtNum(v)
}

// fmtMs formats a millisecond latency with three significant figures.
func fmtMs(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	case v >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}
