package format

import (
	"bytes"
	"fmt"
)

// HeaderSize is the size of the header at the start of every chunk object.
const HeaderSize = 32

// Version is the content format version written by this package.
const Version = 1

// Header byte layout (FORMAT.md, "Object header").
const (
	hdrMagic     = 0  // 6 bytes "COFFER"
	hdrVersion   = 6  // 1 byte
	hdrAEAD      = 7  // 1 byte, aeadAES256GCM
	hdrBlockLog2 = 8  // 1 byte, log2(BlockSize)
	hdrReserved  = 9  // 7 zero bytes
	hdrObject    = 16 // 16 bytes object id

	aeadAES256GCM = 1
)

var magic = [6]byte{'C', 'O', 'F', 'F', 'E', 'R'}

// Header is the parsed form of an object header, for tools (fsck) that look
// at an object without its catalog row. Readers of content do not parse: they
// rebuild the expected header from the catalog and compare bytes.
type Header struct {
	Version   int
	BlockSize int
	Object    ID
}

// marshalHeader writes the canonical header of an object of layout l.
func marshalHeader(l Layout, obj ID) [HeaderSize]byte {
	var h [HeaderSize]byte
	copy(h[hdrMagic:], magic[:])
	h[hdrVersion] = Version
	h[hdrAEAD] = aeadAES256GCM
	h[hdrBlockLog2] = byte(l.blockShift())
	copy(h[hdrObject:], obj[:])
	return h
}

// ParseHeader parses and checks an object header: magic, a known version and
// cipher, a block size within bounds, zero reserved bytes. It does not
// authenticate anything: only opening a block does.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("format: parse header: %d bytes, want %d", len(b), HeaderSize)
	}
	b = b[:HeaderSize]
	if !bytes.Equal(b[hdrMagic:hdrMagic+len(magic)], magic[:]) {
		return Header{}, fmt.Errorf("format: parse header: not a coffer object (bad magic)")
	}
	if b[hdrVersion] != Version {
		return Header{}, fmt.Errorf("format: parse header: unsupported format version %d", b[hdrVersion])
	}
	if b[hdrAEAD] != aeadAES256GCM {
		return Header{}, fmt.Errorf("format: parse header: unsupported cipher %d", b[hdrAEAD])
	}
	lg := int(b[hdrBlockLog2])
	if lg < 12 || lg > 20 {
		return Header{}, fmt.Errorf("format: parse header: block size 2^%d out of bounds", lg)
	}
	for _, c := range b[hdrReserved:hdrObject] {
		if c != 0 {
			return Header{}, fmt.Errorf("format: parse header: reserved bytes not zero")
		}
	}
	var h Header
	h.Version = int(b[hdrVersion])
	h.BlockSize = 1 << lg
	copy(h.Object[:], b[hdrObject:])
	return h, nil
}
