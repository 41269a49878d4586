package keys

import (
	"container/list"
	"sync"
	"time"
)

// Cache keeps unwrapped DEKs for a while so that reopening a file does not cost an HSM round
// trip. It OWNS the keys it holds: Put takes ownership of the DEK (the caller must not use or
// wipe it afterwards) and Get returns a fresh copy that the caller owns and must Wipe. So a
// key expiring or being evicted never pulls the rug from under an open file, and Wipe/Close
// zero every key the cache holds.
//
// Entries expire after ttl without a Get (checked by a janitor goroutine and on access);
// beyond max entries the least recently used one is evicted. ttl <= 0: no expiry; max <= 0:
// no bound. Safe for concurrent use. Close stops the janitor.
type Cache struct {
	ttl time.Duration
	max int

	mu      sync.Mutex
	lru     *list.List // front = most recently used; values are *cacheEntry
	entries map[[IDSize]byte]*list.Element
	closed  bool

	stop chan struct{}
	done chan struct{}
}

type cacheEntry struct {
	id      [IDSize]byte
	tag     [MACSize]byte // fingerprint of the record the DEK came from (Keyring); zero if unused
	dek     *DEK
	lastUse time.Time
}

// NewCache starts a cache. Call Close when done.
func NewCache(ttl time.Duration, max int) *Cache {
	c := &Cache{
		ttl:     ttl,
		max:     max,
		lru:     list.New(),
		entries: make(map[[IDSize]byte]*list.Element),
	}
	if ttl > 0 {
		c.stop = make(chan struct{})
		c.done = make(chan struct{})
		go c.janitor(janitorInterval(ttl))
	}
	return c
}

func janitorInterval(ttl time.Duration) time.Duration {
	iv := ttl / 4
	return min(max(iv, 5*time.Millisecond), time.Minute)
}

func (c *Cache) janitor(every time.Duration) {
	defer close(c.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case now := <-t.C:
			c.expire(now)
		}
	}
}

// expire wipes every entry unused for longer than ttl. Entries are ordered by last use, so it
// walks from the back and stops at the first live one.
func (c *Cache) expire(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for e := c.lru.Back(); e != nil; e = c.lru.Back() {
		ent := e.Value.(*cacheEntry)
		if now.Sub(ent.lastUse) <= c.ttl {
			return
		}
		c.removeLocked(e)
	}
}

func (c *Cache) removeLocked(e *list.Element) {
	ent := e.Value.(*cacheEntry)
	c.lru.Remove(e)
	delete(c.entries, ent.id)
	ent.dek.Wipe()
}

// Get returns a copy of the cached DEK of id (the caller owns and wipes it) and refreshes its
// expiry.
func (c *Cache) Get(id [IDSize]byte) (*DEK, bool) {
	d, _, ok := c.get(id)
	return d, ok
}

func (c *Cache) get(id [IDSize]byte) (*DEK, [MACSize]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[id]
	if !ok {
		return nil, [MACSize]byte{}, false
	}
	ent := e.Value.(*cacheEntry)
	now := time.Now()
	if c.ttl > 0 && now.Sub(ent.lastUse) > c.ttl {
		c.removeLocked(e)
		return nil, [MACSize]byte{}, false
	}
	d := ent.dek.Clone()
	if d == nil { // wiped behind our back: treat as absent
		c.removeLocked(e)
		return nil, [MACSize]byte{}, false
	}
	ent.lastUse = now
	c.lru.MoveToFront(e)
	return d, ent.tag, true
}

// Put stores dek for id, taking ownership of it. A previous entry for id is wiped. On a
// closed cache the DEK is wiped at once.
func (c *Cache) Put(id [IDSize]byte, dek *DEK) {
	c.put(id, [MACSize]byte{}, dek)
}

func (c *Cache) put(id [IDSize]byte, tag [MACSize]byte, dek *DEK) {
	if dek == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		dek.Wipe()
		return
	}
	if e, ok := c.entries[id]; ok {
		ent := e.Value.(*cacheEntry)
		if ent.dek != dek {
			ent.dek.Wipe()
		}
		ent.dek, ent.tag, ent.lastUse = dek, tag, time.Now()
		c.lru.MoveToFront(e)
		return
	}
	c.entries[id] = c.lru.PushFront(&cacheEntry{id: id, tag: tag, dek: dek, lastUse: time.Now()})
	for c.max > 0 && c.lru.Len() > c.max {
		c.removeLocked(c.lru.Back())
	}
}

// Drop wipes and removes the entry of id, if any.
func (c *Cache) Drop(id [IDSize]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[id]; ok {
		c.removeLocked(e)
	}
}

// Len is the number of cached keys.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// Wipe zeroes and removes every cached key now. The cache stays usable.
func (c *Cache) Wipe() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for e := c.lru.Back(); e != nil; e = c.lru.Back() {
		c.removeLocked(e)
	}
}

// Close wipes every key and stops the janitor. Later Puts wipe their DEK at once and Gets
// miss. Safe to call more than once.
func (c *Cache) Close() {
	c.mu.Lock()
	already := c.closed
	c.closed = true
	c.mu.Unlock()
	c.Wipe()
	if !already && c.stop != nil {
		close(c.stop)
		<-c.done
	}
}
