package benchmark

import (
	"fmt"
	"html/template"
	"io"
	"strings"
	"time"
)

// WriteHTML writes a self-contained HTML report of a comparison: the
// summary table with ratios, then for every step throughput over time,
// p99 over time, latency histograms and latency by percentile (inline SVG,
// no scripts, nothing fetched), and per-target details.
func (c *Comparison) WriteHTML(w io.Writer) error {
	header, rows := c.Table()
	colors := map[string]string{}
	for i, t := range c.Targets {
		colors[t.Name] = palette[i%len(palette)]
	}
	data := htmlData{
		Title:   "Axon benchmark: " + c.Suite,
		Started: c.Started.Format(time.RFC3339),
		Host:    c.Host,
		Targets: c.Targets,
		Header:  header,
		NTarget: len(c.Targets),
	}
	if len(c.Targets) == 1 {
		data.Title = "Axon benchmark"
	}
	for _, r := range rows {
		hr := htmlRow{Step: r.Step, Metric: r.Metric, Values: r.Values}
		for i, q := range r.Ratios {
			cls := ""
			switch r.RatioGood[i] {
			case 1:
				cls = "good"
			case -1:
				cls = "bad"
			}
			hr.Ratios = append(hr.Ratios, htmlCell{q, cls})
		}
		data.Rows = append(data.Rows, hr)
	}
	if c.Baseline != "" || c.Ceiling != "" {
		data.RatioNote = true
	}
	for _, st := range c.Steps {
		hs := htmlStep{Name: st.Name, Workload: st.Workload}
		var ok []*Result
		var cols []string
		for _, r := range st.Results {
			if r.Error != "" {
				hs.Failed = append(hs.Failed, r.Target+": "+r.Error)
				continue
			}
			ok = append(ok, r)
			cols = append(cols, colors[r.Target])
		}
		if len(ok) > 0 {
			if len(ok[0].Params) > 0 {
				var ps []string
				for _, k := range sortedKeys(ok[0].Params) {
					ps = append(ps, k+"="+ok[0].Params[k])
				}
				hs.Params = strings.Join(ps, " ")
			}
			hs.Clients = ok[0].Clients
			hs.Conns = ok[0].Conns
			// Charts per series name, in the order of the first result.
			for _, s := range ok[0].Series {
				name := s.Name
				pick := func(r *Result) *SeriesResult { return r.SeriesNamed(name) }
				unit := "requests/s"
				switch {
				case st.Workload == "list" || strings.HasPrefix(name, "list"):
					unit = "pages/s"
				case strings.HasPrefix(name, "delivery"):
					unit = "events/s"
				}
				anyOps := false
				for _, r := range ok {
					if p := pick(r); p != nil && p.Ops > 0 {
						anyOps = true
					}
				}
				if !anyOps {
					continue
				}
				sub := htmlSeries{Name: name, Charts: []template.HTML{
					template.HTML(throughputChart(name+": throughput", unit, ok, cols, pick)),
					template.HTML(latencyOverTimeChart(name+": p99 per interval", ok, cols, pick)),
					template.HTML(histogramChart(name+": latency histogram", ok, cols, pick)),
					template.HTML(percentileChart(name+": latency by percentile", ok, cols, pick)),
				}}
				hs.Series = append(hs.Series, sub)
			}
		}
		for _, r := range ok {
			d := htmlDetail{Target: r.Target, Color: colors[r.Target], Elapsed: fmt.Sprintf("%.2fs", r.ElapsedSec), Notes: r.Notes}
			for _, s := range r.Series {
				l := s.Latency
				ds := htmlDetailSeries{Name: s.Name, Ops: s.Ops, Errors: s.Errors, Throughput: fmtNum(s.Throughput)}
				if s.Ops > 0 {
					ds.Lat = []string{fmtMs(l.MinMs), fmtMs(l.AvgMs), fmtMs(l.P50Ms), fmtMs(l.P90Ms), fmtMs(l.P99Ms), fmtMs(l.P999Ms), fmtMs(l.MaxMs)}
				}
				for _, code := range sortedKeys(s.ErrorsByCode) {
					ds.ErrorList = append(ds.ErrorList, fmt.Sprintf("%s × %d (%s)", code, s.ErrorsByCode[code], truncate(s.ErrorSamples[code], 120)))
				}
				d.Series = append(d.Series, ds)
			}
			var cs []string
			for _, k := range sortedKeys(r.Counters) {
				cs = append(cs, fmt.Sprintf("%s=%d", k, r.Counters[k]))
			}
			d.Counters = strings.Join(cs, " ")
			var gs []string
			for _, k := range sortedKeys(r.Gauges) {
				gs = append(gs, k+"="+fmtGauge(k, r.Gauges[k]))
			}
			d.Gauges = strings.Join(gs, " ")
			hs.Details = append(hs.Details, d)
		}
		data.Steps = append(data.Steps, hs)
	}
	return reportTmpl.Execute(w, data)
}

// WriteHTML writes a report of a single run.
func (r *Result) WriteHTML(w io.Writer) error {
	name := r.Target
	if name == "" {
		name = strings.Join(r.Endpoints, ",")
		r.Target = name
	}
	c := &Comparison{
		Suite:   r.Label,
		Started: r.Started,
		Host:    hostInfo(),
		Targets: []Target{{Name: name, Endpoints: r.Endpoints}},
		Steps:   []*StepResult{{Name: r.Label, Workload: r.Workload, Results: []*Result{r}}},
	}
	return c.WriteHTML(w)
}

type htmlData struct {
	Title, Started string
	Host           HostInfo
	Targets        []Target
	Header         []string
	NTarget        int
	Rows           []htmlRow
	RatioNote      bool
	Steps          []htmlStep
}

type htmlRow struct {
	Step, Metric string
	Values       []string
	Ratios       []htmlCell
}

type htmlCell struct{ Text, Class string }

type htmlStep struct {
	Name, Workload, Params string
	Clients, Conns         int
	Failed                 []string
	Series                 []htmlSeries
	Details                []htmlDetail
}

type htmlSeries struct {
	Name   string
	Charts []template.HTML
}

type htmlDetail struct {
	Target, Color, Elapsed string
	Series                 []htmlDetailSeries
	Counters, Gauges       string
	Notes                  []string
}

type htmlDetailSeries struct {
	Name       string
	Ops        int64
	Errors     int64
	Throughput string
	Lat        []string
	ErrorList  []string
}

var reportTmpl = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{{.Title}}</title>
<style>
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1500px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 6px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:14px 0 4px}
.meta{color:#666;font-size:13px}
table{border-collapse:collapse;margin:8px 0}
td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:right;font-variant-numeric:tabular-nums}
td.l,th.l{text-align:left}th{background:#f6f6f6}
tr.first td{border-top:2px solid #ccc}
.good{color:#11772b;font-weight:600}.bad{color:#b3261e;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:10px}
.chart{border:1px solid #eee;background:#fff}
.chart text{font:11px system-ui,sans-serif;fill:#333}
.chart .ct{text-anchor:middle;font-size:13px;font-weight:600}
.chart .yt{text-anchor:end}.chart .xt{text-anchor:middle}.chart .al{text-anchor:middle;fill:#666}
.chart .na{text-anchor:middle;fill:#999}
.chart .grid{stroke:#eee}.chart .frame{fill:none;stroke:#bbb}
.swatch{display:inline-block;width:10px;height:10px;margin-right:5px;border-radius:2px}
.fail{color:#b3261e}
.small{font-size:12px;color:#555}
</style></head><body>
<h1>{{.Title}}</h1>
<div class="meta">started {{.Started}} · client host: {{.Host.NumCPU}} CPUs (GOMAXPROCS {{.Host.GOMAXPROCS}}), {{.Host.GoVersion}}, {{.Host.OS}}</div>
<div class="meta">targets: {{range $i, $t := .Targets}}{{if $i}}, {{end}}<b>{{$t.Name}}</b> {{range $t.Endpoints}}{{.}} {{end}}{{end}}</div>

<h2>Summary</h2>
<table>
<tr>{{range $i, $h := .Header}}<th{{if lt $i 2}} class="l"{{end}}>{{$h}}</th>{{end}}</tr>
{{range $i, $r := .Rows}}<tr><td class="l">{{$r.Step}}</td><td class="l">{{$r.Metric}}</td>{{range $r.Values}}<td>{{.}}</td>{{end}}{{range $r.Ratios}}<td class="{{.Class}}">{{.Text}}</td>{{end}}</tr>
{{end}}</table>
{{if .RatioNote}}<div class="small">Ratios are a/b of each row's values: above 1 is better for throughput, below 1 for latency and sizes. Green: better by more than 2%; red: worse.</div>{{end}}

{{range .Steps}}
<h2 id="{{.Name}}">{{.Name}} <span class="meta">({{.Workload}}, {{.Clients}} clients, {{.Conns}} conns)</span></h2>
{{if .Params}}<div class="small">{{.Params}}</div>{{end}}
{{range .Failed}}<div class="fail">failed: {{.}}</div>{{end}}
{{range .Series}}<h3>{{.Name}}</h3><div class="charts">{{range .Charts}}{{.}}{{end}}</div>{{end}}
<table>
<tr><th class="l">target</th><th class="l">series</th><th>ok</th><th>errors</th><th>per second</th><th>min ms</th><th>avg</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th class="l">errors by code</th></tr>
{{range .Details}}{{$d := .}}{{range $i, $s := .Series}}<tr{{if eq $i 0}} class="first"{{end}}><td class="l">{{if eq $i 0}}<span class="swatch" style="background:{{$d.Color}}"></span>{{$d.Target}}{{end}}</td><td class="l">{{$s.Name}}</td><td>{{$s.Ops}}</td><td>{{$s.Errors}}</td><td>{{$s.Throughput}}</td>{{if $s.Lat}}{{range $s.Lat}}<td>{{.}}</td>{{end}}{{else}}<td colspan="7"></td>{{end}}<td class="l small">{{range $s.ErrorList}}{{.}}<br>{{end}}</td></tr>
{{end}}{{if or .Counters .Gauges .Notes}}<tr><td></td><td class="l small" colspan="12">{{.Counters}} {{.Gauges}}{{range .Notes}}<br>note: {{.}}{{end}}</td></tr>{{end}}
{{end}}</table>
{{end}}
</body></html>
`))
