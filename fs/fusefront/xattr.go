package fusefront

// Extended attributes: user.*, trusted.* and security.* (not security.capability).

import (
	"context"
	"syscall"
)

// xattrAllowed says whether name is in a namespace this file system stores.
// system.* (ACLs) is the kernel's business; security.capability is refused
// because nothing here would drop it on write (KILLPRIV_V2) and the mount is
// nosuid anyway.
func xattrAllowed(name string) bool {
	for _, p := range []string{"user.", "trusted.", "security."} {
		if len(name) > len(p) && name[:len(p)] == p {
			return name != "security.capability"
		}
	}
	return false
}

func (n *Node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	f := n.fsys
	if !xattrAllowed(attr) {
		return 0, syscall.ENODATA
	}
	v, err := f.cat.GetXattr(bg(ctx), n.ino(), attr)
	if err != nil {
		return 0, f.errno("getxattr", n.ino(), err)
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE // also the answer to a size query
	}
	return uint32(copy(dest, v)), 0
}

func (n *Node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	f := n.fsys
	names, err := f.cat.ListXattr(bg(ctx), n.ino())
	if err != nil {
		return 0, f.errno("listxattr", n.ino(), err)
	}
	size := 0
	for _, nm := range names {
		size += len(nm) + 1
	}
	if len(dest) < size {
		return uint32(size), syscall.ERANGE
	}
	b := dest[:0]
	for _, nm := range names {
		b = append(append(b, nm...), 0)
	}
	return uint32(size), 0
}

func (n *Node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	f := n.fsys
	if f.opt.ReadOnly {
		return syscall.EROFS
	}
	if !xattrAllowed(attr) {
		return syscall.EOPNOTSUPP
	}
	if err := f.cat.SetXattr(bg(ctx), n.ino(), attr, data, flags, nowNs()); err != nil {
		return f.errno("setxattr", n.ino(), err)
	}
	return 0
}

func (n *Node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	f := n.fsys
	if f.opt.ReadOnly {
		return syscall.EROFS
	}
	if !xattrAllowed(attr) {
		return syscall.ENODATA
	}
	if err := f.cat.RemoveXattr(bg(ctx), n.ino(), attr, nowNs()); err != nil {
		return f.errno("removexattr", n.ino(), err)
	}
	return 0
}
