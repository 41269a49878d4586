package format

import (
	"strings"
	"testing"
)

func TestIDTextRoundTrip(t *testing.T) {
	seen := map[ID]bool{}
	for range 1000 {
		id, err := NewID()
		if err != nil {
			t.Fatal(err)
		}
		if seen[id] || id.IsZero() {
			t.Fatalf("NewID repeated or zero: %x", id)
		}
		seen[id] = true
		s := id.String()
		if len(s) != IDTextLen || strings.Trim(s, "abcdefghijklmnopqrstuvwxyz234567") != "" {
			t.Fatalf("String() = %q: want 26 chars of [a-z2-7]", s)
		}
		back, err := ParseID(s)
		if err != nil || back != id {
			t.Fatalf("ParseID(%q) = %x, %v; want %x", s, back, err, id)
		}
		name := ObjectName(id)
		if name != "c/"+s[:2]+"/"+s {
			t.Fatalf("ObjectName = %q", name)
		}
		if got, err := ParseObjectName(name); err != nil || got != id {
			t.Fatalf("ParseObjectName(%q) = %x, %v", name, got, err)
		}
	}
}

func TestIDFromBytes(t *testing.T) {
	raw := seq(0xc0, 16)
	id, err := IDFromBytes(raw)
	if err != nil || id != idOf(raw) {
		t.Fatalf("IDFromBytes = %x, %v", id, err)
	}
	raw[0] = 0 // the ID is a copy
	if id[0] != 0xc0 {
		t.Fatal("IDFromBytes aliases its input")
	}
	for _, n := range []int{0, 15, 17} {
		if _, err := IDFromBytes(make([]byte, n)); err == nil {
			t.Errorf("IDFromBytes accepted %d bytes", n)
		}
	}
}

func TestParseIDRejects(t *testing.T) {
	good := idOf(seq(0xc0, 16)).String() // yda4fq6eyxdmpsgjzlf4ztooz4
	for _, s := range []string{
		"",
		good[:25],
		good + "a",
		strings.ToUpper(good),
		good[:25] + "5", // the last char carries 3 data bits and 2 bits that must be zero
		good[:25] + "b", // same: low bit set
		good[:10] + "1" + good[11:],
		good[:10] + "=" + good[11:],
		good[:10] + "é"[:1] + good[11:],
	} {
		if id, err := ParseID(s); err == nil {
			t.Errorf("ParseID(%q) = %x, want an error", s, id)
		}
	}
	for _, s := range []string{
		"c/yd/" + good[:25],
		"c/ya/" + good,
		"d/yd/" + good,
		"c/yd" + good,
		"c/yd//" + good,
		"/c/yd/" + good,
		"c/yd/" + good + "/",
		"c/YD/" + strings.ToUpper(good),
	} {
		if id, err := ParseObjectName(s); err == nil {
			t.Errorf("ParseObjectName(%q) = %x, want an error", s, id)
		}
	}
}
