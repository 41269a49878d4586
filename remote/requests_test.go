package remote_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"
	"time"

	"coffer/remote"
	"coffer/test/s3server"
)

// methodCounter is an HTTP proxy in front of the S3 server that counts requests by method.
type methodCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (m *methodCounter) count(method string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.n[method]
}

func (m *methodCounter) reset() {
	m.mu.Lock()
	m.n = map[string]int{}
	m.mu.Unlock()
}

// countedS3 opens a Store on a real S3 server through a proxy that counts requests.
func countedS3(t *testing.T) (remote.Store, *methodCounter) {
	t.Helper()
	srv := s3server.Start(t)
	target, err := url.Parse(srv.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	mc := &methodCounter{n: map[string]int{}}
	rp := httputil.NewSingleHostReverseProxy(target)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mc.mu.Lock()
		mc.n[r.Method]++
		mc.mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(proxy.Close)
	return open(t, fmt.Sprintf(":s3,provider=Rclone,endpoint='%s':bkt/vol", proxy.URL), remote.Options{}), mc
}

// TestS3RangedReadsSendNoHead: a Put is one PUT and a ranged read one GET, with no HEAD
// after or before them (the data path knows every range it asks for); a range past the
// end still fails as short, and a missing object as not found.
func TestS3RangedReadsSendNoHead(t *testing.T) {
	st, mc := countedS3(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	data := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	const name = "c/ab/headless"
	if err := st.Put(ctx, "c/ab/first", data); err != nil { // creates the bucket
		t.Fatal(err)
	}
	mc.reset()
	if err := st.Put(ctx, name, data); err != nil {
		t.Fatal(err)
	}
	// A Put is one PUT: no HEAD after it to read back metadata (Content-MD5 checks the
	// bytes).
	if h, p := mc.count(http.MethodHead), mc.count(http.MethodPut); h != 0 || p != 1 {
		t.Errorf("a Put sent %d HEAD and %d PUT requests; want 0 and 1", h, p)
	}
	mc.reset()
	for _, r := range []struct{ off, n int64 }{{0, 100}, {16384, 16384}, {int64(len(data)) - 7, 7}} {
		got, err := st.GetRange(ctx, name, r.off, r.n)
		if err != nil || !bytes.Equal(got, data[r.off:r.off+r.n]) {
			t.Fatalf("GetRange(%d, %d) = %d bytes, %v; want the object's bytes", r.off, r.n, len(got), err)
		}
	}
	if h, g := mc.count(http.MethodHead), mc.count(http.MethodGet); h != 0 || g != 3 {
		t.Errorf("3 ranged reads sent %d HEAD and %d GET requests; want 0 and 3", h, g)
	}
	if _, err := st.GetRange(ctx, name, int64(len(data))-5, 10); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("a range past the end: %v; want an error wrapping io.ErrUnexpectedEOF", err)
	}
	if _, err := st.GetRange(ctx, "c/ab/missing", 0, 10); !errors.Is(err, remote.ErrNotFound) {
		t.Errorf("a missing object: %v; want ErrNotFound", err)
	}
	if err := st.Delete(ctx, name); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Stat(ctx, name); !errors.Is(err, remote.ErrNotFound) {
		t.Errorf("Stat after delete: %v; want ErrNotFound", err)
	}
}
