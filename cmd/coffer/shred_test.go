package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"coffer/fs/meta"
)

func (l *lcVol) link(t *testing.T, from, dir, name string) {
	t.Helper()
	ctx := context.Background()
	c, err := meta.Open(ctx, l.state)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	now := time.Now().UnixNano()
	in, err := c.Lookup(ctx, meta.RootIno, []byte(from))
	if err != nil {
		t.Fatal(err)
	}
	parent := uint64(meta.RootIno)
	if dir != "" {
		d, err := c.Mkdir(ctx, meta.RootIno, []byte(dir), meta.Inode{Mode: 0o40755, Atime: now, Mtime: now, Ctime: now})
		if err != nil {
			t.Fatal(err)
		}
		parent = d.Ino
	}
	if _, err := c.Link(ctx, in.Ino, parent, []byte(name), now); err != nil {
		t.Fatal(err)
	}
}

func TestShredCommand(t *testing.T) {
	l := newLCVol(t, false, false, false)
	l.populate(t, "a", 2, 0, []byte(strings.Repeat("secret ", 5000)))
	l.link(t, "a0", "d", "hard")
	objs := len(listFiles(t, filepath.Join(l.remote, "c")))

	// A hard-linked file, by its second name: both names go, its objects are deleted.
	r := coffer(t, l.env, "shred", "--state", l.state, "/d/hard")
	if r.code != 0 || !strings.Contains(r.stdout, "shredded 1 files (2 entries removed); 1 objects deleted from the remote") ||
		!strings.Contains(r.stdout, "until KEK volume/v1 is destroyed") {
		t.Fatalf("shred (%d): %s %s", r.code, r.stdout, r.stderr)
	}
	if got := len(listFiles(t, filepath.Join(l.remote, "c"))); got != objs-1 {
		t.Fatalf("remote objects: %d before, %d after", objs, got)
	}
	r = coffer(t, l.env, "shred", "--state", l.state, "/a0")
	r.oneErrorLine(t, "/a0: not found in the volume")

	// --now: final at once.
	r = coffer(t, l.env, "shred", "--state", l.state, "--now", "a1")
	if r.code != 0 || !strings.Contains(r.stdout, "final: 0 other key records re-wrapped to volume/v2 and volume/v1 destroyed") {
		t.Fatalf("shred --now (%d): %s %s", r.code, r.stdout, r.stderr)
	}
	if labels := l.tok.ObjectLabels(t); len(labels) != 2 || !strings.Contains(labels[0], ":v2:") {
		t.Fatalf("token after shred --now: %v", labels)
	}
	r = coffer(t, nil, "audit", "--state", l.state)
	if strings.Count(r.stdout, "key.shred") != 2 {
		t.Errorf("audit:\n%s", r.stdout)
	}
	// Usage errors.
	if r = coffer(t, l.env, "shred", "--state", l.state); r.code != 2 {
		t.Errorf("shred without a target: exit %d %s", r.code, r.stderr)
	}
	if r = coffer(t, l.env, "shred", "--state", l.state, "--user", "x"); r.code != 2 {
		t.Errorf("--user x: exit %d", r.code)
	}
}

func TestShredUserCommand(t *testing.T) {
	l := newLCVol(t, false, false, true)
	l.populate(t, "mine", 3, 1000, []byte("mine"))
	l.populate(t, "theirs", 2, 2000, []byte("theirs"))
	r := coffer(t, l.env, "shred", "--state", l.state, "--user", "1000")
	if r.code != 0 || !strings.Contains(r.stdout, "shredded uid 1000: KEK chain u1000 destroyed (u1000/v1), 3 files removed") {
		t.Fatalf("shred --user (%d): %s %s", r.code, r.stdout, r.stderr)
	}
	labels := strings.Join(l.tok.ObjectLabels(t), " ")
	if strings.Contains(labels, ":u1000:") || !strings.Contains(labels, ":u2000:") {
		t.Fatalf("token after shred --user: %s", labels)
	}
	if l.count(t, "u2000", 1) != 2 {
		t.Fatal("the other user's keys were touched")
	}
	// Not a per-user volume: refused.
	l2 := newLCVol(t, true, false, false)
	r = coffer(t, l2.env, "shred", "--state", l2.state, "--user", "1000")
	r.oneErrorLine(t, "--kek-per-user")
}

func TestShredVolumeCommand(t *testing.T) {
	l := newLCVol(t, false, false, false)
	l.populate(t, "f", 2, 0, []byte("x"))
	// Not a terminal and no --yes: refused, nothing destroyed.
	r := coffer(t, l.env, "shred", "--state", l.state, "--volume")
	if r.code != 2 || !strings.Contains(r.stderr, "--yes") {
		t.Fatalf("--volume without --yes: %d %s", r.code, r.stderr)
	}
	if n := len(l.tok.ObjectLabels(t)); n != 2 {
		t.Fatalf("refused --volume changed the token: %d objects", n)
	}
	r = coffer(t, l.env, "shred", "--state", l.state, "--volume", "--yes")
	if r.code != 0 || !strings.Contains(r.stdout, "shredded: 1 KEK versions destroyed (volume/v1)") {
		t.Fatalf("--volume --yes (%d): %s %s", r.code, r.stdout, r.stderr)
	}
	if n := len(l.tok.ObjectLabels(t)); n != 0 {
		t.Fatalf("token still holds %d objects", n)
	}
	r = coffer(t, l.env, "rotate", "--state", l.state)
	if r.code == 0 {
		t.Fatal("a shredded volume rotated")
	}
}
