package benchmark

import (
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"
	"time"
)

func TestHistIndexBounds(t *testing.T) {
	// Every bucket's upper bound maps back to that bucket, and the next
	// nanosecond to the next bucket.
	for i := 0; i < histBuckets-1; i++ {
		up := histUpperNanos(i)
		if got := histIndex(up >> histUnitShift); got != i {
			t.Fatalf("bucket %d: upper %d maps to %d", i, up, got)
		}
		if got := histIndex((up + 1) >> histUnitShift); got != i+1 {
			t.Fatalf("bucket %d: upper+1 %d maps to %d", i, up+1, got)
		}
	}
	// Relative error of the reported value stays within 1/1024 (plus one
	// unit for small values).
	rnd := rand.New(rand.NewPCG(1, 2))
	for n := 0; n < 100000; n++ {
		v := int64(rnd.ExpFloat64() * 5e7)
		up := histUpperNanos(histIndex(v >> histUnitShift))
		if up < v {
			t.Fatalf("value %d above its bucket bound %d", v, up)
		}
		if err := float64(up-v) / float64(v+1); err > 1.0/1024 && up-v > 2<<histUnitShift {
			t.Fatalf("value %d reported as %d: error %.5f", v, up, err)
		}
	}
	// Huge values are clamped, not lost.
	h := NewHistogram()
	h.Record(1000 * time.Hour)
	if s := h.Snapshot(); s.Total != 1 || s.Counts[histBuckets-1] != 1 {
		t.Fatalf("clamped value not counted in the last bucket")
	}
}

func TestHistogramPercentiles(t *testing.T) {
	h := NewHistogram()
	var vals []int64
	rnd := rand.New(rand.NewPCG(3, 4))
	var sum int64
	for i := 0; i < 50000; i++ {
		v := int64(50_000 + rnd.IntN(20_000_000)) // 50 µs .. 20 ms
		vals = append(vals, v)
		sum += v
		h.Record(time.Duration(v))
	}
	sort.Slice(vals, func(i, j int) bool { return vals[i] < vals[j] })
	s := h.Snapshot()
	if s.Total != int64(len(vals)) || s.Sum != sum {
		t.Fatalf("total %d sum %d, want %d %d", s.Total, s.Sum, len(vals), sum)
	}
	if s.Min != vals[0] || s.Max != vals[len(vals)-1] {
		t.Fatalf("min/max %d/%d, want %d/%d", s.Min, s.Max, vals[0], vals[len(vals)-1])
	}
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		exact := vals[int(math.Ceil(q*float64(len(vals))))-1]
		got := s.Percentile(q)
		if got < exact || float64(got-exact) > float64(exact)/1024+1024 {
			t.Errorf("p%v = %d, exact %d", q*100, got, exact)
		}
	}
	if s.Percentile(0) != s.Min || s.Percentile(1) != s.Max {
		t.Errorf("p0/p100 not min/max")
	}
	var coarse int64
	for _, b := range s.Coarse(10) {
		coarse += b.Count
	}
	if coarse != s.Total {
		t.Errorf("coarse buckets hold %d, want %d", coarse, s.Total)
	}
	pc := percentileCurve(s)
	for i := 1; i < len(pc); i++ {
		if pc[i].Ms < pc[i-1].Ms || pc[i].Q < pc[i-1].Q {
			t.Fatalf("percentile curve not monotonic at %d: %+v %+v", i, pc[i-1], pc[i])
		}
	}
}

func TestHistogramSubMerge(t *testing.T) {
	h := NewHistogram()
	for i := 1; i <= 100; i++ {
		h.Record(time.Duration(i) * time.Millisecond)
	}
	a := h.Snapshot()
	for i := 1; i <= 50; i++ {
		h.Record(time.Second)
	}
	b := h.Snapshot()
	d := b.Sub(a)
	if d.Total != 50 || d.Sum != 50*int64(time.Second) {
		t.Fatalf("diff total %d sum %d", d.Total, d.Sum)
	}
	if p := d.Percentile(0.5); p < int64(time.Second) || p > int64(time.Second)+int64(time.Second)/1000 {
		t.Fatalf("diff p50 %d", p)
	}
	m := &HistSnapshot{Counts: make([]int64, histBuckets)}
	m.Merge(a)
	m.Merge(d)
	// A difference knows its extremes only to bucket precision.
	if m.Total != b.Total || m.Sum != b.Sum || m.Min != b.Min || m.Max < b.Max || m.Max > b.Max+b.Max/1024 {
		t.Fatalf("merge %+v != %+v", [4]int64{m.Total, m.Sum, m.Min, m.Max}, [4]int64{b.Total, b.Sum, b.Min, b.Max})
	}
	empty := NewHistogram().Snapshot()
	if empty.Percentile(0.99) != 0 || empty.Mean() != 0 || empty.Coarse(10) != nil {
		t.Fatal("empty histogram not zero")
	}
}

func TestKeyGen(t *testing.T) {
	kg := NewKeyGen("pods", "abc123", 100, 70)
	seen := map[string]bool{}
	for _, i := range []int{0, 1, 99, 100, 12345, 1 << 30} {
		k := kg.Key(i)
		if len(k) != 70 {
			t.Errorf("key %q has %d bytes, want 70", k, len(k))
		}
		if !strings.HasPrefix(k, kg.NamespacePrefix(i%100)) || !strings.HasPrefix(k, "/registry/pods-abc123/ns-") {
			t.Errorf("key %q not under its namespace %q", k, kg.NamespacePrefix(i%100))
		}
		if seen[k] {
			t.Errorf("duplicate key %q", k)
		}
		seen[k] = true
		if k >= prefixEnd(kg.Prefix()) || k < kg.Prefix() {
			t.Errorf("key %q outside the prefix range", k)
		}
	}
	// Keys too short for the index grow rather than collide.
	small := NewKeyGen("pods", "t", 1, 10)
	if a, b := small.Key(5), small.Key(50); a == b || len(b) <= 10 {
		t.Errorf("short keys %q %q", a, b)
	}
	if got := prefixEnd("/a/"); got != "/a0" {
		t.Errorf("prefixEnd(/a/) = %q", got)
	}
}

func TestValueStamp(t *testing.T) {
	v := newValue(64, rand.New(rand.NewPCG(1, 1)))
	if _, ok := valueStamp(v); ok {
		t.Fatal("unstamped value read as stamped")
	}
	now := time.Now()
	stampValue(v, now)
	got, ok := valueStamp(v)
	if !ok || !got.Equal(time.Unix(0, now.UnixNano())) {
		t.Fatalf("stamp %v %v, want %v", got, ok, now)
	}
}

func TestParseMixAndTarget(t *testing.T) {
	names, weights, err := parseMix("update=3, get=5,list=0")
	if err != nil || strings.Join(names, ",") != "get,update" || weights[0] != 5 || weights[1] != 3 {
		t.Fatalf("parseMix: %v %v %v", names, weights, err)
	}
	for _, bad := range []string{"", "get", "get=x", "delete=1", "get=0"} {
		if _, _, err := parseMix(bad); err == nil {
			t.Errorf("parseMix(%q) accepted", bad)
		}
	}
	tg, err := ParseTarget("axon=127.0.0.1:1,http://127.0.0.1:2,pid=42,data-dir=/tmp/x")
	if err != nil || tg.Name != "axon" || len(tg.Endpoints) != 2 || tg.Pid != 42 || tg.DataDir != "/tmp/x" {
		t.Fatalf("ParseTarget: %+v %v", tg, err)
	}
	for _, bad := range []string{"axon", "=x", "a=pid=1", "a=x,pid=-1"} {
		if _, err := ParseTarget(bad); err == nil {
			t.Errorf("ParseTarget(%q) accepted", bad)
		}
	}
	steps, _ := Suite("standard", SuiteOptions{})
	if _, err := FilterSteps(steps, "create,nope"); err == nil {
		t.Error("FilterSteps accepted an unknown step")
	}
	if got, _ := FilterSteps(steps, "list,create"); len(got) != 2 || got[0].Name != "create" {
		t.Errorf("FilterSteps kept %v", got)
	}
}
