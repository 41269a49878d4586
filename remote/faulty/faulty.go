// Package faulty is a remote.Store decorator that injects faults for tests:
// errors (every call, a probability, or the next N calls), lost replies,
// latency, short and corrupted reads, and switches that make the remote
// "down" (refusing every call at once) or "hanging" (every call blocks until
// its context ends).
//
// Decisions come from a PCG generator seeded by the caller, in call order,
// so a single-goroutine test is reproducible; with concurrent callers the
// order of calls, and so which call is hit, is up to the scheduler.
//
//	f := faulty.New(st, 1)
//	f.Inject(faulty.Fault{Ops: faulty.Put, Count: 2})        // next 2 Puts fail
//	f.Inject(faulty.Fault{Ops: faulty.GetRange, Prob: 0.1, Kind: faulty.Corrupt})
//	f.SetDown(true)                                          // unreachable
package faulty

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"coffer/remote"
)

// Op is a set of Store operations.
type Op uint8

// The operations, to combine with |.
const (
	Put Op = 1 << iota
	GetRange
	Stat
	Delete
	List
	All = Put | GetRange | Stat | Delete | List
)

func (o Op) String() string {
	var parts []string
	for _, p := range []struct {
		op   Op
		name string
	}{{Put, "put"}, {GetRange, "get"}, {Stat, "stat"}, {Delete, "delete"}, {List, "list"}} {
		if o&p.op != 0 {
			parts = append(parts, p.name)
		}
	}
	return strings.Join(parts, "|")
}

// Kind is what an injected fault does.
type Kind int

const (
	// Error fails the call with Fault.Err before it reaches the store.
	Error Kind = iota
	// LostReply runs the call, then fails it with Fault.Err: the store
	// changed but the caller is told it did not (a reply lost in transit).
	LostReply
	// Delay waits Fault.Latency (or until the context ends), then runs
	// the call.
	Delay
	// ShortRead (GetRange) fails as if the connection was cut mid-body:
	// an error wrapping io.ErrUnexpectedEOF, which remote retries.
	ShortRead
	// Truncate (GetRange) returns the data cut short with a nil error: a
	// broken backend that breaks the Store contract.
	Truncate
	// Corrupt (GetRange) returns the data with one bit flipped and a nil
	// error: corruption in transit or at rest.
	Corrupt
)

// Fault describes one injected fault.
type Fault struct {
	Ops     Op            // operations it applies to; 0 means All
	Prefix  string        // only names starting with this ("" = all)
	Kind    Kind          // what it does (default Error)
	Prob    float64       // chance per matching call; 0 means every call
	Count   int           // how many calls it hits before it is removed; 0 = no limit
	Err     error         // for Error and LostReply; nil means ErrInjected
	Latency time.Duration // for Delay
}

// ErrInjected is the default injected error. remote.IsTransient reports it
// as transient, like a network failure.
var ErrInjected = errors.New("faulty: injected fault")

// ErrDown is returned by every call while the store is down. It wraps a
// "connection refused" net.OpError, like an unreachable server.
var ErrDown = fmt.Errorf("faulty: remote is down: %w", &net.OpError{
	Op: "dial", Net: "tcp",
	Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9},
	Err:  os.NewSyscallError("connect", syscall.ECONNREFUSED),
})

// Store is the fault-injecting decorator. Its methods are safe for
// concurrent use.
type Store struct {
	inner remote.Store

	mu       sync.Mutex
	rng      *rand.Rand
	faults   []*Fault
	down     bool
	hang     bool
	calls    map[Op]int
	injected map[Op]int
}

// New wraps inner; seed makes the fault decisions reproducible.
func New(inner remote.Store, seed uint64) *Store {
	return &Store{
		inner:    inner,
		rng:      rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		calls:    map[Op]int{},
		injected: map[Op]int{},
	}
}

// Inject adds a fault; faults are tried in the order added, and the first
// that fires on a call is the one applied. The returned func removes it.
func (s *Store) Inject(f Fault) (remove func()) {
	if f.Ops == 0 {
		f.Ops = All
	}
	p := &f
	s.mu.Lock()
	s.faults = append(s.faults, p)
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		for i, q := range s.faults {
			if q == p {
				s.faults = append(s.faults[:i], s.faults[i+1:]...)
				return
			}
		}
	}
}

// SetDown makes every call fail at once with ErrDown (true) or lets calls
// through again (false).
func (s *Store) SetDown(down bool) {
	s.mu.Lock()
	s.down = down
	s.mu.Unlock()
}

// SetHang makes every call block until its context ends, like a remote
// that accepts connections and never answers.
func (s *Store) SetHang(hang bool) {
	s.mu.Lock()
	s.hang = hang
	s.mu.Unlock()
}

// Reset removes every fault and brings the store up.
func (s *Store) Reset() {
	s.mu.Lock()
	s.faults, s.down, s.hang = nil, false, false
	s.mu.Unlock()
}

// Calls is how many calls of op (a single operation) were made.
func (s *Store) Calls(op Op) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[op]
}

// Injected is how many calls of op were hit by a fault, down or hang.
func (s *Store) Injected(op Op) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.injected[op]
}

// Inner is the wrapped store.
func (s *Store) Inner() remote.Store { return s.inner }

// decide counts the call and picks the fault to apply, if any.
func (s *Store) decide(op Op, name string) (f Fault, hit, down, hang bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[op]++
	if s.down || s.hang {
		s.injected[op]++
		return Fault{}, false, s.down, s.hang && !s.down
	}
	for i, p := range s.faults {
		if p.Ops&op == 0 || !strings.HasPrefix(name, p.Prefix) {
			continue
		}
		if p.Kind >= ShortRead && op != GetRange {
			continue
		}
		if p.Prob > 0 && s.rng.Float64() >= p.Prob {
			continue
		}
		if p.Count > 0 {
			p.Count--
			if p.Count == 0 {
				s.faults = append(s.faults[:i], s.faults[i+1:]...)
			}
		}
		s.injected[op]++
		return *p, true, false, false
	}
	return Fault{}, false, false, false
}

func (s *Store) intn(n int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rng.IntN(n)
}

func wrap(op Op, name string, err error) error {
	return fmt.Errorf("remote: %s %s: %w", op, name, err)
}

// before applies down, hang, Error and Delay; it returns the fault to
// apply after the call (LostReply and the read faults), if any.
func (s *Store) before(ctx context.Context, op Op, name string) (*Fault, error) {
	f, hit, down, hang := s.decide(op, name)
	switch {
	case down:
		return nil, wrap(op, name, ErrDown)
	case hang:
		<-ctx.Done()
		return nil, wrap(op, name, ctx.Err())
	case !hit:
		return nil, nil
	}
	switch f.Kind {
	case Error:
		return nil, wrap(op, name, errOr(f.Err))
	case Delay:
		t := time.NewTimer(f.Latency)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return nil, wrap(op, name, ctx.Err())
		}
		return nil, nil
	}
	return &f, nil
}

func errOr(err error) error {
	if err == nil {
		return ErrInjected
	}
	return err
}

func (s *Store) Put(ctx context.Context, name string, data []byte) error {
	f, err := s.before(ctx, Put, name)
	if err != nil {
		return err
	}
	err = s.inner.Put(ctx, name, data)
	if err == nil && f != nil && f.Kind == LostReply {
		return wrap(Put, name, errOr(f.Err))
	}
	return err
}

func (s *Store) GetRange(ctx context.Context, name string, off, n int64) ([]byte, error) {
	f, err := s.before(ctx, GetRange, name)
	if err != nil {
		return nil, err
	}
	data, err := s.inner.GetRange(ctx, name, off, n)
	if err != nil || f == nil {
		return data, err
	}
	switch f.Kind {
	case LostReply:
		return nil, wrap(GetRange, name, errOr(f.Err))
	case ShortRead:
		got := 0
		if len(data) > 0 {
			got = s.intn(len(data))
		}
		return nil, wrap(GetRange, name, fmt.Errorf("connection cut after %d of %d bytes: %w", got, len(data), io.ErrUnexpectedEOF))
	case Truncate:
		if len(data) > 0 {
			data = data[:s.intn(len(data))]
		}
	case Corrupt:
		if len(data) > 0 {
			bit := s.intn(len(data) * 8)
			data = append([]byte(nil), data...)
			data[bit/8] ^= 1 << (bit % 8)
		}
	}
	return data, nil
}

func (s *Store) Stat(ctx context.Context, name string) (int64, error) {
	f, err := s.before(ctx, Stat, name)
	if err != nil {
		return 0, err
	}
	size, err := s.inner.Stat(ctx, name)
	if err == nil && f != nil && f.Kind == LostReply {
		return 0, wrap(Stat, name, errOr(f.Err))
	}
	return size, err
}

func (s *Store) Delete(ctx context.Context, name string) error {
	f, err := s.before(ctx, Delete, name)
	if err != nil {
		return err
	}
	err = s.inner.Delete(ctx, name)
	if err == nil && f != nil && f.Kind == LostReply {
		return wrap(Delete, name, errOr(f.Err))
	}
	return err
}

func (s *Store) List(ctx context.Context, prefix string, fn func(name string, size int64) error) error {
	f, err := s.before(ctx, List, prefix)
	if err != nil {
		return err
	}
	err = s.inner.List(ctx, prefix, fn)
	if err == nil && f != nil && f.Kind == LostReply {
		return wrap(List, prefix, errOr(f.Err))
	}
	return err
}

func (s *Store) String() string { return "faulty(" + s.inner.String() + ")" }

// Close closes the wrapped store; faults do not apply to it.
func (s *Store) Close(ctx context.Context) error { return s.inner.Close(ctx) }
