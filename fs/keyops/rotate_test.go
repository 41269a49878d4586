package keyops

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"coffer/fs/meta"
	"coffer/keys"
)

// TestRotateHSM rotates a per-user volume on a real SoftHSM2 token: every chain gets a new
// version, every record moves to it (in several batches), DEKs are unchanged, nothing is
// destroyed without --retire-old, and --retire-old destroys the old versions in the token.
func TestRotateHSM(t *testing.T) {
	e := newVol(t, volOpt{perUser: true})
	vol := e.addFiles("v", 50, 0)
	u := e.addFiles("u", 2100, 1000)
	sample := []uint64{vol[0], vol[49], u[0], u[1500], u[2099]}
	deks := map[uint64][]byte{}
	for _, ino := range sample {
		deks[ino] = e.dekOf(ino)
	}
	var progress []Progress
	res, err := Rotate(ctx, e.v, RotateOptions{Actor: "test", BatchSize: 1000, Logger: quiet,
		Progress: func(p Progress) { progress = append(progress, p) }})
	if err != nil {
		t.Fatal(err)
	}
	if res.Resumed || res.Rewrapped != 2150 || len(res.Targets) != 3 { // volume, u0, u1000
		t.Fatalf("result %+v", res)
	}
	// u0: 50 rows in one batch; u1000: 2100 rows in 3.
	if len(progress) != 4 || progress[3].Done != 2150 || progress[3].Total != 2150 {
		t.Fatalf("progress %+v", progress)
	}
	want := []string{"volume/v1:old", "volume/v2:active", "u0/v1:old", "u0/v2:active", "u1000/v1:old", "u1000/v2:active"}
	if got := e.versions(); !slices.Equal(got, want) {
		t.Fatalf("versions %v, want %v", got, want)
	}
	if n := e.countUsing("u0", 1) + e.countUsing("u1000", 1); n != 0 {
		t.Fatalf("%d records still on v1", n)
	}
	if e.countUsing("u1000", 2) != 2100 {
		t.Fatal("u1000 records not on u1000/v2")
	}
	for _, ino := range sample {
		mustEqualBytes(t, e.dekOf(ino), deks[ino], fmt.Sprintf("DEK of inode %d after rotation", ino))
	}
	if tv := e.tokenVersions(); !contains(tv, "volume/v1") || !contains(tv, "u1000/v1") {
		t.Fatalf("rotation without --retire-old destroyed a version: token holds %v", tv)
	}
	rep, err := VerifyAudit(ctx, e.v.Catalog(), e.v.Provider(), e.v.ID)
	if err != nil || rep.Unsealed != 0 || rep.Authenticated != rep.Entries {
		t.Fatalf("audit after rotate: %+v %v", rep, err)
	}

	// A second rotation with --retire-old: v3 everywhere, v1 and v2 destroyed in the token.
	res, err = Rotate(ctx, e.v, RotateOptions{Actor: "test", RetireOld: true, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if res.Rewrapped != 2150 || len(res.Retired) != 6 {
		t.Fatalf("second rotation %+v", res)
	}
	tv := e.tokenVersions()
	for _, gone := range []string{"volume/v1", "volume/v2", "u0/v1", "u0/v2", "u1000/v1", "u1000/v2"} {
		if contains(tv, gone) {
			t.Errorf("retired %s is still on the token (%v)", gone, tv)
		}
	}
	if !contains(tv, "volume/v3") || !contains(tv, "u1000/v3") {
		t.Fatalf("token lost the current versions: %v", tv)
	}
	if err := e.v.Provider().Load(keys.KEKRef{Chain: "u1000", Version: 1}, nil); !errors.Is(err, keys.ErrKEKMissing) {
		t.Fatalf("load of a retired version: %v, want ErrKEKMissing", err)
	}
	for _, ino := range sample {
		mustEqualBytes(t, e.dekOf(ino), deks[ino], "DEK after the second rotation")
	}
	// The audit log was re-MACed under v3 before v1 and v2 went, and still verifies.
	rep, err = VerifyAudit(ctx, e.v.Catalog(), e.v.Provider(), e.v.ID)
	if err != nil || rep.Authenticated != rep.Entries || len(rep.Keys) != 1 || rep.Keys[0].Version != 3 {
		t.Fatalf("audit after retire: %+v %v", rep, err)
	}
	// A fresh open (loads only live versions) still works and reads every key.
	e.reopen()
	mustEqualBytes(t, e.dekOf(u[7]), e.dekOf(u[7]), "DEK after reopen")
}

// TestRotateResume kills a rotation at every step (a hook that fails there, as a kill would)
// and checks that a rerun finishes it without making another version, leaving no stray key
// on the token.
func TestRotateResume(t *testing.T) {
	for _, step := range []string{"planned", "kek-created", "keks-ready", "batch", "rewrapped"} {
		t.Run(step, func(t *testing.T) {
			e := newVol(t, volOpt{})
			inos := e.addFiles("f", 2500, 0)
			d0 := e.dekOf(inos[1234])
			stop := errors.New("killed")
			_, err := Rotate(ctx, e.v, RotateOptions{BatchSize: 1000, Logger: quiet, hook: func(s string) error {
				if s == step {
					return stop
				}
				return nil
			}})
			if !errors.Is(err, stop) {
				t.Fatalf("rotation did not stop at %s: %v", step, err)
			}
			if step == "batch" {
				if n := e.countUsing("", 2); n != 1000 {
					t.Fatalf("after one batch %d records on v2, want 1000", n)
				}
			}
			// The process dies: the rerun opens the volume afresh.
			e.reopen()
			res, err := Rotate(ctx, e.v, RotateOptions{BatchSize: 1000, Logger: quiet})
			if err != nil {
				t.Fatal(err)
			}
			if !res.Resumed {
				t.Error("the rerun did not say it finished an interrupted rotation")
			}
			if got := e.versions(); !slices.Equal(got, []string{"volume/v1:old", "volume/v2:active"}) {
				t.Fatalf("versions after the rerun: %v", got)
			}
			if tv := e.tokenVersions(); !slices.Equal(tv, []string{"volume/v1", "volume/v2"}) && !slices.Equal(tv, []string{"volume/v2", "volume/v1"}) {
				t.Fatalf("token holds %v", tv)
			}
			if e.countUsing("", 1) != 0 || e.countUsing("", 2) != 2500 {
				t.Fatal("not every record is on v2")
			}
			mustEqualBytes(t, e.dekOf(inos[1234]), d0, "DEK after resumed rotation")
			// The next rotation is a new one: v3.
			res, err = Rotate(ctx, e.v, RotateOptions{Logger: quiet})
			if err != nil || res.Resumed || res.Targets[0].Version != 3 {
				t.Fatalf("next rotation: %+v %v", res, err)
			}
		})
	}
}

// TestRetireRefused: a record that does not open (tampered) cannot be re-wrapped; the
// rotation says which inode and stays incomplete, and retiring refuses and destroys nothing.
func TestRetireRefused(t *testing.T) {
	e := newVol(t, volOpt{})
	inos := e.addFiles("f", 30, 0)
	bad := inos[17]
	k, err := e.v.Catalog().GetKey(ctx, bad)
	if err != nil {
		t.Fatal(err)
	}
	nk := k
	nk.Wrapped = append([]byte(nil), k.Wrapped...)
	nk.Wrapped[3] ^= 1
	if ok, err := e.v.Catalog().SwapKey(ctx, bad, k, nk); !ok || err != nil {
		t.Fatal(ok, err)
	}
	_, err = Rotate(ctx, e.v, RotateOptions{RetireOld: true, Logger: quiet})
	var fe *FailedRecordsError
	if !errors.As(err, &fe) || len(fe.Inodes) != 1 || fe.Inodes[0] != bad {
		t.Fatalf("rotation with a tampered record: %v", err)
	}
	if e.countUsing("", 1) != 1 || e.countUsing("", 2) != 29 {
		t.Fatal("the good records were not all re-wrapped")
	}
	_, err = Retire(ctx, e.v, "test", quiet)
	if !errors.Is(err, ErrRetireBusy) || !strings.Contains(err.Error(), "volume/v1 (1 key records)") {
		t.Fatalf("retire while v1 is used: %v", err)
	}
	if got := e.versions(); !contains(got, "volume/v1:old") {
		t.Fatalf("refused retire changed the catalog: %v", got)
	}
	if tv := e.tokenVersions(); !contains(tv, "volume/v1") {
		t.Fatalf("refused retire destroyed v1 on the token: %v", tv)
	}
	// Shredding the damaged file clears the way.
	if _, err := ShredPaths(ctx, e.v, []string{"/f17"}, ShredOptions{Logger: quiet}); err != nil {
		t.Fatal(err)
	}
	res, err := Rotate(ctx, e.v, RotateOptions{RetireOld: true, Logger: quiet})
	if err != nil || !res.Resumed || len(res.Retired) != 1 {
		t.Fatalf("rotation after the shred: %+v %v", res, err)
	}
	if tv := e.tokenVersions(); contains(tv, "volume/v1") {
		t.Fatalf("v1 still on the token: %v", tv)
	}
}

// TestRotatePassphrase: a passphrase volume rotates too; new material is stored, retired
// material is erased from the catalog.
func TestRotatePassphrase(t *testing.T) {
	e := newVol(t, volOpt{passphrase: true})
	inos := e.addFiles("f", 40, 0)
	d := e.dekOf(inos[3])
	k1, _ := e.v.Catalog().GetKEK(ctx, "", 1)
	res, err := Rotate(ctx, e.v, RotateOptions{RetireOld: true, Logger: quiet})
	if err != nil || res.Rewrapped != 40 {
		t.Fatalf("%+v %v", res, err)
	}
	e.reopen()
	mustEqualBytes(t, e.dekOf(inos[3]), d, "DEK after passphrase rotation")
	k, _ := e.v.Catalog().GetKEK(ctx, "", 1)
	if k.State != meta.KEKDestroyed || k.Material != nil {
		t.Fatalf("v1 after retire: %+v", k)
	}
	if strings.Contains(string(e.catalogBytes()), string(k1.Material)) {
		t.Fatal("the retired KEK's sealed material is still in the catalog files")
	}
}

// TestRotateDerive: derive mode rotates (derive_test.go covers it); shred --now still refuses.
func TestRotateDerive(t *testing.T) {
	e := newVol(t, volOpt{passphrase: true, derive: true})
	e.addFiles("f", 3, 0)
	res, err := Rotate(ctx, e.v, RotateOptions{Logger: quiet})
	if err != nil || res.Rekeyed != 3 || res.Reencrypted != 0 {
		t.Fatalf("derive rotation of empty files: %+v %v", res, err)
	}
	if got := e.versions(); !slices.Equal(got, []string{"volume/v1:old", "volume/v2:active"}) {
		t.Fatalf("versions: %v", got)
	}
	if _, err := ShredNow(ctx, e.v, RotateOptions{}); !errors.Is(err, ErrDeriveNow) {
		t.Fatalf("shred --now on derive: %v", err)
	}
	// The daemon rotating a live mount: refused, nothing made.
	if _, err := Rotate(ctx, e.v, RotateOptions{Logger: quiet, Mounted: true}); !errors.Is(err, ErrDeriveMounted) {
		t.Fatalf("derive rotation of a mounted volume: %v", err)
	}
	if got := e.versions(); !slices.Equal(got, []string{"volume/v1:old", "volume/v2:active"}) {
		t.Fatalf("versions after the refused rotation: %v", got)
	}
}
