package fusefront

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"coffer/fs/meta"
)

// dirBatch is how many entries one catalog query fetches for a listing.
const dirBatch = 512

var (
	_ gofs.FileReaddirenter = (*dirHandle)(nil)
	_ gofs.FileSeekdirer    = (*dirHandle)(nil)
	_ gofs.FileLookuper     = (*dirHandle)(nil)
	_ gofs.FileReleasedirer = (*dirHandle)(nil)
	_ gofs.FileFsyncdirer   = (*dirHandle)(nil)
)

// dirHandle is an open directory. The listing is ".", "..", then the
// entries in name order, fetched in batches with whole inodes (readdirplus
// needs no query per entry: Lookup answers from the row just listed). The
// offset of an entry is its position + 1, and any earlier offset can be
// sought back to: the handle keeps every name it produced, and resumes the
// catalog query after the name before the target. Entries added or removed
// during a listing may or may not show up, as POSIX allows.
//
// go-fuse holds the handle's lock through each READDIR(PLUS), so the methods
// need no lock of their own.
type dirHandle struct {
	n       *Node
	names   [][]byte            // names of entries 0..len-1 produced so far
	batch   []meta.DirEntryPlus // rows of entries batchAt..batchAt+len-1
	batchAt int
	done    bool // the listing's end is known to be len(names)
	pos     int  // next position: 0 ".", 1 "..", 2+i entry i
	last    *meta.DirEntryPlus
}

func (n *Node) OpendirHandle(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	return &dirHandle{n: n}, 0, 0
}

func (d *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	d.last = nil
	switch d.pos {
	case 0:
		d.pos = 1
		return &fuse.DirEntry{Name: ".", Mode: syscall.S_IFDIR, Ino: d.n.ino(), Off: 1}, 0
	case 1:
		d.pos = 2
		ino := d.n.ino()
		if _, p := d.n.Parent(); p != nil {
			ino = p.StableAttr().Ino
		}
		return &fuse.DirEntry{Name: "..", Mode: syscall.S_IFDIR, Ino: ino, Off: 2}, 0
	}
	e, errno := d.entry(ctx, d.pos-2)
	if errno != 0 || e == nil {
		return nil, errno
	}
	d.pos++
	d.last = e
	return &fuse.DirEntry{Name: string(e.Name), Mode: e.Inode.Mode & syscall.S_IFMT, Ino: e.Inode.Ino, Off: uint64(d.pos)}, 0
}

// entry returns entry i of the listing (nil past the end), querying the
// catalog for the batch that holds it.
func (d *dirHandle) entry(ctx context.Context, i int) (*meta.DirEntryPlus, syscall.Errno) {
	for {
		if i >= d.batchAt && i < d.batchAt+len(d.batch) {
			return &d.batch[i-d.batchAt], 0
		}
		if i >= len(d.names) && d.done {
			return nil, 0
		}
		// Fetch from min(i, len(names)): at i if its predecessor's name is
		// known, else forward from the end of what was produced.
		from := min(i, len(d.names))
		var after []byte
		if from > 0 {
			after = d.names[from-1]
		}
		rows, err := d.n.fsys.cat.ReadDirPlus(bg(ctx), d.n.ino(), after, dirBatch)
		if err != nil {
			return nil, d.n.fsys.errno("readdir", d.n.ino(), err)
		}
		// What follows from is now these rows: the directory may have
		// changed since the names after from were produced.
		d.names = d.names[:from]
		for _, r := range rows {
			d.names = append(d.names, r.Name)
		}
		d.batch, d.batchAt = rows, from
		d.done = len(rows) < dirBatch
		if len(rows) == 0 {
			return nil, 0
		}
	}
}

func (d *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	d.last = nil
	if off == 0 {
		// rewinddir: start over with a fresh listing.
		d.names, d.batch, d.batchAt, d.done = nil, nil, 0, false
	}
	if off > 1<<40 {
		return syscall.EINVAL
	}
	d.pos = int(off)
	return 0
}

// Lookup serves readdirplus from the row just listed: no query per entry.
func (d *dirHandle) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if d.last != nil && string(d.last.Name) == name {
		in := d.last.Inode
		return d.n.fsys.child(ctx, &d.n.Inode, &in, out), 0
	}
	return d.n.Lookup(ctx, name, out)
}

func (d *dirHandle) Releasedir(ctx context.Context, releaseFlags uint32) {
	d.names, d.batch, d.last = nil, nil, nil
}

func (d *dirHandle) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	if err := d.n.fsys.cat.Sync(bg(ctx)); err != nil {
		return d.n.fsys.errno("fsyncdir", d.n.ino(), err)
	}
	return 0
}
