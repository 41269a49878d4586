package passphrase

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestStoredParamsOutOfRange: a catalog's parameter blob with any cost field outside the
// limits is refused, naming the field and the bound, before any Argon2id work (timed), both
// when decoded and when handed to Open as a struct.
func TestStoredParamsOutOfRange(t *testing.T) {
	good := Params{Cost: DefaultCost}
	enc, err := good.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	set32 := func(off int, v uint32) func([]byte) {
		return func(b []byte) { binary.BigEndian.PutUint32(b[off:], v) }
	}
	set8 := func(off int, v byte) func([]byte) { return func(b []byte) { b[off] = v } }
	for _, c := range []struct {
		name string
		mut  func([]byte)
		want string // in the message
	}{
		{"time 0", set32(6, 0), "time 0 < 1"},
		{"time 11", set32(6, 11), "time 11 > 10"},
		{"time 64", set32(6, 64), "time 64 > 10"},
		{"time 2^32-1", set32(6, 0xffffffff), "time 4294967295 > 10"},
		{"memory 8191 KiB", set32(10, 8191), "memory 8191 KiB < 8192"},
		{"memory 1 GiB + 1 KiB", set32(10, 1<<20+1), "memory 1048577 KiB > 1048576"},
		{"memory 4 GiB", set32(10, 4<<20), "memory 4194304 KiB > 1048576"},
		{"memory 2^32-1 KiB", set32(10, 0xffffffff), "memory 4294967295 KiB > 1048576"},
		{"threads 0", set8(14, 0), "threads 0 < 1"},
		{"threads 17", set8(14, 17), "threads 17 > 16"},
		{"threads 255", set8(14, 255), "threads 255 > 16"},
	} {
		b := append([]byte(nil), enc...)
		c.mut(b)
		var p Params
		start := time.Now()
		err := p.UnmarshalBinary(b)
		if d := time.Since(start); d > 100*time.Millisecond {
			t.Errorf("%s: refusing took %v", c.name, d)
		}
		if err == nil {
			// Do not go on to Open: on a build without the limits it would run the KDF.
			t.Errorf("%s: stored parameters accepted", c.name)
			continue
		}
		if !errors.Is(err, ErrOutOfRange) {
			t.Errorf("%s: %v does not wrap ErrOutOfRange", c.name, err)
		}
		if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "stored parameters are out of range") {
			t.Errorf("%s: message %q does not say %q", c.name, err, c.want)
		}

		// The same cost given to Open directly: refused before any derivation.
		var q Params
		q.Time = binary.BigEndian.Uint32(b[6:10])
		q.MemoryKiB = binary.BigEndian.Uint32(b[10:14])
		q.Threads = b[14]
		for name, open := range map[string]func() error{
			"Open": func() error { _, err := Open([]byte("pw"), randomVolume(), q); return err },
			"OpenContext": func() error {
				_, err := OpenContext(context.Background(), []byte("pw"), randomVolume(), q)
				return err
			},
			"Create": func() error { _, _, err := Create([]byte("pw"), randomVolume(), q.Cost); return err },
		} {
			start := time.Now()
			err := open()
			if d := time.Since(start); d > 100*time.Millisecond {
				t.Errorf("%s: %s took %v", c.name, name, d)
			}
			if !errors.Is(err, ErrOutOfRange) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s: %s = %v; want an out-of-range error saying %q", c.name, name, err, c.want)
			}
		}
	}
	if err := (Cost{Time: 3, MemoryKiB: 4 << 20, Threads: 4}).Validate(); err == nil ||
		!strings.Contains(err.Error(), "memory 4194304 KiB > 1048576") {
		t.Errorf("Validate: %v", err)
	}
}

// TestLimitsHoldDefaults: the defaults and the limits themselves are accepted, and the
// defaults lie well inside.
func TestLimitsHoldDefaults(t *testing.T) {
	for _, c := range []Cost{
		DefaultCost,
		{Time: MinTime, MemoryKiB: MinMemoryKiB, Threads: MinThreads},
		{Time: MaxTime, MemoryKiB: MaxMemoryKiB, Threads: MaxThreads},
	} {
		b, err := Params{Cost: c}.MarshalBinary()
		if err != nil {
			t.Fatalf("%+v: %v", c, err)
		}
		var p Params
		if err := p.UnmarshalBinary(b); err != nil || p.Cost != c {
			t.Fatalf("%+v: round trip %+v %v", c, p.Cost, err)
		}
	}
	d := DefaultCost
	if d.Time*3 > MaxTime || d.MemoryKiB*8 > MaxMemoryKiB || d.MemoryKiB < 4*MinMemoryKiB || d.Threads*2 > MaxThreads {
		t.Errorf("defaults %+v too close to the limits", d)
	}
}

// TestOpenContextCancel: a derivation whose context ends returns at once with the context's
// error, and a context already ended does no work at all.
func TestOpenContextCancel(t *testing.T) {
	vol := randomVolume()
	_, params := create(t, "pw", vol)
	heavy := params
	heavy.Cost = Cost{Time: MaxTime, MemoryKiB: 64 << 10, Threads: 1} // about a second or more

	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(30*time.Millisecond, cancel)
	start := time.Now()
	_, err := OpenContext(ctx, []byte("pw"), vol, heavy)
	took := time.Since(start)
	t.Logf("cancelled after 30 ms, returned after %v: %v", took, err)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if took > 300*time.Millisecond {
		t.Errorf("OpenContext returned %v after its context was cancelled 30 ms in", took)
	}

	start = time.Now()
	if _, _, err := CreateContext(ctx, []byte("pw"), vol, heavy.Cost); !errors.Is(err, context.Canceled) {
		t.Errorf("CreateContext with an ended context: %v", err)
	}
	p, _ := create(t, "pw", vol)
	if _, _, err := p.ChangePassphraseContext(ctx, []byte("new"), heavy.Cost, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("ChangePassphraseContext with an ended context: %v", err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("ended contexts still took %v", d)
	}

	// A live context gives the same result as Open.
	q, err := OpenContext(context.Background(), []byte("pw"), vol, params)
	if err != nil {
		t.Fatal(err)
	}
	q.Wipe()
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Minute)
	defer cancel2()
	q, err = OpenContext(ctx2, []byte("pw"), vol, params)
	if err != nil {
		t.Fatal(err)
	}
	q.Wipe()
	if _, err := OpenContext(ctx2, []byte("wrong"), vol, params); err == nil {
		t.Fatal("wrong passphrase accepted")
	}
}
