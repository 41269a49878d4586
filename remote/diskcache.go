package remote

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// NewDiskCache wraps s with a bounded cache of whole objects in the folder dir: every
// object Put through it is also written there, and ranged reads of a cached object are
// served from the local copy instead of the remote. Objects are ciphertext that the
// reader authenticates, and are written once under fresh names, so a copy never goes
// stale and holds nothing the remote does not. The cache survives a remount: copies
// found in dir are kept (oldest dropped first past capBytes), unless their size is not
// the one recorded in their file name (a copy torn by a crash). Caching is best effort:
// a failure to write or read a copy is logged and the remote is used.
func NewDiskCache(s Store, dir string, capBytes int64, log *slog.Logger) (Store, error) {
	if capBytes <= 0 {
		return nil, errors.New("remote: disk cache: the size must be positive")
	}
	if log == nil {
		log = slog.Default()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("remote: disk cache: %w", err)
	}
	c := &diskCache{Store: s, dir: dir, capBytes: capBytes, log: log,
		entries: make(map[string]*list.Element), fds: newFDCache(fdCacheSize),
		filling: make(map[string]bool), fillSem: make(chan struct{}, fillers)}
	c.bg, c.stop = context.WithCancel(context.Background())
	if err := c.load(); err != nil {
		c.stop()
		return nil, fmt.Errorf("remote: disk cache: %w", err)
	}
	return c, nil
}

type diskCache struct {
	Store    // Stat, List and String go to the remote
	dir      string
	capBytes int64
	log      *slog.Logger
	fds      *fdCache
	closed   atomic.Bool

	mu      sync.Mutex
	entries map[string]*list.Element // object name -> *cacheEntry in lru
	lru     list.List                // most recently used first
	size    int64
	filling map[string]bool // fills running; false once the object was deleted meanwhile

	fillSem chan struct{}
	bg      context.Context // fills run under it; Close cancels it and waits
	stop    context.CancelFunc
	wg      sync.WaitGroup
}

// A read of less than fillBelow bytes that misses also starts a background GET of the
// whole object into the cache (at most fillers at a time, one per object): random reads
// over a file then become local reads as its objects arrive, as with rclone's VFS
// cache. Larger reads (the sequential prefetch's pieces) do not: they already move the
// data in big pieces, and a fill would fetch it twice.
const (
	fillBelow = 256 << 10
	fillers   = 2
)

type cacheEntry struct {
	name string
	size int64
}

// file is where the copy of name with size bytes lives: the name with '/' escaped
// ('%' is not allowed in object names), then the size.
func (c *diskCache) file(name string, size int64) string {
	return filepath.Join(c.dir, strings.ReplaceAll(name, "/", "%")+"."+strconv.FormatInt(size, 10))
}

// load adopts the copies a previous mount left, the most recently written first in the LRU.
func (c *diskCache) load() error {
	ents, err := os.ReadDir(c.dir)
	if err != nil {
		return err
	}
	type found struct {
		e     cacheEntry
		mtime int64
	}
	var fs []found
	for _, de := range ents {
		p := filepath.Join(c.dir, de.Name())
		i := strings.LastIndexByte(de.Name(), '.')
		fi, err := de.Info()
		size, perr := strconv.ParseInt(de.Name()[i+1:], 10, 64)
		name := strings.ReplaceAll(de.Name()[:max(i, 0)], "%", "/")
		if i < 0 || err != nil || perr != nil || !fi.Mode().IsRegular() || fi.Size() != size || ValidName(name) != nil {
			_ = os.Remove(p) // a torn copy, or a temporary file of an unfinished one
			continue
		}
		fs = append(fs, found{cacheEntry{name, size}, fi.ModTime().UnixNano()})
	}
	sort.Slice(fs, func(i, j int) bool { return fs[i].mtime > fs[j].mtime })
	c.mu.Lock()
	for _, f := range fs {
		e := f.e
		c.entries[e.name] = c.lru.PushBack(&e)
		c.size += e.size
	}
	drop := c.evictLocked()
	c.mu.Unlock()
	c.remove(drop)
	return nil
}

// dropLocked takes the copy at el out of the cache's books; its file goes with remove.
func (c *diskCache) dropLocked(el *list.Element) cacheEntry {
	e := el.Value.(*cacheEntry)
	c.lru.Remove(el)
	delete(c.entries, e.name)
	c.size -= e.size
	return *e
}

// evictLocked takes the least recently used copies out until the cache fits.
func (c *diskCache) evictLocked() []cacheEntry {
	var drop []cacheEntry
	for c.size > c.capBytes {
		drop = append(drop, c.dropLocked(c.lru.Back()))
	}
	return drop
}

func (c *diskCache) remove(es []cacheEntry) {
	for _, e := range es {
		c.fds.invalidate(e.name)
		_ = os.Remove(c.file(e.name, e.size))
	}
}

// forget drops name's copy, if any.
func (c *diskCache) forget(name string) {
	c.mu.Lock()
	if _, ok := c.filling[name]; ok {
		c.filling[name] = false // the fill must not keep what it fetched
	}
	var drop []cacheEntry
	if el, ok := c.entries[name]; ok {
		drop = append(drop, c.dropLocked(el))
	}
	c.mu.Unlock()
	c.remove(drop)
}

func (c *diskCache) Put(ctx context.Context, name string, data []byte) error {
	if ctx.Err() == nil && !c.closed.Load() {
		c.forget(name)
	}
	if err := c.Store.Put(ctx, name, data); err != nil {
		return err
	}
	c.keep(name, data, nil)
	return nil
}

// keep writes a copy of data as object name and adds it to the cache, unless ok (called
// under c.mu) says no any more.
func (c *diskCache) keep(name string, data []byte, ok func() bool) {
	size := int64(len(data))
	if size > c.capBytes {
		return
	}
	// Written without fsync and renamed into place: a crash may leave a short copy,
	// which load drops by its size.
	p := c.file(name, size)
	tmp, err := os.CreateTemp(c.dir, "tmp-*")
	if err == nil {
		_, err = tmp.Write(data)
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp.Name(), p)
		}
		if err != nil {
			_ = os.Remove(tmp.Name())
		}
	}
	if err != nil {
		c.log.Warn("remote: could not keep a copy in the disk cache", "object", name, "err", err)
		return
	}
	c.mu.Lock()
	if ok != nil && !ok() {
		c.mu.Unlock()
		_ = os.Remove(p)
		return
	}
	var drop []cacheEntry
	if el, ok := c.entries[name]; ok { // two Puts of one name (objects are written once)
		if old := c.dropLocked(el); old.size != size {
			drop = append(drop, old) // another file; one of the same size was just replaced
		}
	}
	c.entries[name] = c.lru.PushFront(&cacheEntry{name, size})
	c.size += size
	drop = append(drop, c.evictLocked()...)
	c.mu.Unlock()
	c.remove(drop)
}

func (c *diskCache) GetRange(ctx context.Context, name string, off, n int64) ([]byte, error) {
	if ctx.Err() != nil || c.closed.Load() || off < 0 || n < -1 {
		return c.Store.GetRange(ctx, name, off, n) // which reports why
	}
	c.mu.Lock()
	var size int64 = -1
	if el, ok := c.entries[name]; ok {
		c.lru.MoveToFront(el)
		size = el.Value.(*cacheEntry).size
	}
	c.mu.Unlock()
	if size >= 0 {
		if b, err := c.readCopy(name, size, off, n); err == nil {
			return b, nil
		} else if !errors.Is(err, io.ErrUnexpectedEOF) {
			c.log.Warn("remote: cannot read a copy in the disk cache; reading the remote", "object", name, "err", err)
			c.forget(name)
		}
	} else if n >= 0 && n < fillBelow {
		c.fill(name)
	}
	return c.Store.GetRange(ctx, name, off, n)
}

// fill fetches the whole object name into the cache in the background, unless a fill
// of it runs already or fillers do.
func (c *diskCache) fill(name string) {
	c.mu.Lock()
	if _, running := c.filling[name]; running || c.closed.Load() {
		c.mu.Unlock()
		return
	}
	select {
	case c.fillSem <- struct{}{}:
	default:
		c.mu.Unlock()
		return
	}
	c.filling[name] = true
	c.wg.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.wg.Done()
		defer func() {
			c.mu.Lock()
			delete(c.filling, name)
			c.mu.Unlock()
			<-c.fillSem
		}()
		ctx, cancel := context.WithTimeout(c.bg, time.Minute)
		defer cancel()
		data, err := c.Store.GetRange(ctx, name, 0, -1)
		if err != nil {
			c.log.Debug("remote: disk cache fill failed", "object", name, "err", err)
			return
		}
		c.keep(name, data, func() bool { return c.filling[name] && !c.closed.Load() })
	}()
}

// readCopy reads [off, off+n) of the cached copy of name. A range past its end is
// io.ErrUnexpectedEOF, as the remote would say (the caller then asks the remote,
// which reports it).
func (c *diskCache) readCopy(name string, size, off, n int64) ([]byte, error) {
	if n == -1 {
		n = size - off
	}
	if n < 0 || off+n > size {
		return nil, io.ErrUnexpectedEOF
	}
	e, st, err := c.fds.acquire(name, c.file(name, size))
	if err != nil {
		return nil, err
	}
	defer c.fds.release(e)
	if st.Size != size {
		return nil, fmt.Errorf("copy holds %d bytes, want %d", st.Size, size)
	}
	b := make([]byte, n)
	if _, err := e.f.ReadAt(b, off); err != nil {
		return nil, err
	}
	return b, nil
}

func (c *diskCache) Delete(ctx context.Context, name string) error {
	if ctx.Err() == nil && !c.closed.Load() {
		c.forget(name)
	}
	return c.Store.Delete(ctx, name)
}

func (c *diskCache) Close(ctx context.Context) error {
	c.mu.Lock()
	c.closed.Store(true) // under mu: no fill starts after it
	c.mu.Unlock()
	c.stop()
	c.wg.Wait()
	err := c.Store.Close(ctx)
	c.fds.close()
	return err
}
