package keyops

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"coffer/fs/meta"
	"coffer/fs/volume"
	"coffer/keys"
)

// What makes a shred final. A shred deletes the file's key record from the catalog, but an
// older copy of the catalog (a backup, a stolen disk image) still holds it, wrapped (or, in
// derive mode, its salt) under the KEK version of the day. Against such a copy the shred is
// final only once every version that ever wrapped the key is gone for good:
//
//   - HSM volumes: the versions live in the HSM; destroying them there (shred --now, rotate
//     --retire-old, shred --user) is final against every older copy.
//   - Passphrase volumes: the versions are random keys sealed under the passphrase IN THE
//     CATALOG, so an older copy carries them along, and the passphrase it was made with opens
//     them whatever this catalog destroyed since (coffer passwd re-seals the versions in this
//     catalog only; coffer has no re-key that moves the files to fresh keys): no coffer
//     command makes such a shred final against an older copy.
//   - Per-user volumes: a chown re-wraps the file's key under the new owner's chain, so older
//     copies hold it under the previous owner's (audited as key.moved, below): those versions
//     must go too.

// eventKeyMoved is the audit event of a file key re-wrapped under another KEK chain (a chown
// on a per-user wrap-mode volume).
const eventKeyMoved = "key.moved"

// keyMoved is the detail of a key.moved event (no secret: which file, which versions).
type keyMoved struct {
	Ino         uint64 `json:"ino"`
	File        string `json:"file_id"` // hex
	FromChain   string `json:"from_chain"`
	FromVersion uint32 `json:"from_version"`
	ToChain     string `json:"to_chain"`
	ToVersion   uint32 `json:"to_version"`
}

// AuditKeyMoved records, inside t (the transaction that swaps the key record), that the key
// of file fileID (inode ino) moved from KEK version from to version to of another chain
// (fs/fusefront calls it for a chown on a per-user volume). A later shred of the file reads
// it to name the versions that older catalog copies still hold the key under.
func AuditKeyMoved(t *meta.Tx, ino uint64, fileID [16]byte, from, to keys.KEKRef, actor string) error {
	b, _ := json.Marshal(keyMoved{Ino: ino, File: hex.EncodeToString(fileID[:]), FromChain: from.Chain, FromVersion: from.Version,
		ToChain: to.Chain, ToVersion: to.Version})
	_, err := t.AppendAudit(meta.AuditEvent{Time: time.Now().UnixNano(), Event: eventKeyMoved, Actor: actor, Detail: string(b)})
	return err
}

// movedFrom reads the key.moved events of the files in files: the KEK versions each file's
// key was wrapped under before it moved to another chain.
func movedFrom(ctx context.Context, cat *meta.Catalog, files map[[16]byte]bool) (map[[16]byte][]keys.KEKRef, error) {
	out := map[[16]byte][]keys.KEKRef{}
	var after int64
	for {
		evs, err := cat.ListAudit(ctx, after, 5000)
		if err != nil {
			return nil, err
		}
		for _, e := range evs {
			if e.Event != eventKeyMoved {
				continue
			}
			var m keyMoved
			if json.Unmarshal([]byte(e.Detail), &m) != nil {
				continue
			}
			var id [16]byte
			if b, err := hex.DecodeString(m.File); err != nil || len(b) != len(id) {
				continue
			} else {
				copy(id[:], b)
			}
			if files[id] {
				out[id] = append(out[id], keys.KEKRef{Chain: m.FromChain, Version: m.FromVersion})
			}
		}
		if len(evs) < 5000 {
			return out, nil
		}
		after = evs[len(evs)-1].Seq
	}
}

// Finality is what a shred's summary says about older copies of the catalog beyond
// ShredResult.OldVersions. It travels from the daemon to coffer shred (JSON).
type Finality struct {
	// Passphrase: the volume's KEK versions are sealed under the passphrase inside the
	// catalog, so an older copy plus the passphrase it was made with still opens the shredded
	// files' keys, whatever is destroyed here: no coffer command makes the shred final
	// against such a copy.
	Passphrase bool `json:"passphrase,omitempty"`
	// Derive: a derive-mode volume (only rotate --retire-old, which re-encrypts every other
	// file, destroys a version).
	Derive bool `json:"derive,omitempty"`
	// Moved: live versions of other chains that wrapped a shredded file's key before a chown
	// re-wrapped it under its new owner's chain (key.moved events); MovedFiles: how many of
	// the shredded files that concerns. Both are also in OldVersions.
	Moved      []keys.KEKRef `json:"moved,omitempty"`
	MovedFiles int           `json:"moved_files,omitempty"`
}

// shreddedKey is a shredded file's id and the version its key record was under.
type shreddedKey struct {
	file [16]byte
	ref  keys.KEKRef
}

// finality fills res.OldVersions and res.Finality from the keys shredInodes destroyed: every
// live version that wraps (or wrapped in an older copy) one of them — its chain's versions
// up to the record's, as rotations left them, and, for a key that moved by a chown, the
// previous chains' versions up to the one it moved from.
func finality(ctx context.Context, v *volume.Volume, res *ShredResult) error {
	res.Finality = Finality{Passphrase: v.Kind == meta.ProviderPassphrase, Derive: v.KeyMode == keys.ModeDerive}
	clear(res.OldVersions)
	if len(res.shredded) == 0 {
		return nil
	}
	keks, err := v.Catalog().ListKEKs(ctx)
	if err != nil {
		return fmt.Errorf("shred: %w", err)
	}
	live := map[string][]uint32{} // chain -> live versions
	for _, k := range keks {
		if k.State != meta.KEKDestroyed {
			live[k.Chain] = append(live[k.Chain], k.Version)
		}
	}
	var moved map[[16]byte][]keys.KEKRef
	if v.PerUser {
		files := map[[16]byte]bool{}
		for _, s := range res.shredded {
			files[s.file] = true
		}
		if moved, err = movedFrom(ctx, v.Catalog(), files); err != nil {
			return fmt.Errorf("shred: read the key history: %w", err)
		}
	}
	movedSet := map[keys.KEKRef]bool{}
	for _, s := range res.shredded {
		vers := map[keys.KEKRef]bool{}
		add := func(upTo keys.KEKRef) []keys.KEKRef {
			var got []keys.KEKRef
			for _, n := range live[upTo.Chain] {
				if r := (keys.KEKRef{Chain: upTo.Chain, Version: n}); n <= upTo.Version && !vers[r] {
					vers[r] = true
					got = append(got, r)
				}
			}
			return got
		}
		add(s.ref)
		anyMoved := false
		for _, from := range moved[s.file] {
			for _, r := range add(from) {
				if r.Chain != s.ref.Chain {
					movedSet[r] = true
					anyMoved = true
				}
			}
		}
		if anyMoved {
			res.Finality.MovedFiles++
		}
		for r := range vers {
			res.OldVersions[r]++
		}
	}
	for r := range movedSet {
		res.Finality.Moved = append(res.Finality.Moved, r)
	}
	sort.Slice(res.Finality.Moved, func(i, j int) bool { return res.Finality.Moved[i].String() < res.Finality.Moved[j].String() })
	return nil
}
