package content

import (
	"container/list"
	"errors"
	"sync"
	"sync/atomic"

	"coffer/crypto/format"
)

// blockKey names one plaintext block of one chunk object. Objects are
// immutable (an id is sealed once), so a cached block never goes stale.
type blockKey struct {
	obj   format.ID
	block int64
}

const cacheShards = 16

// blockCache is the bounded plaintext block cache: LRU by bytes, split into
// shards so that readers of different blocks rarely meet on a lock. It also
// tracks fetches in flight, so that a read waits for a prefetch of the same
// block instead of fetching it twice.
//
// Blocks are handed out by reference (no copy on the hot path). So that
// wipe can zero them while the data path runs (coffer lock), a caller takes gen
// before it looks blocks up and copies out of them only inside use(gen),
// which fails with errPlainWiped if a wipe came in between; wipe waits for
// copies in progress.
type blockCache struct {
	shardCap int64
	bytes    atomic.Int64
	shards   [cacheShards]cacheShard

	gen     atomic.Uint64 // bumped when wipe starts and when it ends: odd while it runs
	plainMu sync.RWMutex  // held shared while callers copy plaintext out; wipe takes it
}

// errPlainWiped: the plaintext blocks a caller looked up were zeroed by a
// wipe before it could copy them out.
var errPlainWiped = errors.New("cached plaintext was wiped (coffer lock)")

type cacheShard struct {
	mu      sync.Mutex
	lru     list.List // front = most recent; values are *cacheEntry
	m       map[blockKey]*list.Element
	size    int64
	flights map[blockKey]*flight
}

type cacheEntry struct {
	key  blockKey
	data []byte
}

// entryOverhead approximates the bookkeeping bytes of one entry.
const entryOverhead = 96

// flight is a fetch in progress; done is closed when it ends.
type flight struct {
	done chan struct{}
}

func newBlockCache(capBytes int64) *blockCache {
	c := &blockCache{shardCap: capBytes / cacheShards}
	for i := range c.shards {
		c.shards[i].m = make(map[blockKey]*list.Element)
		c.shards[i].flights = make(map[blockKey]*flight)
	}
	return c
}

func (c *blockCache) shard(k blockKey) *cacheShard {
	h := uint(k.obj[0]) ^ uint(k.obj[7])<<3 ^ uint(k.block)*0x9e3779b1
	return &c.shards[(h^h>>7)%cacheShards]
}

// get returns the cached plaintext of k (not a copy: callers only read it).
func (c *blockCache) get(k blockKey) ([]byte, bool) {
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.m[k]; ok {
		s.lru.MoveToFront(e)
		return e.Value.(*cacheEntry).data, true
	}
	return nil, false
}

// getOrClaim returns the cached block, or the flight fetching it (wait on
// it, then look again), or claims the fetch for the caller (mine = true),
// who must call finish.
func (c *blockCache) getOrClaim(k blockKey) (data []byte, fl *flight, mine bool) {
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.m[k]; ok {
		s.lru.MoveToFront(e)
		return e.Value.(*cacheEntry).data, nil, false
	}
	if fl := s.flights[k]; fl != nil {
		return nil, fl, false
	}
	fl = &flight{done: make(chan struct{})}
	s.flights[k] = fl
	return nil, fl, true
}

// finish ends the caller's claimed flight of k.
func (c *blockCache) finish(k blockKey) {
	s := c.shard(k)
	s.mu.Lock()
	fl := s.flights[k]
	delete(s.flights, k)
	s.mu.Unlock()
	if fl != nil {
		close(fl.done)
	}
}

// put caches data (which the cache now owns) under k, evicting the least
// recently used blocks of the shard beyond its share of the cap. gen is the
// generation the caller took before decrypting data: after a wipe the block
// is not cached (the caller's use(gen) fails too).
func (c *blockCache) put(k blockKey, data []byte, gen uint64) {
	sz := int64(len(data)) + entryOverhead
	if sz > c.shardCap {
		return
	}
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if keysMoved(&c.gen, gen) {
		return
	}
	if e, ok := s.m[k]; ok {
		s.lru.MoveToFront(e)
		return
	}
	s.m[k] = s.lru.PushFront(&cacheEntry{key: k, data: data})
	s.size += sz
	c.bytes.Add(sz)
	for s.size > c.shardCap {
		e := s.lru.Back()
		ent := e.Value.(*cacheEntry)
		s.lru.Remove(e)
		delete(s.m, ent.key)
		n := int64(len(ent.data)) + entryOverhead
		s.size -= n
		c.bytes.Add(-n)
	}
}

// use runs f, which copies plaintext out of blocks looked up since gen was
// taken, unless a wipe zeroed them meanwhile (errPlainWiped). f must not
// take other locks that wipe's callers could hold.
func (c *blockCache) use(gen uint64, f func() error) error {
	c.plainMu.RLock()
	defer c.plainMu.RUnlock()
	if keysMoved(&c.gen, gen) {
		return errPlainWiped
	}
	return f()
}

// wipe zeroes and drops every cached block while the data path runs: it waits
// for copies in progress (use) and makes later ones fail.
func (c *blockCache) wipe() {
	c.plainMu.Lock()
	defer c.plainMu.Unlock()
	// A lookup during the wipe may still find a block about to be zeroed:
	// its caller took an odd or older gen, so its use fails.
	c.gen.Add(1)
	c.reset(true)
	c.gen.Add(1)
}

// reset empties the cache. With zero (Close, once nothing runs) the
// plaintext is also overwritten; a live data path only drops it, since a reader
// may be copying out of a block at that moment.
func (c *blockCache) reset(zero bool) {
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		for e := s.lru.Front(); zero && e != nil; e = e.Next() {
			clear(e.Value.(*cacheEntry).data)
		}
		s.lru.Init()
		s.m = make(map[blockKey]*list.Element)
		c.bytes.Add(-s.size)
		s.size = 0
		s.mu.Unlock()
	}
}
