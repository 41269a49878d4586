package remote

import (
	"context"
	"log/slog"
	"sync"
)

// rcloneLogHandler forwards rclone's records (ERROR and worse) to the
// logger of the latest Open that gave one. rclone logs through one
// process-wide handler (fs.SetLogger; by default slog.Default as it was at
// init), so the target is looked up per record, not fixed at setup.
type rcloneLogHandler struct {
	ops []func(slog.Handler) slog.Handler
}

var rcloneLogger struct {
	mu sync.RWMutex
	l  *slog.Logger
}

func setRcloneLogger(l *slog.Logger) {
	rcloneLogger.mu.Lock()
	rcloneLogger.l = l
	rcloneLogger.mu.Unlock()
}

func (h rcloneLogHandler) target() slog.Handler {
	rcloneLogger.mu.RLock()
	l := rcloneLogger.l
	rcloneLogger.mu.RUnlock()
	if l == nil {
		l = slog.Default()
	}
	t := l.Handler()
	for _, op := range h.ops {
		t = op(t)
	}
	return t
}

func (h rcloneLogHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelError && h.target().Enabled(ctx, l)
}

func (h rcloneLogHandler) Handle(ctx context.Context, r slog.Record) error {
	r = r.Clone()
	r.AddAttrs(slog.String("component", "rclone"))
	return h.target().Handle(ctx, r)
}

func (h rcloneLogHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return rcloneLogHandler{ops: append(h.ops[:len(h.ops):len(h.ops)], func(t slog.Handler) slog.Handler { return t.WithAttrs(as) })}
}

func (h rcloneLogHandler) WithGroup(g string) slog.Handler {
	return rcloneLogHandler{ops: append(h.ops[:len(h.ops):len(h.ops)], func(t slog.Handler) slog.Handler { return t.WithGroup(g) })}
}
