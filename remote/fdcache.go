package remote

import (
	"container/list"
	"os"
	"sync"
	"syscall"
)

// fdCacheSize bounds the read-only descriptors a local-folder Store keeps open: 256
// objects of 4 MiB cover a 1 GiB working set, and 256 descriptors are far below the
// limit Go raises the process to at start.
const fdCacheSize = 256

// fdCache keeps read-only descriptors of a local remote's objects open between ranged
// reads, so a cold random read is one fstat and one pread instead of open, fstat,
// fadvise, pread and close (os.Open was ~10% of the daemon's CPU; gocryptfs keeps its
// backing descriptor open too).
//
// Objects are written once under fresh names, but the cache is correct anyway: Put and
// Delete of a name drop its entry, and an entry opened while any Put or Delete ran is
// used once and not kept (invalidation counter). A hit re-checks the descriptor with
// fstat: a file unlinked or replaced behind our back (link count 0) is dropped and the
// name opened again, and the size is always the current one, so an object truncated
// on disk reads as short and a deleted one as not found, as without the cache.
// Descriptors are reference counted: eviction never closes one a pread is using.
type fdCache struct {
	mu      sync.Mutex
	max     int
	entries map[string]*fdEntry
	lru     list.List // of *fdEntry, most recently used first
	inval   uint64    // bumped by every invalidation
	closed  bool
}

type fdEntry struct {
	name string
	f    *os.File
	refs int           // readers using f, plus one while the cache holds it
	elem *list.Element // nil once out of the cache
}

func newFDCache(max int) *fdCache {
	return &fdCache{max: max, entries: make(map[string]*fdEntry)}
}

// acquire returns an open descriptor of path (the object name) and its current stat.
// The caller must release it. Errors are those of open and fstat.
func (c *fdCache) acquire(name, path string) (*fdEntry, *syscall.Stat_t, error) {
	c.mu.Lock()
	if e, ok := c.entries[name]; ok {
		e.refs++
		c.lru.MoveToFront(e.elem)
		c.mu.Unlock()
		var st syscall.Stat_t
		if err := syscall.Fstat(int(e.f.Fd()), &st); err == nil && st.Nlink > 0 {
			return e, &st, nil
		}
		// Gone from its name (deleted or replaced outside coffer): open the name again.
		c.invalidate(name)
		c.release(e)
		c.mu.Lock()
	}
	gen := c.inval
	c.mu.Unlock()

	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		_ = f.Close()
		return nil, nil, err
	}
	e := &fdEntry{name: name, f: f, refs: 1}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return e, &st, nil // not kept: the caller reports no object
	}
	// Reads come at random offsets and we read exactly what we need (prefetch asks
	// for its whole window): kernel readahead would only waste disk bandwidth.
	_ = fadviseRandom(f)

	var drop []*os.File
	c.mu.Lock()
	if _, dup := c.entries[name]; !dup && !c.closed && gen == c.inval && c.max > 0 {
		e.refs++
		e.elem = c.lru.PushFront(e)
		c.entries[name] = e
		for c.lru.Len() > c.max {
			old := c.lru.Back().Value.(*fdEntry)
			if f := c.removeLocked(old); f != nil {
				drop = append(drop, f)
			}
		}
	}
	c.mu.Unlock()
	for _, f := range drop {
		_ = f.Close()
	}
	return e, &st, nil
}

// release ends one reader's use of e, closing it when nothing holds it any more.
func (c *fdCache) release(e *fdEntry) {
	c.mu.Lock()
	e.refs--
	last := e.refs == 0
	c.mu.Unlock()
	if last {
		_ = e.f.Close()
	}
}

// removeLocked takes e out of the cache and returns its descriptor if that was the
// last reference (to close outside the lock).
func (c *fdCache) removeLocked(e *fdEntry) *os.File {
	if e.elem == nil {
		return nil
	}
	c.lru.Remove(e.elem)
	e.elem = nil
	delete(c.entries, e.name)
	e.refs--
	if e.refs == 0 {
		return e.f
	}
	return nil
}

// invalidate drops name's descriptor: called after a Put or Delete of name (and on
// a stale hit), so the next read opens the object the name now refers to.
func (c *fdCache) invalidate(name string) {
	c.mu.Lock()
	c.inval++
	var f *os.File
	if e, ok := c.entries[name]; ok {
		f = c.removeLocked(e)
	}
	c.mu.Unlock()
	if f != nil {
		_ = f.Close()
	}
}

// close drops every entry; descriptors in use close when their reader releases them.
// Later acquires still work but keep nothing.
func (c *fdCache) close() {
	c.mu.Lock()
	c.closed = true
	var drop []*os.File
	for _, e := range c.entries {
		if f := c.removeLocked(e); f != nil {
			drop = append(drop, f)
		}
	}
	c.mu.Unlock()
	for _, f := range drop {
		_ = f.Close()
	}
}

// len reports how many descriptors the cache holds (tests).
func (c *fdCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
