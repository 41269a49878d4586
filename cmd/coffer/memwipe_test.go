package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	bin "encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/argon2"
	"golang.org/x/sys/unix"

	"coffer/crypto/format"
	"coffer/fs/content"
	"coffer/fs/volume"
	"coffer/keys"
	"coffer/keys/passphrase"
	"coffer/test/softhsm"
)

// TestWipeLeavesNoKeyInMemory proves `coffer lock` and unmount erase every key from the
// daemon: with files read and written (so DEKs, object subkeys, staging keys and their AES
// key schedules are all in use), it locks the mount, and scans the daemon's whole memory
// (/proc/PID/maps + /proc/PID/mem) for each of them, the PIN or passphrase, the Argon2id
// output, the KWK and the KEK; five times, unlocking and using the files in between; then
// once more with the daemon held after its final wipe, just before it exits. Before the
// first lock the same scan must find the keys in use: the scanner is shown to see them.
func TestWipeLeavesNoKeyInMemory(t *testing.T) {
	for _, mode := range []string{"hsm", "passphrase"} {
		t.Run(mode, func(t *testing.T) { testWipe(t, mode) })
	}
}

type wipeVol struct {
	state, mnt, hold, sealLog string
	env                       []string // for mount/unlock
	secret                    []byte
	files                     map[string][]byte // name -> content
}

func testWipe(t *testing.T, mode string) {
	// FIPS 197 appendix A.3: the expansion the scan looks for is the real one.
	fips, _ := hex.DecodeString("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
	if w := expandAES256(fips); w[8] != 0x9ba35411 || w[59] != 0x706c631e {
		t.Fatalf("AES-256 key expansion: w[8]=%08x w[59]=%08x, want 9ba35411 706c631e", w[8], w[59])
	}
	dir := t.TempDir()
	w := &wipeVol{state: filepath.Join(dir, "state"), mnt: filepath.Join(dir, "mnt"),
		hold: filepath.Join(dir, "hold"), sealLog: filepath.Join(dir, "seal.log"), files: map[string][]byte{}}
	os.Mkdir(w.mnt, 0o755)
	os.Mkdir(w.hold, 0o700)
	var initArgs []string
	if mode == "hsm" {
		tok := softhsm.NewToken(t, "")
		w.secret = tok.PIN
		w.env = hsmEnv(tok, tok.PIN)
		initArgs = append(hsmArgs(tok, w.state, filepath.Join(dir, "remote")), "--key-mode", "wrap")
	} else {
		w.secret = []byte("memory scan passphrase " + hex.EncodeToString(randBytes(12)))
		w.env = []string{"COFFER_PASSPHRASE=" + string(w.secret)}
		initArgs = []string{"init", "--state", w.state, "--remote", filepath.Join(dir, "remote"), "--passphrase"}
	}
	if r := coffer(t, w.env, initArgs...); r.code != 0 {
		t.Fatalf("init: %s", r.stderr)
	}
	t.Cleanup(func() {
		os.WriteFile(filepath.Join(w.hold, "release"), nil, 0o600)
		exec.Command("fusermount3", "-u", "-z", w.mnt).Run()
		for _, pid := range daemonPIDs(w.state) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	mountEnv := append([]string{"COFFER_TEST_HOLD_EXIT=" + w.hold, content.SealLogEnv + "=" + w.sealLog}, w.env...)

	// Files of several shapes: one block, several blocks, two chunks.
	w.mount(t, mountEnv)
	for i := range 12 {
		size := 1 + rand.IntN(100<<10)
		if i == 0 {
			size = 5 << 20
		}
		name := fmt.Sprintf("f%02d", i)
		w.files[name] = randBytes(size)
		if err := os.WriteFile(filepath.Join(w.mnt, name), w.files[name], 0o644); err != nil {
			t.Fatal(err)
		}
	}
	w.unmount(t)

	known := learnKeys(t, mode, w.state, w.secret)
	pid := w.mount(t, mountEnv)
	checkHardening(t, "the daemon", pid, w.secret)
	for round := 1; round <= 5; round++ {
		w.use(t, round)
		pats := known.patterns(t, w.sealLog)
		if round == 1 {
			// The scanner must see keys that are in use, or finding none later proves nothing.
			hits := scanMemory(t, pid, pats)
			for _, kind := range []string{"DEK", "object subkey", "object subkey AES schedule"} {
				if hits.count(kind) == 0 {
					t.Fatalf("before the lock the scan found no %s in the daemon (found: %s): the scanner is blind", kind, hits)
				}
			}
			if mode == "passphrase" && hits.count("KEK") == 0 {
				t.Fatalf("before the lock the scan found no KEK in the daemon (found: %s)", hits)
			}
			t.Logf("before the lock: %s", hits)
		}
		r := coffer(t, nil, "lock", w.mnt)
		if r.code != 0 {
			t.Fatalf("round %d: lock: %s", round, r.stderr)
		}
		if hits := scanMemory(t, pid, pats); len(hits.found) > 0 {
			t.Errorf("round %d: after coffer lock the daemon's memory still holds: %s", round, hits)
		} else {
			t.Logf("round %d: after lock none of %d secrets found (%s)", round, len(pats), strings.TrimSpace(r.stdout))
		}
		if r := coffer(t, w.env, "unlock", w.mnt); r.code != 0 {
			t.Fatalf("round %d: unlock: %s", round, r.stderr)
		}
	}
	w.use(t, 6)
	pats := known.patterns(t, w.sealLog)
	done := make(chan result, 1)
	go func() { done <- coffer(t, nil, "unmount", w.mnt) }()
	held := filepath.Join(w.hold, "held")
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(held); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon never reached its exit hold")
		}
	}
	if hits := scanMemory(t, pid, pats); len(hits.found) > 0 {
		t.Errorf("after the unmount wipe, before exit, the daemon's memory still holds: %s", hits)
	}
	os.WriteFile(filepath.Join(w.hold, "release"), nil, 0o600)
	if r := <-done; r.code != 0 {
		t.Fatalf("unmount: %s", r.stderr)
	}
	waitGone(t, pid)
}

func (w *wipeVol) mount(t *testing.T, env []string) int {
	t.Helper()
	os.Remove(filepath.Join(w.hold, "release"))
	os.Remove(filepath.Join(w.hold, "held"))
	if r := coffer(t, env, "mount", "--state", w.state, w.mnt); r.code != 0 {
		t.Fatalf("mount: %s", r.stderr)
	}
	pids := daemonPIDs(w.state)
	if len(pids) != 1 {
		t.Fatalf("daemons: %v", pids)
	}
	return pids[0]
}

func (w *wipeVol) unmount(t *testing.T) {
	t.Helper()
	os.WriteFile(filepath.Join(w.hold, "release"), nil, 0o600)
	if r := coffer(t, nil, "unmount", w.mnt); r.code != 0 {
		t.Fatalf("unmount: %s", r.stderr)
	}
	for _, pid := range daemonPIDs(w.state) {
		waitGone(t, pid)
	}
}

// use reads every file back and overwrites a few bytes of some, so ciphers, DEKs and
// staging keys are live in the daemon (the page cache is dropped first so reads reach it).
func (w *wipeVol) use(t *testing.T, round int) {
	t.Helper()
	for name, want := range w.files {
		p := filepath.Join(w.mnt, name)
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Fatalf("round %d: open %s: %v", round, name, err)
		}
		if round%2 == 1 || name == "f01" {
			off := rand.IntN(len(want))
			patch := randBytes(min(100, len(want)-off))
			if _, err := f.WriteAt(patch, int64(off)); err != nil {
				t.Fatalf("round %d: write %s: %v", round, name, err)
			}
			copy(want[off:], patch)
			if err := f.Sync(); err != nil {
				t.Fatalf("round %d: fsync %s: %v", round, name, err)
			}
		}
		dropPageCache(f)
		got, err := io.ReadAll(f)
		f.Close()
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("round %d: read %s: %d bytes, err %v (content matches: %v)", round, name, len(got), err, bytes.Equal(got, want))
		}
	}
}

func dropPageCache(f *os.File) {
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}

// checkHardening checks what the wipe relies on in a running coffer process (the daemon, a
// foreground mount's parent, an offline key command): its memory locked (never swapped), no
// core files, the settings that make freed memory get overwritten, and the secret in neither
// its environment nor its argv.
func checkHardening(t *testing.T, who string, pid int, secret []byte) {
	t.Helper()
	read := func(name string) string {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	status, limits := read("status"), read("limits")
	environ, cmdline := read("environ"), read("cmdline")
	for _, line := range strings.Split(status, "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmLck:" && os.Geteuid() == 0 && f[1] == "0" {
			t.Errorf("%s runs as root but locked no memory (mlockall): %s", who, line)
		}
	}
	for _, line := range strings.Split(limits, "\n") {
		if f := strings.Fields(line); strings.HasPrefix(line, "Max core file size") && (len(f) < 6 || f[4] != "0" || f[5] != "0") {
			t.Errorf("%s may write core files: %q", who, line)
		}
	}
	env := strings.Split(environ, "\x00")
	for _, want := range []string{"GODEBUG=clobberfree=1", "GLIBC_TUNABLES=glibc.malloc.tcache_count=0", "MALLOC_PERTURB_=165"} {
		if !slices.Contains(env, want) {
			t.Errorf("%s's environment lacks %s", who, want)
		}
	}
	if strings.Contains(environ, string(secret)) || strings.Contains(cmdline, string(secret)) {
		t.Errorf("the PIN or passphrase is in %s's environment or argv", who)
	}
}

// TestForegroundParentHoldsNoSecret: `coffer mount --foreground` stays for the whole mount as
// the daemon's parent. Once the mount is ready it holds no copy of the passphrase (heap,
// stack, or the environment block /proc/PID/environ shows, which os.Unsetenv does not clear),
// and it is hardened as the daemon is.
func TestForegroundParentHoldsNoSecret(t *testing.T) {
	state, mnt, env := passVolume(t)
	secret := []byte(strings.TrimPrefix(env[0], "COFFER_PASSPHRASE="))
	cmd := exec.Command(binary, "mount", "--foreground", "--state", state, mnt)
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "COFFER_") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		coffer(t, nil, "unmount", mnt)
		cmd.Wait()
	}()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "mounted ") {
		t.Fatalf("mount --foreground: %q, %v", line, err)
	}
	go io.Copy(io.Discard, out)
	pid := cmd.Process.Pid
	checkHardening(t, "the foreground parent", pid, secret)
	hits := scanMemory(t, pid, []secretPattern{{"passphrase", secret}, {"state path (control)", []byte(state)}})
	if hits.count("state path (control)") == 0 {
		t.Fatalf("the scan did not find the state path in the parent: the scanner is blind (%s)", hits)
	}
	if n := hits.count("passphrase"); n > 0 {
		t.Errorf("the foreground parent still holds the passphrase %d times once the mount is ready", n)
	}
}

// TestOfflineCommandHoldsNoKey: an offline key command (rotate on an unmounted passphrase
// volume, which unwraps and re-wraps every DEK) is hardened as the daemon is, and once it is
// done (held just before exit) its memory holds neither the passphrase, the Argon2id output,
// the KWK, the KEK nor any DEK.
func TestOfflineCommandHoldsNoKey(t *testing.T) {
	l := newLCVol(t, true, false, false)
	l.populate(t, "f", 12, 0, []byte("offline scan"))
	known := learnKeys(t, "passphrase", l.state, l.secret)
	hold := filepath.Join(l.dir, "hold")
	os.Mkdir(hold, 0o700)
	t.Cleanup(func() { os.WriteFile(filepath.Join(hold, "release"), nil, 0o600) })
	cmd := exec.Command(binary, "rotate", "--state", l.state)
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "COFFER_") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	cmd.Env = append(cmd.Env, append(l.env, "COFFER_TEST_HOLD_EXIT="+hold)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		if fileExists(filepath.Join(hold, "held")) {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("coffer rotate never reached its exit hold: %s", stderr.String())
		}
	}
	pid := cmd.Process.Pid
	checkHardening(t, "coffer rotate", pid, l.secret)
	pats := append([]secretPattern{{"state path (control)", []byte(l.state)}}, known.fixed...)
	for _, dek := range known.deks {
		pats = append(pats, secretPattern{"DEK", dek})
	}
	hits := scanMemory(t, pid, pats)
	if hits.count("state path (control)") == 0 {
		t.Fatalf("the scan did not find the state path in coffer rotate: the scanner is blind (%s)", hits)
	}
	delete(hits.found, "state path (control)")
	if len(hits.found) > 0 {
		t.Errorf("once done, coffer rotate still holds: %s", hits)
	}
	os.WriteFile(filepath.Join(hold, "release"), nil, 0o600)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("coffer rotate: %v: %s", err, stderr.String())
	}
}

// knownKeys are the volume's secrets the test derived on its own, offline.
type knownKeys struct {
	volume [16]byte
	deks   map[[16]byte][]byte // file id -> DEK
	fixed  []secretPattern     // PIN or passphrase, Argon2id output, KWK, KEK
}

type secretPattern struct {
	kind string
	b    []byte
}

// learnKeys opens the volume read-only in the test process (with its own provider) and
// unwraps every file's DEK.
func learnKeys(t *testing.T, mode, state string, secret []byte) *knownKeys {
	t.Helper()
	ctx := context.Background()
	v, err := volume.Open(ctx, state, bytes.Clone(secret), volume.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("open the volume in the test: %v", err)
	}
	defer v.Close(ctx)
	k := &knownKeys{volume: v.ID, deks: map[[16]byte][]byte{}}
	rows, err := v.Catalog().KeysUsing(ctx, v.KEK().Chain, v.KEK().Version, 0, 1000)
	if err != nil || len(rows) < 12 {
		t.Fatalf("key records: %d, %v", len(rows), err)
	}
	for _, r := range rows {
		rec := keys.Record{Mode: keys.Mode(r.Key.Mode), KEK: keys.KEKRef{Chain: r.Key.Chain, Version: r.Key.Version},
			IV: r.Key.IV, Wrapped: r.Key.Wrapped, Salt: r.Key.Salt}
		dek, err := keys.OpenFileKey(ctx, v.Provider(), rec, keys.FileIdentity{Volume: v.ID, File: r.FileID})
		if err != nil {
			t.Fatalf("open the DEK of inode %d: %v", r.Ino, err)
		}
		k.deks[r.FileID] = bytes.Clone(dek.Bytes())
		dek.Wipe()
	}
	if mode == "hsm" {
		k.fixed = append(k.fixed, secretPattern{"PIN", bytes.Clone(secret)})
		return k
	}
	k.fixed = append(k.fixed, secretPattern{"passphrase", bytes.Clone(secret)})
	vi, err := v.Catalog().Volume(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var params passphrase.Params
	if err := params.UnmarshalBinary(vi.KDFParams); err != nil {
		t.Fatal(err)
	}
	m := argon2.IDKey(secret, params.Salt[:], params.Time, params.MemoryKiB, params.Threads, 32)
	kwk := hmacSum(m, keys.AppendLP(keys.AppendLP(nil, []byte(keys.LabelPassKWK)), v.ID[:]))
	k.fixed = append(k.fixed, secretPattern{"Argon2id output", m}, secretPattern{"KWK", kwk})
	kek, err := v.Catalog().GetKEK(ctx, v.KEK().Chain, v.KEK().Version)
	if err != nil || len(kek.Material) != 93 {
		t.Fatalf("KEK material: %d bytes, %v", len(kek.Material), err)
	}
	aad := keys.AppendLP(keys.AppendLP(keys.AppendLP(nil, []byte(keys.LabelPassphraseKEK)), v.ID[:]), []byte(v.KEK().Chain))
	aad = bin.BigEndian.AppendUint32(aad, v.KEK().Version)
	block, _ := aes.NewCipher(kwk)
	gcm, _ := cipher.NewGCM(block)
	kekKeys, err := gcm.Open(nil, kek.Material[1:13], kek.Material[13:], aad)
	if err != nil {
		t.Fatalf("open the KEK material with the KWK the test derived: %v", err)
	}
	k.fixed = append(k.fixed, secretPattern{"KEK", kekKeys[:32]}, secretPattern{"KEK", kekKeys[32:]})
	k.fixed = append(k.fixed, schedulePatterns("KWK AES schedule", kwk)...)
	k.fixed = append(k.fixed, schedulePatterns("KEK AES schedule", kekKeys[:32])...)
	return k
}

func hmacSum(key, msg []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write(msg)
	return h.Sum(nil)
}

// patterns lists every secret the daemon may have held: the fixed ones, each DEK, and the
// object and staging keys of every (file, object id or staging id) pair in the seal log (the
// log does not say which file an id belongs to, so every pairing is tried), with the AES key
// schedules built from them.
func (k *knownKeys) patterns(t *testing.T, sealLog string) []secretPattern {
	t.Helper()
	f, err := os.Open(sealLog)
	if err != nil {
		t.Fatalf("seal log: %v", err)
	}
	defer f.Close()
	objects, stagings := map[format.ID]bool{}, map[format.ID]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		id, err := format.ParseID(fields[1])
		if err != nil {
			t.Fatalf("seal log line %q: %v", sc.Text(), err)
		}
		switch fields[0] {
		case "object":
			objects[id] = true
		case "box":
			stagings[id] = true
		}
	}
	if len(objects) == 0 || len(stagings) == 0 {
		t.Fatalf("seal log lists %d objects and %d staging files: want both", len(objects), len(stagings))
	}
	pats := append([]secretPattern(nil), k.fixed...)
	for file, dek := range k.deks {
		pats = append(pats, secretPattern{"DEK", dek})
		for id := range objects {
			sub, err := format.DeriveKey(dek, format.LabelObjectKey, k.volume[:], file[:], id[:])
			if err != nil {
				t.Fatal(err)
			}
			pats = append(pats, secretPattern{"object subkey", sub})
			pats = append(pats, schedulePatterns("object subkey AES schedule", sub)...)
		}
		for id := range stagings {
			sk, err := format.DeriveKey(dek, content.LabelStagingKey, k.volume[:], file[:], id[:])
			if err != nil {
				t.Fatal(err)
			}
			pats = append(pats, secretPattern{"staging key", sk})
			pats = append(pats, schedulePatterns("staging key AES schedule", sk)...)
		}
	}
	return pats
}

// schedulePatterns returns round keys 2 and 3 of key's AES-256 expansion (bytes 32..63;
// bytes 0..31 are the key itself), as bytes and as native-endian 32-bit words, the two ways
// an implementation may store them.
func schedulePatterns(kind string, key []byte) []secretPattern {
	w := expandAES256(key)
	b := make([]byte, 32)
	le := make([]byte, 32)
	for i := range 8 {
		bin.BigEndian.PutUint32(b[4*i:], w[8+i])
		bin.LittleEndian.PutUint32(le[4*i:], w[8+i])
	}
	return []secretPattern{{kind, b}, {kind, le}}
}

// expandAES256 is FIPS 197's key expansion for a 32-byte key (60 words).
func expandAES256(key []byte) [60]uint32 {
	var sbox [256]byte
	rotl := func(x byte, n uint) byte { return x<<n | x>>(8-n) }
	// p walks GF(2^8)* by multiplying by 3, q by dividing by 3: q = 1/p.
	p, q := byte(1), byte(1)
	for {
		if p&0x80 != 0 {
			p = p ^ p<<1 ^ 0x1b
		} else {
			p = p ^ p<<1
		}
		q ^= q << 1
		q ^= q << 2
		q ^= q << 4
		if q&0x80 != 0 {
			q ^= 0x09
		}
		sbox[p] = q ^ rotl(q, 1) ^ rotl(q, 2) ^ rotl(q, 3) ^ rotl(q, 4) ^ 0x63
		if p == 1 {
			break
		}
	}
	sbox[0] = 0x63
	sub := func(w uint32) uint32 {
		return uint32(sbox[w>>24])<<24 | uint32(sbox[w>>16&0xff])<<16 | uint32(sbox[w>>8&0xff])<<8 | uint32(sbox[w&0xff])
	}
	var w [60]uint32
	for i := range 8 {
		w[i] = bin.BigEndian.Uint32(key[4*i:])
	}
	rcon := uint32(1)
	for i := 8; i < 60; i++ {
		t := w[i-1]
		switch i % 8 {
		case 0:
			t = sub(t<<8|t>>24) ^ rcon<<24
			rcon <<= 1
			if rcon&0x100 != 0 {
				rcon ^= 0x11b
			}
		case 4:
			t = sub(t)
		}
		w[i] = w[i-8] ^ t
	}
	return w
}

type scanHits struct {
	found map[string]int // kind -> patterns found
	where []string       // a few locations, for the failure message
}

func (h scanHits) count(kind string) int { return h.found[kind] }

func (h scanHits) String() string {
	if len(h.found) == 0 {
		return "nothing"
	}
	var parts []string
	for k, n := range h.found {
		parts = append(parts, fmt.Sprintf("%d %s", n, k))
	}
	return strings.Join(parts, ", ") + " (at " + strings.Join(h.where, "; ") + ")"
}

// scanMemory searches every readable mapping of pid that can hold data written at run time
// (all but file-backed read-only ones: code and constants) for each pattern.
func scanMemory(t *testing.T, pid int, pats []secretPattern) scanHits {
	t.Helper()
	const prefix = 8
	type entry struct {
		i    int
		rest []byte
	}
	index := map[uint64][]entry{}
	bloom := make([]uint64, 1<<20) // 64 Mi bits over the first 8 bytes
	maxLen := 0
	for i, p := range pats {
		if len(p.b) < prefix {
			t.Fatalf("pattern %s is %d bytes: too short to scan for", p.kind, len(p.b))
		}
		key := bin.LittleEndian.Uint64(p.b)
		index[key] = append(index[key], entry{i, p.b})
		h := bloomBit(key)
		bloom[h>>6] |= 1 << (h & 63)
		maxLen = max(maxLen, len(p.b))
	}
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatalf("read the daemon's maps: %v", err)
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		t.Fatalf("open the daemon's memory: %v", err)
	}
	defer mem.Close()
	hit := map[int]string{}
	var scanned int64
	buf := make([]byte, 4<<20+maxLen)
	for _, line := range strings.Split(strings.TrimSpace(string(maps)), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || f[1][0] != 'r' {
			continue
		}
		path := ""
		if len(f) >= 6 {
			path = f[5]
		}
		if path == "[vvar]" || path == "[vsyscall]" || path == "[vvar_vclock]" || (strings.HasPrefix(path, "/") && f[1][1] != 'w') {
			continue
		}
		lo, hi, _ := strings.Cut(f[0], "-")
		start, _ := strconv.ParseUint(lo, 16, 64)
		end, _ := strconv.ParseUint(hi, 16, 64)
		for off := start; off < end; {
			n := min(uint64(len(buf)), end-off)
			got, err := mem.ReadAt(buf[:n], int64(off))
			if got <= 0 {
				if err == nil {
					err = io.EOF
				}
				break // unreadable region (guard pages): skip it
			}
			scanned += int64(got)
			b := buf[:got]
			for i := 0; i+prefix <= len(b); i++ {
				key := bin.LittleEndian.Uint64(b[i:])
				h := bloomBit(key)
				if bloom[h>>6]&(1<<(h&63)) == 0 {
					continue
				}
				for _, e := range index[key] {
					if bytes.HasPrefix(b[i:], e.rest) {
						if _, seen := hit[e.i]; !seen {
							// Test keys only: the bytes around a hit tell what holds it.
							ctx := b[max(0, i-512):min(len(b), i+600)]
							hit[e.i] = fmt.Sprintf("%#x %s in mapping %s, bytes around: %x", off+uint64(i), path, f[0], ctx)
						}
					}
				}
			}
			if uint64(got) < n {
				break
			}
			// Overlap so a pattern across two reads is seen.
			off += uint64(got) - uint64(maxLen)
			if uint64(got) <= uint64(maxLen) {
				break
			}
		}
	}
	if scanned < 1<<20 {
		t.Fatalf("scanned only %d bytes of the daemon's memory", scanned)
	}
	hits := scanHits{found: map[string]int{}}
	for i, where := range hit {
		hits.found[pats[i].kind]++
		if len(hits.where) < 6 {
			hits.where = append(hits.where, pats[i].kind+" "+where)
		}
	}
	return hits
}

func bloomBit(k uint64) uint64 { return (k * 0x9E3779B97F4A7C15) >> 38 }

func randBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rand.Uint32())
	}
	return b
}
