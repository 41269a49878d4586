package content

import (
	"context"
	"fmt"
	"os"

	"coffer/crypto/format"
	"coffer/fs/meta"
	"coffer/keys"
	"coffer/remote"
)

// Reencrypt names one committed chunk object and the object to copy it to.
type Reencrypt struct {
	Volume, File format.ID  // the file's crypto identity (volume id, inode FileID)
	Chunk        meta.Chunk // the catalog row: object id and plaintext length
	To           format.ID  // the new object id: fresh, never sealed before
	OldKey       *keys.DEK  // the DEK that sealed Chunk.Object (caller owns and wipes)
	NewKey       *keys.DEK  // the DEK to seal the copy under (caller owns and wipes)
}

// ReencryptChunk copies a chunk object to a new object sealed under another key (derive-mode
// rotation): it fetches the whole object, opens it with OldKey — authenticating every block
// and the header against the volume, the file, the object id and the length the catalog
// records, as a read does — seals the plaintext under NewKey as object To (the same
// format.Cipher.SealChunk as an upload) and puts it. It changes nothing in the catalog and
// deletes nothing: the caller records the copy (meta SwapChunkObjects) and the old object
// goes through the delete queue. The plaintext is zeroed before it returns.
//
// A failed authentication is a *format.AuthError (errors.Is format.ErrAuth); a missing
// object wraps remote.ErrNotFound.
func ReencryptChunk(ctx context.Context, rs remote.Store, l format.Layout, r Reencrypt) error {
	from := format.ObjectName(format.ID(r.Chunk.Object))
	if r.To.IsZero() || r.To == format.ID(r.Chunk.Object) {
		return fmt.Errorf("content: re-encrypt object %s: the copy needs a new object id", from)
	}
	if r.OldKey == nil || r.NewKey == nil {
		return fmt.Errorf("content: re-encrypt object %s: %w", from, keys.ErrWiped)
	}
	obj, err := rs.GetRange(ctx, from, 0, -1)
	if err != nil {
		return fmt.Errorf("content: re-encrypt: fetch object %s: %w", from, err)
	}
	pb := getBuf(&chunkBufPool, int(l.ChunkSize))
	defer chunkBufPool.Put(pb)
	var plain []byte
	err = r.OldKey.Use(func(k []byte) error {
		c, err := format.NewCipher(k, format.Binding{Volume: r.Volume, File: r.File, Object: format.ID(r.Chunk.Object)}, l)
		if err != nil {
			return err
		}
		defer c.Wipe()
		plain, err = c.OpenChunk((*pb)[:0], obj, r.Chunk.Length)
		return err
	})
	defer func() { clear(plain) }()
	if err != nil {
		return fmt.Errorf("content: re-encrypt: open object %s: %w", from, err)
	}
	ob := getBuf(&objBufPool, 0)
	defer objBufPool.Put(ob)
	var sealed []byte
	err = r.NewKey.Use(func(k []byte) error {
		c, err := format.NewCipher(k, format.Binding{Volume: r.Volume, File: r.File, Object: r.To}, l)
		if err != nil {
			return err
		}
		defer c.Wipe()
		sealed, err = c.SealChunk((*ob)[:0], plain)
		return err
	})
	if err != nil {
		return fmt.Errorf("content: re-encrypt object %s: seal the copy %s: %w", from, format.ObjectName(r.To), err)
	}
	*ob = sealed[:0]
	recordSeal(r.To)
	if err := rs.Put(ctx, format.ObjectName(r.To), sealed); err != nil {
		return fmt.Errorf("content: re-encrypt object %s: put the copy: %w", from, err)
	}
	return nil
}

// recordSeal appends a sealed object id to the seal log (SealLogEnv) when one is set, as the
// data path does for its uploads.
func recordSeal(id format.ID) {
	path := os.Getenv(SealLogEnv)
	if path == "" {
		return
	}
	l, err := openSealLog(path, nil)
	if err != nil {
		return
	}
	l.object(id)
	l.close()
}
