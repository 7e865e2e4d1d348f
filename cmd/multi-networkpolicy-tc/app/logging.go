package app

import (
	"fmt"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/sirupsen/logrus"
	"k8s.io/klog/v2"
)

// routeKlog sends client-go's klog lines (reflector and event-broadcaster
// errors, "Waiting for caches to sync") through logrus, so they come out in
// --log-format like the agent's own. klog's V(n>0) lines are debug.
func routeKlog(log logrus.FieldLogger) {
	klog.SetLogger(logr.New(&logrusSink{log: log}))
}

type logrusSink struct {
	log  logrus.FieldLogger
	name string
}

func (s *logrusSink) Init(logr.RuntimeInfo) {}

func (s *logrusSink) Enabled(level int) bool {
	if l, ok := s.log.(interface{ GetLevel() logrus.Level }); ok && level > 0 {
		return l.GetLevel() >= logrus.DebugLevel
	}
	return true
}

func (s *logrusSink) entry(kv []any) logrus.FieldLogger {
	f := logrus.Fields{}
	if s.name != "" {
		f["logger"] = s.name
	}
	for i := 0; i+1 < len(kv); i += 2 {
		f[fmt.Sprint(kv[i])] = kv[i+1]
	}
	return s.log.WithFields(f)
}

func (s *logrusSink) Info(level int, msg string, kv ...any) {
	if level > 0 {
		s.entry(kv).Debug(msg)
		return
	}
	s.entry(kv).Info(msg)
}

func (s *logrusSink) Error(err error, msg string, kv ...any) {
	s.entry(kv).WithError(err).Error(msg)
}

func (s *logrusSink) WithValues(kv ...any) logr.LogSink {
	return &logrusSink{log: s.entry(kv), name: s.name}
}

func (s *logrusSink) WithName(name string) logr.LogSink {
	if s.name != "" {
		name = s.name + "." + name
	}
	return &logrusSink{log: s.log, name: name}
}

// logLimiter lets the first line about a problem out at once and then one
// per interval, so a failure retried with backoff (every few milliseconds
// at first) is visible from its first second without flooding the log.
type logLimiter struct {
	every time.Duration
	now   func() time.Time

	mu   sync.Mutex
	last map[string]time.Time
}

func newLogLimiter(every time.Duration) *logLimiter {
	return &logLimiter{every: every, now: time.Now, last: map[string]time.Time{}}
}

// allow reports whether a line about key may be logged now.
func (l *logLimiter) allow(key string) bool {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, ok := l.last[key]; ok && now.Sub(t) < l.every {
		return false
	}
	if len(l.last) > 10000 {
		clear(l.last)
	}
	l.last[key] = now
	return true
}
