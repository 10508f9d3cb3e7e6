package benchmark

import (
	"fmt"
	"html"
	"math"
	"strings"
)

// A small SVG line-chart renderer for the self-contained HTML report: no
// scripts, no external resources.

type chartLine struct {
	Name  string
	Color string
	X, Y  []float64
}

type chartTick struct {
	At    float64
	Label string
}

type chart struct {
	Title, XLabel, YLabel string
	Lines                 []chartLine
	// XTicks, when set, replaces the automatic linear ticks.
	XTicks []chartTick
	// YFmt formats y tick labels (default fmtTick).
	YFmt func(float64) string
	// LogY plots y on a log10 scale (values must be positive).
	LogY bool
}

const (
	chartW, chartH                       = 480, 270
	padLeft, padRight, padTop, padBottom = 62, 26, 28, 42
)

var palette = []string{"#1f77b4", "#d62728", "#7f7f7f", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2"}

// niceStep is a 1/2/5×10^k step giving about n intervals over span.
func niceStep(span float64, n int) float64 {
	if span <= 0 {
		return 1
	}
	raw := span / float64(n)
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if raw <= m*mag {
			return m * mag
		}
	}
	return 10 * mag
}

func fmtTick(v float64) string {
	av := math.Abs(v)
	switch {
	case av >= 1e6:
		return trimZeros(fmt.Sprintf("%.1f", v/1e6)) + "M"
	case av >= 1e4:
		return trimZeros(fmt.Sprintf("%.1f", v/1e3)) + "k"
	case av >= 10 || av == 0:
		return fmt.Sprintf("%.0f", v)
	case av >= 1:
		return trimZeros(fmt.Sprintf("%.1f", v))
	default:
		return trimZeros(fmt.Sprintf("%.3f", v))
	}
}

func trimZeros(s string) string {
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}

// fmtMsTick labels a latency in ms with a unit that suits it.
func fmtMsTick(ms float64) string {
	switch {
	case ms == 0:
		return "0"
	case ms >= 1000:
		return trimZeros(fmt.Sprintf("%.1f", ms/1000)) + "s"
	case ms >= 1:
		return trimZeros(fmt.Sprintf("%.1f", ms)) + "ms"
	default:
		return trimZeros(fmt.Sprintf("%.1f", ms*1000)) + "µs"
	}
}

func (c chart) svg() string {
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" class="chart" role="img">`, chartW, chartH, chartW, chartH)
	fmt.Fprintf(&b, `<text x="%d" y="16" class="ct">%s</text>`, chartW/2, html.EscapeString(c.Title))

	xmin, xmax := math.Inf(1), math.Inf(-1)
	ymin, ymax := math.Inf(1), math.Inf(-1)
	points := 0
	for _, l := range c.Lines {
		for i := range l.X {
			if math.IsNaN(l.Y[i]) || math.IsInf(l.Y[i], 0) || (c.LogY && l.Y[i] <= 0) {
				continue
			}
			xmin, xmax = math.Min(xmin, l.X[i]), math.Max(xmax, l.X[i])
			ymin, ymax = math.Min(ymin, l.Y[i]), math.Max(ymax, l.Y[i])
			points++
		}
	}
	for _, t := range c.XTicks {
		xmin, xmax = math.Min(xmin, t.At), math.Max(xmax, t.At)
	}
	pw, ph := float64(chartW-padLeft-padRight), float64(chartH-padTop-padBottom)
	if points == 0 {
		fmt.Fprintf(&b, `<text x="%d" y="%d" class="na">no data</text></svg>`, chartW/2, chartH/2)
		return b.String()
	}
	if xmax <= xmin {
		xmax = xmin + 1
	}
	yfmt := c.YFmt
	if yfmt == nil {
		yfmt = fmtTick
	}
	var yticks []chartTick
	var ty func(float64) float64
	if c.LogY {
		lo, hi := math.Floor(math.Log10(ymin)), math.Ceil(math.Log10(ymax))
		if hi <= lo {
			hi = lo + 1
		}
		for e := lo; e <= hi; e++ {
			yticks = append(yticks, chartTick{e, yfmt(math.Pow(10, e))})
		}
		ty = func(y float64) float64 { return float64(padTop) + ph*(1-(math.Log10(y)-lo)/(hi-lo)) }
	} else {
		ymin = math.Min(ymin, 0)
		if ymax <= ymin {
			ymax = ymin + 1
		}
		step := niceStep(ymax-ymin, 5)
		top := math.Ceil(ymax/step) * step
		for v := 0.0; v <= top+step/2; v += step {
			yticks = append(yticks, chartTick{v, yfmt(v)})
		}
		ymax = top
		ty = func(y float64) float64 { return float64(padTop) + ph*(1-(y-ymin)/(ymax-ymin)) }
	}
	tx := func(x float64) float64 { return float64(padLeft) + pw*(x-xmin)/(xmax-xmin) }

	// Grid and axes.
	for _, t := range yticks {
		y := t.At
		if c.LogY {
			y = math.Pow(10, t.At)
		}
		py := ty(y)
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" class="grid"/>`, padLeft, py, chartW-padRight, py)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" class="yt">%s</text>`, padLeft-5, py+4, html.EscapeString(t.Label))
	}
	xticks := c.XTicks
	if xticks == nil {
		step := niceStep(xmax-xmin, 6)
		for v := math.Ceil(xmin/step) * step; v <= xmax+step/1e6; v += step {
			xticks = append(xticks, chartTick{v, fmtTick(v)})
		}
	}
	for _, t := range xticks {
		px := tx(t.At)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" class="grid"/>`, px, padTop, px, chartH-padBottom)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" class="xt">%s</text>`, px, chartH-padBottom+14, html.EscapeString(t.Label))
	}
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.0f" height="%.0f" class="frame"/>`, padLeft, padTop, pw, ph)
	fmt.Fprintf(&b, `<text x="%.0f" y="%d" class="al">%s</text>`, float64(padLeft)+pw/2, chartH-6, html.EscapeString(c.XLabel))
	fmt.Fprintf(&b, `<text x="14" y="%.0f" class="al" transform="rotate(-90 14 %.0f)">%s</text>`, float64(padTop)+ph/2, float64(padTop)+ph/2, html.EscapeString(c.YLabel))

	// Lines (those with no points get no legend either).
	legend := 0
	for i, l := range c.Lines {
		color := l.Color
		if color == "" {
			color = palette[i%len(palette)]
		}
		var pts []string
		for j := range l.X {
			y := l.Y[j]
			if math.IsNaN(y) || math.IsInf(y, 0) || (c.LogY && y <= 0) {
				continue
			}
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", tx(l.X[j]), ty(y)))
		}
		if len(pts) == 0 {
			continue
		}
		if len(pts) == 1 {
			fmt.Fprintf(&b, `<circle cx="%s" r="3" fill="%s"/>`, strings.Replace(pts[0], ",", `" cy="`, 1), color)
		}
		if len(pts) > 1 {
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.8" points="%s"/>`, color, strings.Join(pts, " "))
		}
		// Legend.
		ly := padTop + 12 + 14*legend
		legend++
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="3"/>`, chartW-padRight-90, ly-4, chartW-padRight-76, ly-4, color)
		fmt.Fprintf(&b, `<text x="%d" y="%d" class="lg">%s</text>`, chartW-padRight-72, ly, html.EscapeString(l.Name))
	}
	b.WriteString(`</svg>`)
	return b.String()
}

// throughputChart plots one series' throughput over time for each result.
func throughputChart(title, unit string, results []*Result, colors []string, pick func(*Result) *SeriesResult) string {
	c := chart{Title: title, XLabel: "seconds since start", YLabel: unit}
	for i, r := range results {
		s := pick(r)
		if s == nil || s.Ops == 0 {
			continue
		}
		l := chartLine{Name: r.Target, Color: colors[i]}
		if l.Name == "" {
			l.Name = s.Name
		}
		for _, p := range s.Timeline {
			l.X = append(l.X, p.T)
			l.Y = append(l.Y, p.OpsPerSec)
		}
		c.Lines = append(c.Lines, l)
	}
	return c.svg()
}

// latencyOverTimeChart plots one series' interval p99 over time.
func latencyOverTimeChart(title string, results []*Result, colors []string, pick func(*Result) *SeriesResult) string {
	c := chart{Title: title, XLabel: "seconds since start", YLabel: "p99 latency", YFmt: fmtMsTick}
	for i, r := range results {
		s := pick(r)
		if s == nil {
			continue
		}
		l := chartLine{Name: r.Target, Color: colors[i]}
		for _, p := range s.Timeline {
			if p.OpsPerSec == 0 {
				continue
			}
			l.X = append(l.X, p.T)
			l.Y = append(l.Y, p.P99Ms)
		}
		c.Lines = append(c.Lines, l)
	}
	return c.svg()
}

// histogramChart plots the share of requests per latency bucket on a log
// latency axis.
func histogramChart(title string, results []*Result, colors []string, pick func(*Result) *SeriesResult) string {
	c := chart{Title: title, XLabel: "latency (log scale)", YLabel: "% of requests", YFmt: func(v float64) string { return fmtTick(v) + "%" }}
	lo, hi := math.Inf(1), math.Inf(-1)
	for i, r := range results {
		s := pick(r)
		if s == nil || s.Ops == 0 {
			continue
		}
		l := chartLine{Name: r.Target, Color: colors[i]}
		for _, hb := range s.Histogram {
			x := math.Log10(hb.UpperMs)
			l.X = append(l.X, x)
			l.Y = append(l.Y, 100*float64(hb.Count)/float64(s.Ops))
			lo, hi = math.Min(lo, x), math.Max(hi, x)
		}
		c.Lines = append(c.Lines, l)
	}
	if len(c.Lines) > 0 {
		for e := math.Floor(lo); e <= math.Ceil(hi); e++ {
			c.XTicks = append(c.XTicks, chartTick{e, fmtMsTick(math.Pow(10, e))})
		}
	}
	return c.svg()
}

// percentileChart is HdrHistogram's latency-by-percentile plot.
func percentileChart(title string, results []*Result, colors []string, pick func(*Result) *SeriesResult) string {
	c := chart{Title: title, XLabel: "percentile", YLabel: "latency (log scale)", LogY: true, YFmt: fmtMsTick}
	maxX := 0.0
	for i, r := range results {
		s := pick(r)
		if s == nil || s.Ops == 0 {
			continue
		}
		l := chartLine{Name: r.Target, Color: colors[i]}
		for _, p := range s.Percentiles {
			if p.Q >= 1 {
				continue
			}
			x := -math.Log10(1 - p.Q)
			l.X = append(l.X, x)
			l.Y = append(l.Y, math.Max(p.Ms, 0.001))
			maxX = math.Max(maxX, x)
		}
		c.Lines = append(c.Lines, l)
	}
	labels := []string{"0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"}
	for k := 0; k < len(labels) && float64(k) <= maxX+0.01; k++ {
		c.XTicks = append(c.XTicks, chartTick{float64(k), labels[k]})
	}
	return c.svg()
}
