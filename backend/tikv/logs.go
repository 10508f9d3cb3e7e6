package tikv

import (
	"context"
	"log/slog"
	"maps"
	"slices"

	"github.com/pingcap/log"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// RouteClientLogs sends client-go's logs to l. client-go logs through one
// process-wide zap logger (pingcap/log), by default to stdout at info, so
// this affects every client in the process; Open calls it with its
// logger, OpenWithClient leaves logging to whoever made the client.
//
// client-go reports routine events at info (region cache refreshes, locks
// resolved, store state changes), which is noise for an operator, so info
// and debug are demoted below slog's default level: only warnings and
// errors show unless debug logging is enabled.
func RouteClientLogs(l *slog.Logger) {
	core := &slogCore{h: l.Handler()}
	log.ReplaceGlobals(zap.New(core), &log.ZapProperties{
		Core:   core,
		Syncer: zapcore.AddSync(discard{}),
		Level:  zap.NewAtomicLevelAt(zapcore.DebugLevel),
	})
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// slogCore is a zapcore.Core writing to a slog.Handler.
type slogCore struct {
	h slog.Handler
}

func slogLevel(l zapcore.Level) slog.Level {
	switch {
	case l >= zapcore.ErrorLevel:
		return slog.LevelError
	case l == zapcore.WarnLevel:
		return slog.LevelWarn
	case l == zapcore.InfoLevel:
		return slog.LevelDebug
	default:
		return slog.LevelDebug - 4
	}
}

func (c *slogCore) Enabled(l zapcore.Level) bool {
	return c.h.Enabled(context.Background(), slogLevel(l))
}

func (c *slogCore) With(fields []zapcore.Field) zapcore.Core {
	return &slogCore{h: c.h.WithAttrs(attrs(fields))}
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *slogCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	r := slog.NewRecord(e.Time, slogLevel(e.Level), e.Message, 0)
	r.AddAttrs(attrs(fields)...)
	if e.Caller.Defined {
		r.AddAttrs(slog.String("caller", e.Caller.TrimmedPath()))
	}
	return c.h.Handle(context.Background(), r)
}

func (c *slogCore) Sync() error { return nil }

func attrs(fields []zapcore.Field) []slog.Attr {
	if len(fields) == 0 {
		return nil
	}
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range fields {
		f.AddTo(enc)
	}
	// pkg/errors values add an "errorVerbose" field repeating the error
	// with its stack, one frame per line; the message is in "error".
	delete(enc.Fields, "errorVerbose")
	out := make([]slog.Attr, 0, len(enc.Fields))
	for _, k := range slices.Sorted(maps.Keys(enc.Fields)) {
		out = append(out, slog.Any(k, enc.Fields[k]))
	}
	return out
}
