// Package s3server runs a real S3 server on 127.0.0.1 for tests: rclone's
// own "serve s3" (gofakes3's protocol layer over rclone's VFS), in-process,
// backed by a folder on disk.
//
// Usage:
//
//	srv := s3server.Start(t)                  // stopped by t.Cleanup
//	st, err := remote.Open(ctx, srv.Remote("bkt/vol1"), remote.Options{})
//	// every object is a plain file, to inspect or tamper with:
//	data, _ := os.ReadFile(srv.ObjectPath("bkt/vol1", "c/ab/xyz"))
//	srv.Stop()    // really down: connections refused, open ones cut
//	srv.Restart() // same port, same folder, same objects
//
// Each top-level folder of Server.Dir is a bucket; a bucket that does not
// exist yet is created by the first upload into it. Access is anonymous, so
// the connection string carries no credentials (rclone v1.76.0's serve s3,
// given auth_key, answered every request with InvalidAccessKeyId when started
// in-process through rc's serve/start, and also under "rclone rcd"). The server
// lives in the test process; a coffer subprocess started by the test can
// reach it over loopback like any S3 endpoint.
//
// Clients talk to Addr, a thin HTTP proxy in front of rclone's server. Stop
// closes its listener and cuts every connection at once, like a crashed
// server or a pulled cable (rclone's own shutdown is graceful and can wait
// seconds for idle clients); Restart listens on Addr again. The proxy runs
// requests that change objects one at a time (see serve); reads run in
// parallel.
//
// The VFS directory cache lasts only DirCacheTime, so a file changed,
// truncated or removed on disk is seen after Settle. Start takes about
// 100 ms (rclone waits that long to see whether a server fails at once).
package s3server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/rclone/rclone/backend/local" // serve s3 stores into a local folder
	_ "github.com/rclone/rclone/cmd/serve/s3"  // registers "s3" with serve/start
	"github.com/rclone/rclone/fs"
	"github.com/rclone/rclone/fs/cache"
	"github.com/rclone/rclone/fs/rc"
	"github.com/rclone/rclone/lib/atexit"
)

// DirCacheTime is how long the server may serve a stale view of its folder
// after a test changed a file behind its back; Settle waits that long.
const DirCacheTime = 10 * time.Millisecond

// Server is a running (or stopped) S3 server.
type Server struct {
	// Dir is the backing folder: Dir/<bucket>/<key> is an object.
	Dir string
	// Addr is 127.0.0.1:PORT, the same across Restart.
	Addr string

	t     testing.TB
	id    string // rclone's server id
	inner string // rclone's server address, behind the proxy

	transport *http.Transport // to rclone's server
	rw        sync.RWMutex    // see serve

	mu  sync.Mutex
	srv *http.Server // the front server, nil while stopped
}

// Start starts a server on a random 127.0.0.1 port over a new temporary
// folder, and arranges for it to be stopped when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{Dir: t.TempDir(), t: t, transport: &http.Transport{}}
	// serve s3 registers rclone's at-exit handler, whose signal handler
	// would os.Exit the test process on SIGINT/SIGTERM.
	atexit.IgnoreSignals()
	// rclone logs "No auth provided so allowing anonymous access" at
	// NOTICE; keep the test output to errors.
	if ci := fs.GetConfig(context.Background()); ci.LogLevel > fs.LogLevelError {
		ci.LogLevel = fs.LogLevelError
	}
	// Without PartialUploads serve s3 writes an object in place instead
	// of renaming a temporary file into place (one less VFS race, see
	// serve). The Fs is handed to serve/start through rclone's Fs cache,
	// where serve/start looks the name up.
	local, err := fs.NewFs(context.Background(), s.Dir)
	if err != nil {
		t.Fatalf("s3server: %v", err)
	}
	local.Features().Disable("PartialUploads")
	cache.Put(s.Dir, local)
	cache.Pin(local)
	t.Cleanup(func() { cache.Unpin(local) })
	out, err := rc.Calls.Get("serve/start").Fn(context.Background(), rc.Params{
		"type": "s3",
		"fs":   s.Dir,
		"addr": "127.0.0.1:0",
		// Re-read folders almost every request, so that tests can
		// tamper with the files directly. Not 0: the VFS then re-arms a
		// 0-length cleanup timer in a loop while a write is in flight.
		"dir_cache_time": DirCacheTime.String(),
	})
	if err != nil {
		t.Fatalf("s3server: start rclone serve s3: %v", err)
	}
	if s.id, err = out.GetString("id"); err != nil {
		t.Fatalf("s3server: %v", err)
	}
	if s.inner, err = out.GetString("addr"); err != nil {
		t.Fatalf("s3server: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("s3server: %v", err)
	}
	s.Addr = ln.Addr().String()
	s.serve(ln)
	t.Cleanup(func() {
		s.Stop()
		if _, err := rc.Calls.Get("serve/stop").Fn(context.Background(), rc.Params{"id": s.id}); err != nil {
			t.Errorf("s3server: stop rclone serve s3: %v", err)
		}
	})
	return s
}

// serve proxies every request accepted on ln to rclone's server.
func (s *Server) serve(ln net.Listener) {
	target := &url.URL{Scheme: "http", Host: s.inner}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.Host = r.In.Host
		},
		Transport: s.transport,
		ErrorLog:  log.New(io.Discard, "", 0),
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// Requests that change the tree run alone: rclone v1.76's VFS
			// races (seen with -race) between Mkdir/Rename and a
			// concurrent re-read of the parent folder.
			if r.Method == http.MethodGet || r.Method == http.MethodHead {
				s.rw.RLock()
				defer s.rw.RUnlock()
			} else {
				s.rw.Lock()
				defer s.rw.Unlock()
			}
			proxy.ServeHTTP(w, r)
		}),
		ErrorLog: log.New(io.Discard, "", 0),
	}
	s.mu.Lock()
	s.srv = srv
	s.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

// Endpoint is the server's URL, http://127.0.0.1:PORT.
func (s *Server) Endpoint() string { return "http://" + s.Addr }

// Remote returns an rclone connection string, without credentials, for
// bucketPath ("bucket" or "bucket/prefix"). Extra backend options may be
// given as "key=value" (quote values holding ':' or ',').
func (s *Server) Remote(bucketPath string, options ...string) string {
	opts := ""
	for _, o := range options {
		opts += "," + o
	}
	return fmt.Sprintf(":s3,provider=Rclone,endpoint='%s'%s:%s", s.Endpoint(), opts, strings.Trim(bucketPath, "/"))
}

// ObjectPath is the file holding object name of the store opened on
// Remote(bucketPath).
func (s *Server) ObjectPath(bucketPath, name string) string {
	return filepath.Join(s.Dir, filepath.FromSlash(strings.Trim(bucketPath, "/")), filepath.FromSlash(name))
}

// Settle waits until changes made directly in Dir are visible through S3.
func (s *Server) Settle() { time.Sleep(3 * DirCacheTime) }

// MkdirBucket creates bucket (a folder) ahead of the first upload.
func (s *Server) MkdirBucket(bucket string) error {
	return os.MkdirAll(filepath.Join(s.Dir, bucket), 0o755)
}

// Running reports whether the server is up.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.srv != nil
}

// Stop takes the server down at once: Addr refuses connections and every
// open connection is cut, requests in flight included. Stopping a stopped
// server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv == nil {
		return
	}
	_ = s.srv.Close() // closes the listener and every connection now
	s.srv = nil
	s.transport.CloseIdleConnections()
}

// Restart brings a stopped server back on the same address, with the same
// folder and objects. It retries for a moment in case the port is still
// being released.
func (s *Server) Restart() {
	s.t.Helper()
	if s.Running() {
		return
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		ln, err := net.Listen("tcp", s.Addr)
		if err == nil {
			s.serve(ln)
			return
		}
		if time.Now().After(deadline) || !errors.Is(err, syscall.EADDRINUSE) {
			s.t.Fatalf("s3server: restart on %s: %v", s.Addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitReachable dials Addr until it accepts a connection or d passes.
func (s *Server) WaitReachable(d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		c, err := net.DialTimeout("tcp", s.Addr, 200*time.Millisecond)
		if err == nil {
			_ = c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
