package benchmark

import (
	"math/rand/v2"
	"testing"
	"time"
)

// Hot paths of the benchmark client itself: every operation records one
// latency and builds one key, so these must stay far below a request's cost.

func BenchmarkHistogramRecord(b *testing.B) {
	h := NewHistogram()
	d := make([]time.Duration, 1024)
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := range d {
		d[i] = time.Duration(rnd.ExpFloat64() * float64(5*time.Millisecond))
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		h.Record(d[i&1023])
	}
}

func BenchmarkHistogramRecordParallel(b *testing.B) {
	h := NewHistogram()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		v := time.Duration(rand.IntN(int(10 * time.Millisecond)))
		for pb.Next() {
			h.Record(v)
			v += 997
		}
	})
}

func BenchmarkHistogramPercentile(b *testing.B) {
	h := NewHistogram()
	for i := 0; i < 100000; i++ {
		h.Record(time.Duration(i) * time.Microsecond)
	}
	s := h.Snapshot()
	b.ReportAllocs()
	for b.Loop() {
		_ = s.Percentile(0.99)
	}
}

func BenchmarkKeyGen(b *testing.B) {
	kg := NewKeyGen("pods", "abc123", 100, 70)
	var buf []byte
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		buf = kg.AppendKey(buf[:0], i)
	}
}

func BenchmarkKeyGenString(b *testing.B) {
	kg := NewKeyGen("pods", "abc123", 100, 70)
	var buf []byte
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		buf = kg.AppendKey(buf[:0], i)
		_ = string(buf)
	}
}

func BenchmarkClassify(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = Classify(errAlreadyExists)
	}
}
