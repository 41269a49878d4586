// Package fsck checks an open volume's catalog against its remote (coffer fsck): objects
// the catalog names that are missing or of the wrong size, objects nothing names
// (orphans), holes in the catalog's replica, and with Full every object read and
// authenticated through the data path. With Repair it queues old orphans for deletion and
// drops the chunk rows of missing objects (their bytes read as zeros from then on).
package fsck

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"coffer/fs/content"
	"coffer/fs/meta"
	"coffer/fs/replica"
	"coffer/fs/volume"
	"coffer/remote"
)

// Options tune Check.
type Options struct {
	Full   bool // read and authenticate every file's content
	Repair bool
	// Window is the point-in-time window: an unreferenced object younger than
	// max(MinOrphanAge, Window) may be an upload whose commit is still to come, or kept for
	// a restore --at, and is not an orphan yet.
	Window     time.Duration
	StagingDir string // for Full offline (default STATE/staging)
	// Data is a mounted volume's data path: Full reads through it (a second data path on
	// the same staging folder would not do), and Repair leaves missing objects' chunk rows
	// alone (open files hold them in memory): unmount to drop them.
	Data   *content.DataPath
	Logger *slog.Logger
	// Progress, if set, is called during Full with bytes read so far and the total.
	Progress func(done, total int64)
}

// MinOrphanAge is the youngest an unreferenced object can be to count as an orphan.
const MinOrphanAge = time.Hour

// Damage is one file whose content cannot be read back whole.
type Damage struct {
	Path   string
	Ino    uint64
	Chunk  int64  // chunk index, -1 if not about one chunk
	Object string // remote object name, if about one
	Why    string
}

// Orphan is an object on the remote that nothing names.
type Orphan struct {
	Name     string
	Size     int64
	Age      time.Duration // -1 if the remote cannot tell
	Repaired bool          // queued for deletion
}

// Report is what Check found. Clean reports whether there is nothing to fix.
type Report struct {
	Catalog      []meta.Problem
	Missing      []Damage // objects missing or of the wrong size
	Lost         []Damage // chunks whose newest data was staged on a lost host (restore marked them)
	Corrupt      []Damage // Full: files whose content fails to read or authenticate
	Orphans      []Orphan
	Young        int // unreferenced objects too young to call orphans
	ReplicaHoles []string
	Objects      int   // chunk objects the catalog names
	Bytes        int64 // Full: bytes read
	Elapsed      time.Duration
	Dropped      int // Repair: chunk rows of missing objects dropped
	Truncated    int // Repair: files with lost data truncated to their uploaded content
}

// Clean reports whether Check found nothing wrong.
func (r *Report) Clean() bool {
	return len(r.Catalog) == 0 && len(r.Missing) == 0 && len(r.Lost) == 0 && len(r.Corrupt) == 0 && len(r.Orphans) == 0 &&
		len(r.ReplicaHoles) == 0
}

// Check runs the checks on v (open for writing if opt.Repair).
func Check(ctx context.Context, v *volume.Volume, opt Options) (*Report, error) {
	start := time.Now()
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	cat, store := v.Catalog(), v.Store()
	r := &Report{}
	var err error
	if r.Catalog, err = cat.Check(ctx); err != nil {
		return nil, fmt.Errorf("check the catalog: %w", err)
	}

	// The remote's chunk objects, against the catalog's chunk rows.
	listed := map[string]int64{}
	if err := store.List(ctx, "c/", func(name string, size int64) error {
		listed[name] = size
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list the remote's objects: %w", err)
	}
	referenced := map[string]bool{}
	var missing []struct {
		ino uint64
		ch  meta.Chunk
	}
	err = cat.EachChunk(ctx, func(ino uint64, ch meta.Chunk) error {
		name := meta.ObjectName(ch.Object)
		referenced[name] = true
		r.Objects++
		want, err := v.Layout.ObjectSize(ch.Length)
		if err != nil {
			r.Missing = append(r.Missing, Damage{Ino: ino, Chunk: ch.Index, Object: name, Why: err.Error()})
			return nil
		}
		size, ok := listed[name]
		switch {
		case !ok:
			r.Missing = append(r.Missing, Damage{Ino: ino, Chunk: ch.Index, Object: name, Why: "object missing from the remote"})
			missing = append(missing, struct {
				ino uint64
				ch  meta.Chunk
			}{ino, ch})
		case size != want:
			r.Missing = append(r.Missing, Damage{Ino: ino, Chunk: ch.Index, Object: name,
				Why: fmt.Sprintf("object is %d bytes, want %d (truncated or replaced)", size, want)})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for i := range r.Missing {
		r.Missing[i].Path = volume.PathOf(ctx, cat, r.Missing[i].Ino)
	}

	// Chunks a restore found staged on the lost host.
	lost, err := cat.ListUploads(ctx, meta.UploadLost, 0, 0)
	if err != nil {
		return nil, err
	}
	for _, u := range lost {
		r.Lost = append(r.Lost, Damage{Path: volume.PathOf(ctx, cat, u.Ino), Ino: u.Ino, Chunk: u.Index,
			Why: "its newest data was staged on a host that was lost and never reached the remote"})
	}

	// Orphans: on the remote, named by no chunk row and not queued for deletion.
	queued, err := cat.QueuedDeletes(ctx)
	if err != nil {
		return nil, err
	}
	minAge := max(MinOrphanAge, opt.Window)
	mt, _ := store.(remote.ModTimer)
	names := make([]string, 0)
	for name := range listed {
		if !referenced[name] && !queued[name] {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		o := Orphan{Name: name, Size: listed[name], Age: -1}
		if mt != nil {
			if t, err := mt.ModTime(ctx, name); err == nil {
				o.Age = time.Since(t)
			}
		}
		if o.Age >= 0 && o.Age < minAge || o.Age < 0 {
			r.Young++ // cannot tell it from an upload in flight or kept history
			continue
		}
		r.Orphans = append(r.Orphans, o)
	}

	// The replica of the catalog's owner epoch.
	if epoch, err := cat.ReplicaEpoch(ctx); err != nil {
		return nil, err
	} else if epoch > 0 {
		if r.ReplicaHoles, err = replica.Holes(ctx, store, epoch); err != nil {
			return nil, err
		}
	}

	if opt.Full {
		if err := readAll(ctx, v, opt, r); err != nil {
			return nil, err
		}
	}

	if opt.Repair {
		now := time.Now().UnixNano()
		for i := range r.Orphans {
			if err := cat.EnqueueDelete(ctx, r.Orphans[i].Name, now, now); err != nil {
				return nil, fmt.Errorf("queue orphan %s for deletion: %w", r.Orphans[i].Name, err)
			}
			r.Orphans[i].Repaired = true
		}
		for _, m := range missing {
			if opt.Data != nil {
				break // mounted: see Options.Data
			}
			if _, err := cat.DropChunks(ctx, m.ino, m.ch.Index, m.ch.Index+1, now); err != nil {
				return nil, fmt.Errorf("drop the chunk row of missing object %s: %w", meta.ObjectName(m.ch.Object), err)
			}
			r.Dropped++
		}
		if len(r.Orphans) > 0 {
			content.DrainDeletes(ctx, cat, store, log, 8)
		}
		if opt.Data == nil && len(lost) > 0 {
			n, err := truncateLost(ctx, cat, lost, now)
			if err != nil {
				return nil, err
			}
			r.Truncated = n
		}
	}
	r.Elapsed = time.Since(start)
	return r, nil
}

// readAll reads every regular file whole through the data path, which authenticates
// every block it reads.
func readAll(ctx context.Context, v *volume.Volume, opt Options, r *Report) error {
	dp := opt.Data
	if dp == nil {
		dir := opt.StagingDir
		if dir == "" {
			dir = volume.StagingDir(v.StateDir)
		}
		var err error
		if dp, err = content.New(v, content.Options{StagingDir: dir, CacheBytes: 8 << 20, Logger: opt.Logger}); err != nil {
			return err
		}
		defer dp.Close(context.WithoutCancel(ctx))
	}
	files, total, err := v.Catalog().RegularFiles(ctx)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for _, in := range files {
		f, err := dp.Open(ctx, in.Ino)
		if err != nil {
			r.Corrupt = append(r.Corrupt, Damage{Ino: in.Ino, Chunk: -1, Why: err.Error()})
			continue
		}
		for off := int64(0); off < in.Size; {
			n, err := f.ReadAt(ctx, buf[:min(int64(len(buf)), in.Size-off)], off)
			off += int64(n)
			r.Bytes += int64(n)
			if opt.Progress != nil {
				opt.Progress(r.Bytes, total)
			}
			if err != nil {
				r.Corrupt = append(r.Corrupt, Damage{Ino: in.Ino, Chunk: off / v.Layout.ChunkSize, Why: err.Error()})
				break
			}
			if n == 0 {
				break
			}
		}
		f.Release(ctx)
	}
	for i := range r.Corrupt {
		r.Corrupt[i].Path = volume.PathOf(ctx, v.Catalog(), r.Corrupt[i].Ino)
	}
	return nil
}

// truncateLost takes lost uploads off the queue and truncates each file they belong to
// to its last uploaded content: the end of its last chunk row, if that is below its size.
func truncateLost(ctx context.Context, cat *meta.Catalog, lost []meta.Upload, now int64) (int, error) {
	byIno := map[uint64][]meta.Upload{}
	for _, u := range lost {
		byIno[u.Ino] = append(byIno[u.Ino], u)
	}
	n := 0
	for ino, ups := range byIno {
		in, err := cat.GetInode(ctx, ino)
		if err != nil {
			return n, err
		}
		chunks, err := cat.Chunks(ctx, ino, 0, -1)
		if err != nil {
			return n, err
		}
		var end int64
		for _, ch := range chunks {
			end = max(end, ch.Index*cat.ChunkSize()+ch.Length)
		}
		err = cat.Update(ctx, func(t *meta.Tx) error {
			for _, u := range ups {
				if err := t.CompleteUpload(u.ID); err != nil {
					return err
				}
			}
			if end < in.Size {
				size := end
				_, err := t.SetAttr(ino, meta.AttrChange{Size: &size, Mtime: &now}, now)
				return err
			}
			return nil
		})
		if err != nil {
			return n, fmt.Errorf("truncate inode %d to its uploaded content: %w", ino, err)
		}
		n++
	}
	return n, nil
}
