package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"coffer/fs/content"
	"coffer/fs/keyops"
	"coffer/fs/meta"
	"coffer/fs/volume"
	"coffer/keys"
	"coffer/test/softhsm"
)

// lcVol is a volume made by `coffer init` for the key-lifecycle command tests.
type lcVol struct {
	tok          *softhsm.Token
	dir, state   string
	remote       string
	env          []string
	secret       []byte
	passphrase   bool
	derive, user bool
}

func newLCVol(t *testing.T, passphrase, derive, perUser bool) *lcVol {
	t.Helper()
	l := &lcVol{dir: t.TempDir(), passphrase: passphrase, derive: derive, user: perUser}
	l.state, l.remote = filepath.Join(l.dir, "state"), filepath.Join(l.dir, "remote")
	args := []string{"init", "--state", l.state, "--remote", l.remote}
	if passphrase {
		l.secret = []byte("lifecycle passphrase 1")
		l.env = []string{"COFFER_PASSPHRASE=" + string(l.secret)}
		args = append(args, "--passphrase")
	} else {
		l.tok = softhsm.NewToken(t, "")
		l.secret = l.tok.PIN
		l.env = hsmEnv(l.tok, l.tok.PIN)
		args = append(args, "--hsm-module", l.tok.Module, "--hsm-token", l.tok.Label)
	}
	if derive {
		args = append(args, "--key-mode", "derive")
	}
	if perUser {
		args = append(args, "--kek-per-user")
	}
	if r := coffer(t, l.env, args...); r.code != 0 {
		t.Fatalf("init: %s", r.stderr)
	}
	return l
}

// populate opens the volume in this process and creates n files /<prefix><i> owned by uid,
// each with data (nil: empty) written through the data path; then closes it again.
func (l *lcVol) populate(t *testing.T, prefix string, n int, uid uint32, data []byte) []uint64 {
	t.Helper()
	ctx := context.Background()
	v, err := volume.Open(ctx, l.state, l.secret, volume.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close(ctx)
	kek := v.KEK()
	if v.PerUser {
		chain := keys.UserChain(uid)
		if cur, err := v.Catalog().CurrentKEK(ctx, chain); err == nil {
			kek = keys.KEKRef{Chain: chain, Version: cur.Version}
		} else {
			kek = keys.KEKRef{Chain: chain, Version: 1}
			if err := keyops.CreateKEKVersion(ctx, v, kek, "test", slog.Default()); err != nil {
				t.Fatal(err)
			}
		}
	}
	var inos []uint64
	for done := 0; done < n; done += 1000 {
		m := min(1000, n-done)
		recs := make([]meta.KeyRecord, m)
		fids := make([][16]byte, m)
		for i := range m {
			rand.Read(fids[i][:])
			rec, dek, err := keys.NewFileKey(ctx, v.Provider(), v.KeyMode, kek, keys.FileIdentity{Volume: v.ID, File: fids[i]})
			if err != nil {
				t.Fatal(err)
			}
			dek.Wipe()
			recs[i] = volume.CatalogRecord(rec)
		}
		now := time.Now().UnixNano()
		err := v.Catalog().Update(ctx, func(tx *meta.Tx) error {
			for i := range m {
				in, err := tx.CreateFile(meta.RootIno, []byte(prefix+strconv.Itoa(done+i)),
					meta.Inode{Mode: syscall.S_IFREG | 0o644, UID: uid, GID: uid, Atime: now, Mtime: now, Ctime: now, FileID: fids[i]}, &recs[i])
				if err != nil {
					return err
				}
				inos = append(inos, in.Ino)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if data != nil {
		s, err := content.New(v, content.Options{StagingDir: filepath.Join(l.state, "staging"), DirtyDelay: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		for _, ino := range inos {
			f, err := s.Open(ctx, ino)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt(ctx, data, 0); err != nil {
				t.Fatal(err)
			}
			if err := f.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			f.Release(ctx)
		}
		if left, err := s.Close(ctx); err != nil || left != 0 {
			t.Fatalf("close data path: %d %v", left, err)
		}
	}
	return inos
}

// count reads how many key records use chain/version (read-only, alongside a running command).
func (l *lcVol) count(t *testing.T, chain string, version uint32) int64 {
	t.Helper()
	c, err := meta.OpenReadOnly(context.Background(), l.state)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	n, err := c.CountKeysUsing(context.Background(), chain, version)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (l *lcVol) kekStates(t *testing.T) []string {
	t.Helper()
	c, err := meta.OpenReadOnly(context.Background(), l.state)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ks, err := c.ListKEKs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, k := range ks {
		out = append(out, keys.KEKRef{Chain: k.Chain, Version: k.Version}.String()+":"+k.State)
	}
	return out
}

func TestRotateCommand(t *testing.T) {
	l := newLCVol(t, false, false, false)
	l.populate(t, "f", 25, 0, []byte("hello"))

	r := coffer(t, l.env, "rotate", "--state", l.state)
	if r.code != 0 || !strings.Contains(r.stdout, "rotated: current KEK volume/v2; 25 key records re-wrapped") ||
		!strings.Contains(r.stdout, "older versions kept") {
		t.Fatalf("rotate (%d): %s %s", r.code, r.stdout, r.stderr)
	}
	if l.count(t, "", 2) != 25 {
		t.Fatal("records not on v2")
	}
	if n := len(l.tok.ObjectLabels(t)); n != 4 {
		t.Fatalf("token holds %d objects, want v1 and v2 (4)", n)
	}
	r = coffer(t, l.env, "rotate", "--state", l.state, "--retire-old")
	if r.code != 0 || !strings.Contains(r.stdout, "current KEK volume/v3") || !strings.Contains(r.stdout, "destroyed volume/v1, volume/v2") {
		t.Fatalf("rotate --retire-old (%d): %s %s", r.code, r.stdout, r.stderr)
	}
	labels := l.tok.ObjectLabels(t)
	if len(labels) != 2 || !strings.Contains(strings.Join(labels, " "), ":v3:") {
		t.Fatalf("token after retire: %v", labels)
	}
	r = coffer(t, nil, "audit", "--state", l.state)
	for _, ev := range []string{"rotate.start", "rotate.end", "kek.destroy"} {
		if !strings.Contains(r.stdout, ev) {
			t.Errorf("audit lacks %s:\n%s", ev, r.stdout)
		}
	}
	assertNoSecret(t, l.tok.PIN, l.state)

	// Wrong PIN: one clear line, nothing changes.
	r = coffer(t, hsmEnv(l.tok, []byte("000000000000")), "rotate", "--state", l.state)
	r.oneErrorLine(t, "wrong PIN")
	// The catalog held by another process that is not a daemon answering for it: refused
	// before any PIN is asked (a mounted volume is rotated by its daemon: test/e2e).
	cat, err := meta.Open(context.Background(), l.state)
	if err != nil {
		t.Fatal(err)
	}
	r = coffer(t, nil, "rotate", "--state", l.state)
	cat.Close()
	r.oneErrorLine(t, "in use by another coffer command")
	// The current KEK deleted from the token behind coffer's back.
	for _, lab := range l.tok.ObjectLabels(t) {
		l.tok.Tool(t, "--delete-object", "--type", "secrkey", "--label", lab)
	}
	r = coffer(t, l.env, "rotate", "--state", l.state)
	r.oneErrorLine(t, "not found on token")
	if got := l.kekStates(t); strings.Join(got, " ") != "volume/v1:destroyed volume/v2:destroyed volume/v3:active" {
		t.Fatalf("a failed rotate changed the catalog: %v", got)
	}
}

// TestRotateCommandDerive: on a derive-mode volume rotate re-encrypts every chunk (the
// engine is tested in fs/keyops; this is the command and its summary), and shred --now
// refuses, pointing at rotate --retire-old.
func TestRotateCommandDerive(t *testing.T) {
	l := newLCVol(t, true, true, false)
	l.populate(t, "d", 3, 0, bytes.Repeat([]byte("derive rotation "), 4096))
	r := coffer(t, l.env, "rotate", "--state", l.state, "--retire-old")
	if r.code != 0 || !strings.Contains(r.stdout, "3 chunks (0.2 MiB) re-encrypted into new objects, 3 old objects deleted") ||
		!strings.Contains(r.stdout, "destroyed volume/v1") {
		t.Fatalf("rotate (%d): %s %s", r.code, r.stdout, r.stderr)
	}
	if got := l.kekStates(t); !slices.Equal(got, []string{"volume/v1:destroyed", "volume/v2:active"}) {
		t.Errorf("KEK versions after rotate --retire-old: %v", got)
	}
	r = coffer(t, l.env, "shred", "--state", l.state, "--now", "/d0")
	r.oneErrorLine(t, "--now needs a wrap-mode volume")
	if !strings.Contains(r.stderr, "coffer rotate --retire-old") {
		t.Errorf("shred --now on derive does not say what to do instead: %s", r.stderr)
	}
}

// TestRotateKilled kills `coffer rotate` (SIGKILL) in the middle of re-wrapping and checks
// that a rerun finishes without making another KEK version.
func TestRotateKilled(t *testing.T) {
	l := newLCVol(t, false, false, false)
	const n = 40000
	l.populate(t, "f", n, 0, nil)
	cmd := exec.Command(binary, "rotate", "--state", l.state)
	cmd.Env = append(os.Environ(), l.env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	var at int64
	for {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("rotation never started re-wrapping")
		}
		if at = l.count(t, "", 2); at > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	at = l.count(t, "", 2)
	if at == n {
		t.Fatal("the rotation finished before it was killed; the test proves nothing")
	}
	t.Logf("killed after %d of %d records", at, n)
	r := coffer(t, l.env, "rotate", "--state", l.state)
	if r.code != 0 || !strings.Contains(r.stdout, "finished an interrupted rotation: current KEK volume/v2") {
		t.Fatalf("rerun (%d): %s %s", r.code, r.stdout, r.stderr)
	}
	if l.count(t, "", 2) != n || l.count(t, "", 1) != 0 {
		t.Fatal("not every record is on v2 after the rerun")
	}
	if got := strings.Join(l.kekStates(t), " "); got != "volume/v1:old volume/v2:active" {
		t.Fatalf("KEK versions after the rerun: %s", got)
	}
	if k := len(l.tok.ObjectLabels(t)); k != 4 {
		t.Fatalf("token holds %d objects, want 4 (v1, v2)", k)
	}
}
