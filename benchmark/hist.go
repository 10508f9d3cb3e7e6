package benchmark

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// Histogram records latencies with a bounded relative error, in the manner
// of HdrHistogram: a value falls into a power-of-two magnitude and, within
// it, into one of histSubHalf linear sub-buckets, so every recorded value is
// known to within 1/1024 (0.1%) of itself, or to within one unit
// (1.024 µs) for values under ~2 ms. Values up to ~19 hours are tracked;
// larger ones are clamped.
//
// Record is lock-free (a few atomic adds), so one Histogram is shared by
// every worker of a run, and a sampler can take Snapshots while they record.
// The zero value is not usable: call NewHistogram.
type Histogram struct {
	counts []atomic.Int64
	total  atomic.Int64
	sum    atomic.Int64 // nanoseconds
	min    atomic.Int64 // nanoseconds
	max    atomic.Int64 // nanoseconds
}

const (
	histUnitShift = 10 // one unit is 1024 ns
	histSubBits   = 11
	histSubCount  = 1 << histSubBits // exact buckets below this many units
	histSubHalf   = histSubCount / 2 // linear sub-buckets per magnitude above
	histMaxBits   = 36               // units up to 2^36 (≈ 19.5 h)
	histMaxExp    = histMaxBits - histSubBits
	histBuckets   = histSubCount + histMaxExp*histSubHalf
	histMaxUnits  = int64(1)<<histMaxBits - 1
)

// NewHistogram returns an empty histogram.
func NewHistogram() *Histogram {
	h := &Histogram{counts: make([]atomic.Int64, histBuckets)}
	h.min.Store(math.MaxInt64)
	return h
}

// histIndex is the bucket of a value in units.
func histIndex(u int64) int {
	if u < histSubCount {
		return int(u)
	}
	if u > histMaxUnits {
		u = histMaxUnits
	}
	e := bits.Len64(uint64(u)) - histSubBits // >= 1
	return histSubCount + (e-1)*histSubHalf + int(u>>uint(e)) - histSubHalf
}

// histUpperNanos is the highest nanosecond value that lands in bucket i.
func histUpperNanos(i int) int64 {
	var hiUnits int64
	if i < histSubCount {
		hiUnits = int64(i)
	} else {
		j := i - histSubCount
		e := j/histSubHalf + 1
		sub := int64(j%histSubHalf + histSubHalf)
		hiUnits = (sub+1)<<uint(e) - 1
	}
	return (hiUnits+1)<<histUnitShift - 1
}

// Record adds one latency.
func (h *Histogram) Record(d time.Duration) {
	v := int64(d)
	if v < 0 {
		v = 0
	}
	h.counts[histIndex(v>>histUnitShift)].Add(1)
	h.total.Add(1)
	h.sum.Add(v)
	for {
		m := h.min.Load()
		if v >= m || h.min.CompareAndSwap(m, v) {
			break
		}
	}
	for {
		m := h.max.Load()
		if v <= m || h.max.CompareAndSwap(m, v) {
			break
		}
	}
}

// Count is the number of recorded values.
func (h *Histogram) Count() int64 { return h.total.Load() }

// Snapshot copies the current state. It is consistent enough for progress
// and timelines while workers record; after they stop it is exact.
func (h *Histogram) Snapshot() *HistSnapshot {
	s := &HistSnapshot{Counts: make([]int64, histBuckets)}
	for i := range h.counts {
		s.Counts[i] = h.counts[i].Load()
	}
	s.Total = h.total.Load()
	s.Sum = h.sum.Load()
	s.Min = h.min.Load()
	s.Max = h.max.Load()
	if s.Total == 0 {
		s.Min, s.Max = 0, 0
	}
	return s
}

// HistSnapshot is a plain copy of a Histogram. Durations are nanoseconds.
type HistSnapshot struct {
	Counts   []int64
	Total    int64
	Sum      int64
	Min, Max int64
}

// Sub returns the values recorded since prev (an earlier snapshot of the
// same histogram). Min and Max of the difference are bucket bounds.
func (s *HistSnapshot) Sub(prev *HistSnapshot) *HistSnapshot {
	d := &HistSnapshot{Counts: make([]int64, len(s.Counts))}
	first, last := -1, -1
	for i := range s.Counts {
		c := s.Counts[i]
		if prev != nil {
			c -= prev.Counts[i]
		}
		d.Counts[i] = c
		if c > 0 {
			if first < 0 {
				first = i
			}
			last = i
		}
	}
	d.Total, d.Sum = s.Total, s.Sum
	if prev != nil {
		d.Total -= prev.Total
		d.Sum -= prev.Sum
	}
	if first >= 0 {
		d.Min = histUpperNanos(first)
		d.Max = histUpperNanos(last)
		if first > 0 {
			d.Min = histUpperNanos(first-1) + 1
		}
	}
	return d
}

// Merge adds o's values into s.
func (s *HistSnapshot) Merge(o *HistSnapshot) {
	if o.Total == 0 {
		return
	}
	for i := range o.Counts {
		s.Counts[i] += o.Counts[i]
	}
	if s.Total == 0 || o.Min < s.Min {
		s.Min = o.Min
	}
	if o.Max > s.Max {
		s.Max = o.Max
	}
	s.Total += o.Total
	s.Sum += o.Sum
}

// Mean is the exact average in nanoseconds.
func (s *HistSnapshot) Mean() float64 {
	if s.Total == 0 {
		return 0
	}
	return float64(s.Sum) / float64(s.Total)
}

// Percentile is the value (ns) at or below which a fraction q (0..1) of the
// values lie, as the upper bound of its bucket clamped to [Min, Max].
func (s *HistSnapshot) Percentile(q float64) int64 {
	if s.Total == 0 {
		return 0
	}
	if q <= 0 {
		return s.Min
	}
	if q >= 1 {
		return s.Max
	}
	rank := int64(math.Ceil(q * float64(s.Total)))
	if rank < 1 {
		rank = 1
	}
	var seen int64
	for i, c := range s.Counts {
		seen += c
		if seen >= rank {
			v := histUpperNanos(i)
			if v > s.Max {
				v = s.Max
			}
			if v < s.Min {
				v = s.Min
			}
			return v
		}
	}
	return s.Max
}

// HistBucket is one bar of a coarse latency histogram: Count values at or
// below UpperMs and above the previous bucket's bound.
type HistBucket struct {
	UpperMs float64 `json:"upper_ms"`
	Count   int64   `json:"count"`
}

// Coarse folds the snapshot into log-spaced buckets, perDecade per factor
// of ten from 1 µs up, dropping empty leading and trailing buckets.
func (s *HistSnapshot) Coarse(perDecade int) []HistBucket {
	if s.Total == 0 {
		return nil
	}
	var out []HistBucket
	step := math.Pow(10, 1/float64(perDecade))
	bound := 1000.0 // ns
	cur := HistBucket{UpperMs: bound / 1e6}
	for i, c := range s.Counts {
		if c == 0 {
			continue
		}
		v := float64(histUpperNanos(i))
		if i == 0 {
			v = 0
		}
		for v > bound {
			out = append(out, cur)
			bound *= step
			cur = HistBucket{UpperMs: bound / 1e6}
		}
		cur.Count += c
	}
	out = append(out, cur)
	// Trim empty leading buckets.
	for len(out) > 1 && out[0].Count == 0 {
		out = out[1:]
	}
	return out
}
