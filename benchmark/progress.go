package benchmark

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// IsTerminal reports whether f is a character device (a terminal), the test
// used to choose between a redrawn progress bar and plain periodic lines.
func IsTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// progress prints a run's progress: on a terminal one bar redrawn in place,
// otherwise one plain line per interval.
type progress struct {
	w       io.Writer
	tty     bool
	lastOK  int64
	lastAt  time.Time
	printed bool
}

func (p *progress) line(r *run, now time.Time, final bool) string {
	r.mu.Lock()
	ss := append([]*series(nil), r.series...)
	r.mu.Unlock()
	if len(ss) == 0 {
		return ""
	}
	prim := ss[0]
	ok, errs := prim.ok.Load(), prim.errs.Load()
	// The rate over the last interval; the final line gives the average.
	since, base := p.lastAt, p.lastOK
	if since.IsZero() || final {
		since, base = r.start, 0
	}
	rate := 0.0
	if dt := now.Sub(since).Seconds(); dt > 0 {
		rate = float64(ok-base) / dt
	}
	p.lastOK, p.lastAt = ok, now
	el := now.Sub(r.start)

	var b strings.Builder
	frac := -1.0
	switch {
	case r.total > 0:
		frac = float64(min(r.issued.Load(), r.total)) / float64(r.total)
	case r.cfg.Duration > 0 && !r.untimed:
		frac = el.Seconds() / r.cfg.Duration.Seconds()
	}
	if frac > 1 {
		frac = 1
	}
	fmt.Fprintf(&b, "[%s] %5.1fs ", r.label(), el.Seconds())
	if p.tty && frac >= 0 {
		const width = 24
		n := int(frac * width)
		b.WriteString("[" + strings.Repeat("=", n) + strings.Repeat(" ", width-n) + "] ")
	}
	if frac >= 0 {
		fmt.Fprintf(&b, "%3.0f%% ", frac*100)
	}
	fmt.Fprintf(&b, "%s %d ok (%s/s) %d err", prim.name, ok, fmtNum(rate), errs)
	if p99 := prim.hist.Snapshot().Percentile(0.99); p99 > 0 {
		fmt.Fprintf(&b, " p99 %sms", fmtMs(nsToMs(p99)))
	}
	for _, s := range ss[1:] {
		fmt.Fprintf(&b, " | %s %d", s.name, s.ok.Load())
	}
	return b.String()
}

func (p *progress) update(r *run, now time.Time) {
	l := p.line(r, now, false)
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s", l)
	} else {
		fmt.Fprintln(p.w, l)
	}
	p.printed = true
}

func (p *progress) final(r *run) {
	if p.tty && p.printed {
		fmt.Fprintf(p.w, "\r\033[K%s\n", p.line(r, time.Now(), true))
	} else if !p.tty {
		fmt.Fprintln(p.w, p.line(r, time.Now(), true))
	}
}
