#!/usr/bin/python3
"""Independent decoder for coffer's content format, written from FORMAT.md alone.

It reads crypto/format/testdata/vectors.json, re-derives every key, rebuilds every
header, nonce and associated data, decrypts every object, replica object (section 12)
and box, re-encrypts and compares bytes, and checks that tampered variants (from the
vectors and its own) are rejected. Exit status 0 only if every check passed; the last line is "N passed, M failed".

Run: /usr/bin/python3 test/format/decode.py [path/to/vectors.json]
Needs only python3-cryptography (Debian 12: version 38).
"""

import base64
import json
import os
import struct
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# ---------------------------------------------------------------- FORMAT.md 1, 2, 3

HEADER_SIZE = 32
TAG = 16
NONCE = 12
MAGIC = b"COFFER"
VERSION = 1
AEAD_AES256GCM = 1
OBJECT_KEY_LABEL = b"coffer/v1 object key"
BLOCK_AAD_LABEL = b"coffer/v1 block"
B32_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


class Reject(Exception):
    """The stored bytes (or the catalog values given) do not authenticate."""


def u32(n):
    return struct.pack(">I", n)


def u64(n):
    return struct.pack(">Q", n)


def lp(x):
    return u32(len(x)) + x


def id_text(raw):
    assert len(raw) == 16
    return base64.b32encode(raw).decode().lower().rstrip("=")


def parse_id_text(s):
    if len(s) != 26 or any(c not in B32_ALPHABET for c in s):
        raise ValueError("not a 26-char lowercase base32 id")
    raw = base64.b32decode(s.upper() + "======")
    if id_text(raw) != s:
        raise ValueError("non-canonical id text")
    return raw


def object_name(raw):
    s = id_text(raw)
    return "c/" + s[0:2] + "/" + s


def check_layout(B, C):
    if B < 4096 or B > 1 << 20 or B & (B - 1):
        raise ValueError("bad block size %d" % B)
    if C < B or C > 64 << 20 or C % B:
        raise ValueError("bad chunk size %d" % C)


def nblocks(B, L):
    return (L + B - 1) // B


# ---------------------------------------------------------------- FORMAT.md 4, 5

def header(B, obj):
    log2 = B.bit_length() - 1
    h = MAGIC + bytes([VERSION, AEAD_AES256GCM, log2]) + bytes(7) + obj
    assert len(h) == HEADER_SIZE
    return h


def kdf_info(purpose, fields):
    return lp(purpose) + b"".join(lp(f) for f in fields)


def derive_key(master, purpose, fields):
    if len(master) < 32:
        raise ValueError("master key shorter than 32 bytes")
    info = kdf_info(purpose, fields)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master)


def object_key(dek, vol, fil, obj):
    return derive_key(dek, OBJECT_KEY_LABEL, [vol, fil, obj])


def nonce(i):
    return bytes(4) + u64(i)


def block_aad(hdr, vol, fil, obj, i, last):
    return (lp(BLOCK_AAD_LABEL) + lp(hdr) + lp(vol) + lp(fil) + lp(obj)
            + lp(u64(i)) + lp(b"\x01" if last else b"\x00"))


def object_size(B, L):
    return HEADER_SIZE + L + TAG * nblocks(B, L)


def sealed_range(B, L, f, l):
    """Byte range [start, end) of sealed blocks f..l inside the object."""
    n = nblocks(B, L)
    if not (0 <= f <= l < n):
        raise ValueError("block range out of chunk")
    start = HEADER_SIZE + f * (B + TAG)
    end = object_size(B, L) if l == n - 1 else HEADER_SIZE + (l + 1) * (B + TAG)
    return start, end


def seal_object(dek, vol, fil, obj, B, C, plaintext):
    check_layout(B, C)
    L = len(plaintext)
    assert 1 <= L <= C
    hdr = header(B, obj)
    gcm = AESGCM(object_key(dek, vol, fil, obj))
    n = nblocks(B, L)
    out = [hdr]
    for i in range(n):
        out.append(gcm.encrypt(nonce(i), plaintext[i * B:(i + 1) * B],
                               block_aad(hdr, vol, fil, obj, i, i == n - 1)))
    return b"".join(out)


def open_blocks(dek, vol, fil, obj, B, C, L, f, l, data):
    """FORMAT.md 4.4 steps 1-5 for blocks f..l; data = exactly their sealed bytes."""
    check_layout(B, C)
    if not (1 <= L <= C):
        raise ValueError("bad chunk length")
    n = nblocks(B, L)
    start, end = sealed_range(B, L, f, l)
    if len(data) != end - start:
        raise Reject("range is %d bytes, want %d" % (len(data), end - start))
    hdr = header(B, obj)
    gcm = AESGCM(object_key(dek, vol, fil, obj))
    out = []
    pos = 0
    for i in range(f, l + 1):
        size = (B if i < n - 1 else L - (n - 1) * B) + TAG
        try:
            out.append(gcm.decrypt(nonce(i), data[pos:pos + size],
                                   block_aad(hdr, vol, fil, obj, i, i == n - 1)))
        except InvalidTag:
            raise Reject("block %d: tag mismatch" % i)
        pos += size
    return b"".join(out)


def open_object(dek, vol, fil, obj, B, C, L, data):
    check_layout(B, C)
    if not (1 <= L <= C):
        raise ValueError("bad chunk length")
    if len(data) != object_size(B, L):
        raise Reject("object is %d bytes, want %d" % (len(data), object_size(B, L)))
    if data[:HEADER_SIZE] != header(B, obj):
        raise Reject("stored header differs from the catalog's")
    return open_blocks(dek, vol, fil, obj, B, C, L, 0, nblocks(B, L) - 1, data[HEADER_SIZE:])


# ---------------------------------------------------------------- FORMAT.md 6

def seal_box(key, nonce_bytes, plaintext, aad):
    return nonce_bytes + AESGCM(key).encrypt(nonce_bytes, plaintext, aad or None)


def open_box(key, box, aad):
    if len(box) < NONCE + TAG:
        raise Reject("box too short")
    try:
        return AESGCM(key).decrypt(box[:NONCE], box[NONCE:], aad or None)
    except InvalidTag:
        raise Reject("box tag mismatch")


# ---------------------------------------------------------------- checks

class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def eq(self, what, got, want):
        if got == want:
            self.passed += 1
        else:
            self.failed += 1
            g = got.hex() if isinstance(got, bytes) else got
            w = want.hex() if isinstance(want, bytes) else want
            print("FAIL %s: got %.80s, want %.80s" % (what, g, w))

    def ok(self, what, cond):
        self.eq(what, bool(cond), True)

    def rejects(self, what, fn):
        try:
            out = fn()
        except (Reject, ValueError):
            self.passed += 1
            return
        self.failed += 1
        print("FAIL %s: accepted (%d bytes returned)" % (what, len(out)))


def h(s):
    return bytes.fromhex(s)


def check_ids(c, vf):
    for v in vf["ids"]:
        raw = h(v["hex"])
        c.eq("id text of " + v["hex"], id_text(raw), v["text"])
        c.eq("parse id " + v["text"], parse_id_text(v["text"]), raw)
        c.eq("object name of " + v["hex"], object_name(raw), v["object_name"])
        # A non-canonical last character (trailing bits set) must be refused.
        t = v["text"]
        bad = t[:-1] + B32_ALPHABET[(B32_ALPHABET.index(t[-1]) | 1)]
        c.rejects("non-canonical id " + bad, lambda: parse_id_text(bad))
        if t.upper() != t:
            c.rejects("uppercase id " + t.upper(), lambda: parse_id_text(t.upper()))


def check_derived_keys(c, vf):
    keys = set()
    for v in vf["derived_keys"]:
        fields = [h(f) for f in v["fields"]]
        purpose = v["purpose"].encode()
        c.eq("kdf info %s %s" % (v["purpose"], v["fields"]), kdf_info(purpose, fields), h(v["info"]))
        k = derive_key(h(v["master"]), purpose, fields)
        c.eq("derived key %s %s" % (v["purpose"], v["fields"]), k, h(v["key"]))
        keys.add(k)
    c.eq("all derived keys distinct", len(keys), len(vf["derived_keys"]))


def catalog(v):
    return (h(v["dek"]), h(v["volume_id"]), h(v["file_id"]), h(v["object_id"]),
            v["block_size"], v["chunk_size"], v["chunk_len"])


def check_object(c, idx, v):
    dek, vol, fil, obj, B, C, L = catalog(v)
    plain = h(v["plaintext"])
    data = h(v["object"])
    name = "object %d" % idx
    c.eq(name + " chunk_len", L, len(plain))
    c.eq(name + " object_name", object_name(obj), v["object_name"])
    hdr = header(B, obj)
    c.eq(name + " header", hdr, h(v["header"]))
    c.eq(name + " subkey info", kdf_info(OBJECT_KEY_LABEL, [vol, fil, obj]), h(v["subkey_info"]))
    c.eq(name + " subkey", object_key(dek, vol, fil, obj), h(v["subkey"]))
    c.eq(name + " object size", object_size(B, L), v["object_size"])
    c.eq(name + " stored size", len(data), v["object_size"])
    n = nblocks(B, L)
    c.eq(name + " block count", len(v["blocks"]), n)
    for bv in v["blocks"]:
        i = bv["index"]
        bn = "%s block %d" % (name, i)
        start, end = sealed_range(B, L, i, i)
        c.eq(bn + " offset", start, bv["offset"])
        c.eq(bn + " length", end - start, bv["length"])
        c.eq(bn + " last flag", i == n - 1, bv["last"])
        c.eq(bn + " plain_len", end - start - TAG, bv["plain_len"])
        c.eq(bn + " nonce", nonce(i), h(bv["nonce"]))
        c.eq(bn + " aad", block_aad(hdr, vol, fil, obj, i, i == n - 1), h(bv["aad"]))
        c.eq(bn + " aad size", len(h(bv["aad"])), 132)
        c.eq(bn + " tag", data[end - TAG:end], h(bv["tag"]))
    # Decrypt the whole object, and re-encrypt it from scratch.
    c.eq(name + " decrypt", open_object(dek, vol, fil, obj, B, C, L, data), plain)
    c.eq(name + " re-encrypt", seal_object(dek, vol, fil, obj, B, C, plain), data)
    # Every range of blocks, each as one ranged read without the header.
    for f in range(n):
        for l in range(f, n):
            s, e = sealed_range(B, L, f, l)
            c.eq("%s blocks %d..%d" % (name, f, l),
                 open_blocks(dek, vol, fil, obj, B, C, L, f, l, data[s:e]),
                 plain[f * B:min((l + 1) * B, L)])
    # A plaintext byte range maps to the blocks that hold it (FORMAT.md 4.4 step 1).
    for p, m in [(0, 1), (L - 1, 1), (0, L), (B - 1, 2), (B, 1)]:
        if p < 0 or m < 1 or p + m > L:
            continue
        f, l = p // B, (p + m - 1) // B
        s, e = sealed_range(B, L, f, l)
        got = open_blocks(dek, vol, fil, obj, B, C, L, f, l, data[s:e])
        c.eq("%s bytes [%d,+%d)" % (name, p, m), got[p - f * B:p - f * B + m], plain[p:p + m])


def own_tampering(c, idx, v, others):
    """Tampered variants this decoder makes up itself from FORMAT.md 4.4."""
    dek, vol, fil, obj, B, C, L = catalog(v)
    data = h(v["object"])
    n = nblocks(B, L)
    name = "object %d" % idx

    def whole(d, **kw):
        a = dict(dek=dek, vol=vol, fil=fil, obj=obj, L=L)
        a.update(kw)
        return lambda: open_object(a["dek"], a["vol"], a["fil"], a["obj"], B, C, a["L"], d)

    # Every bit of header and tags, one bit of every other byte.
    tag_bytes = set()
    for i in range(n):
        s, e = sealed_range(B, L, i, i)
        tag_bytes.update(range(e - TAG, e))
    for p in range(len(data)):
        bits = range(8) if p < HEADER_SIZE or p in tag_bytes else [p % 8]
        for bit in bits:
            d = bytearray(data)
            d[p] ^= 1 << bit
            c.rejects("%s flip byte %d bit %d" % (name, p, bit), whole(bytes(d)))
    # Truncation at every block boundary and inside the last block; extension.
    for i in range(n):
        s, e = sealed_range(B, L, i, i)
        c.rejects("%s truncated at %d" % (name, s), whole(data[:s]))
        c.rejects("%s truncated at %d" % (name, e - 1), whole(data[:e - 1]))
    c.rejects(name + " extended", whole(data + b"\x00"))
    # Dropped last block: the new final block, read as last, fails (sealed with last=00).
    if n >= 2:
        s, e = sealed_range(B, L, n - 2, n - 2)
        c.rejects(name + " dropped last block",
                  lambda: open_blocks(dek, vol, fil, obj, B, C, (n - 1) * B, n - 2, n - 2, data[s:e]))
    # Every pair of full-sized blocks swapped.
    full = [i for i in range(n) if i < n - 1 or L % B == 0]
    for a in full:
        for b in full:
            if a < b:
                d = bytearray(data)
                sa, ea = sealed_range(B, L, a, a)
                sb, eb = sealed_range(B, L, b, b)
                d[sa:ea], d[sb:eb] = data[sb:eb], data[sa:ea]
                c.rejects("%s swap blocks %d,%d" % (name, a, b), whole(bytes(d)))
    # Each block opened at every other index.
    for i in range(n):
        s, e = sealed_range(B, L, i, i)
        for j in range(n):
            if j != i:
                c.rejects("%s block %d read as %d" % (name, i, j),
                          lambda: open_blocks(dek, vol, fil, obj, B, C, L, j, j, data[s:e]))
    # Wrong identities, key and catalog length; blocks-only reads too.
    other = bytes(range(0x50, 0x60))
    for kw in (dict(vol=other), dict(fil=other), dict(obj=other), dict(dek=bytes(32))):
        c.rejects("%s wrong %s" % (name, list(kw)[0]), whole(data, **kw))
        a = dict(dek=dek, vol=vol, fil=fil, obj=obj)
        a.update(kw)
        s, e = sealed_range(B, L, 0, n - 1)
        c.rejects("%s wrong %s (blocks only)" % (name, list(kw)[0]),
                  lambda: open_blocks(a["dek"], a["vol"], a["fil"], a["obj"], B, C, L, 0, n - 1, data[s:e]))
    for bad_L in (L - 1, L + 1, L - B, L + B):
        if 1 <= bad_L <= C:
            c.rejects("%s catalog length %d" % (name, bad_L), whole(data, L=bad_L))
    # Rollback / swap between objects: every other vector's object under this binding,
    # with the stored header rewritten to carry this object's id.
    for j, w in others:
        od = h(w["object"])
        c.rejects("%s replaced by object %d" % (name, j), whole(od))
        forged = od[:16] + obj + od[HEADER_SIZE:]
        c.rejects("%s replaced by object %d, forged header" % (name, j), whole(forged))


def apply_tamper(vf, t):
    v = vf["objects"][t["vector"]]
    dek, vol, fil, obj, B, C, L = catalog(v)
    data = bytearray(h(v["object"]))
    kind = t["kind"]
    if kind == "flip":
        data[t["offset"]] ^= 1 << t["bit"]
    elif kind == "truncate":
        del data[t["length"]:]
    elif kind == "swap_blocks":
        a, b = sorted((t["block_a"], t["block_b"]))
        sa, ea = sealed_range(B, L, a, a)
        sb, eb = sealed_range(B, L, b, b)
        orig = bytes(data)
        data[sa:ea], data[sb:eb] = orig[sb:eb], orig[sa:ea]
    elif kind == "splice":
        w = vf["objects"][t["with"]]
        src = h(w["object"])
        sa, ea = sealed_range(B, L, t["block_a"], t["block_a"])
        sb, eb = sealed_range(w["block_size"], w["chunk_len"], t["block_b"], t["block_b"])
        data[sa:ea] = src[sb:eb]
    elif kind == "replace":
        data = bytearray(h(vf["objects"][t["with"]]["object"]))
    elif kind == "binding":
        vol = h(t["volume_id"]) if "volume_id" in t else vol
        fil = h(t["file_id"]) if "file_id" in t else fil
        obj = h(t["object_id"]) if "object_id" in t else obj
    elif kind == "chunk_len":
        L = t["chunk_len"]
    elif kind == "dek":
        dek = h(t["dek"])
    else:
        raise ValueError("unknown tamper kind " + kind)
    return dek, vol, fil, obj, B, C, L, bytes(data)


def check_vector_tampering(c, vf):
    for t in vf["tampered"]:
        dek, vol, fil, obj, B, C, L, data = apply_tamper(vf, t)
        c.rejects("tampered: " + t["desc"], lambda: open_object(dek, vol, fil, obj, B, C, L, data))
        # Blocks-only readers never see the header: header-only damage is the one
        # thing they cannot notice (FORMAT.md 4.1); everything else must fail.
        if t["kind"] == "flip" and t["offset"] < HEADER_SIZE:
            continue
        n = nblocks(B, L)
        s, e = sealed_range(B, L, 0, n - 1)
        c.rejects("tampered (blocks only): " + t["desc"],
                  lambda: open_blocks(dek, vol, fil, obj, B, C, L, 0, n - 1, data[s:e]))


def check_boxes(c, vf):
    for v in vf["boxes"]:
        key, nb, aad, plain, box = h(v["key"]), h(v["nonce"]), h(v["aad"]), h(v["plaintext"]), h(v["box"])
        c.eq("box %s: size" % v["name"], len(box), len(plain) + NONCE + TAG)
        c.eq("box %s: nonce prefix" % v["name"], box[:NONCE], nb)
        c.eq("box %s: open" % v["name"], open_box(key, box, aad), plain)
        c.eq("box %s: re-seal" % v["name"], seal_box(key, nb, plain, aad), box)
        for p in range(len(box)):
            d = bytearray(box)
            d[p] ^= 1 << (p % 8)
            c.rejects("box %s: flip byte %d" % (v["name"], p), lambda: open_box(key, bytes(d), aad))
        c.rejects("box %s: wrong aad" % v["name"], lambda: open_box(key, box, aad + b"x"))
        c.rejects("box %s: truncated" % v["name"], lambda: open_box(key, box[:-1], aad))
        fresh = os.urandom(NONCE)
        c.eq("box %s: random-nonce round trip" % v["name"], open_box(key, seal_box(key, fresh, plain, aad), aad), plain)
    # The third box's key comes from DeriveKey(dek, "coffer/v1 test staging key", file id).
    staged = vf["boxes"][2]
    v0 = vf["objects"][0]
    c.eq("box key from DeriveKey",
         derive_key(h(v0["dek"]), b"coffer/v1 test staging key", [h(v0["file_id"])]), h(staged["key"]))
    for v in vf["bad_boxes"]:
        c.rejects("bad box: " + v["desc"], lambda: open_box(h(v["key"]), h(v["box"]), h(v["aad"])))


# ---------------------------------------------------------------- FORMAT.md 12 (replica objects)

REPL_HEADER_SIZE = 64
REPL_MAGIC = b"COFREPL1"
REPL_VERSION = 1
REPL_LOG2_B = 16
REPL_B = 1 << REPL_LOG2_B
REPL_KEY_LABEL = b"coffer/v1 replica object"
REPL_AAD_LABEL = b"coffer/v1 replica block"
REPL_FLAG_LAST = 1
REPL_PATTERN = "(7*i+3) mod 251"


def repl_header(kind, kek_version, vol, epoch, pos, part, last, obj):
    """The 64-byte header of 12.2 from its fields."""
    hdr = (REPL_MAGIC + bytes([REPL_VERSION, ord(kind), AEAD_AES256GCM, REPL_LOG2_B]) + struct.pack(">I", kek_version)
           + vol + struct.pack(">IQHH", epoch, pos, part, REPL_FLAG_LAST if last else 0) + obj)
    assert len(hdr) == REPL_HEADER_SIZE
    return hdr


def repl_parse_header(b):
    """12.2 strict parse: returns (kind, kek_version, vol, epoch, pos, part, last, obj)."""
    if len(b) < REPL_HEADER_SIZE:
        raise Reject("shorter than the header")
    b = b[:REPL_HEADER_SIZE]
    if b[0:8] != REPL_MAGIC:
        raise Reject("bad magic")
    if b[8] != REPL_VERSION or b[10] != AEAD_AES256GCM or b[11] != REPL_LOG2_B:
        raise Reject("unsupported version, cipher or block size")
    kind = chr(b[9])
    if kind not in "ds":
        raise Reject("unknown kind")
    (kek_version,) = struct.unpack(">I", b[12:16])
    vol = b[16:32]
    epoch, pos, part, flags = struct.unpack(">IQHH", b[32:48])
    obj = b[48:64]
    if kek_version == 0 or vol == bytes(16) or obj == bytes(16):
        raise Reject("zero KEK version, volume id or object id")
    if flags & ~REPL_FLAG_LAST:
        raise Reject("reserved flag bits set")
    if kind == "d" and (part != 0 or flags != 0):
        raise Reject("delta with a part or flags")
    last = bool(flags & REPL_FLAG_LAST)
    assert repl_header(kind, kek_version, vol, epoch, pos, part, last, obj) == b
    return kind, kek_version, vol, epoch, pos, part, last, obj


def repl_kdf_fields(kind, vol, epoch, pos, part, obj):
    return [vol, u32(epoch), u64(pos), kind.encode(), struct.pack(">H", part), obj]


def repl_key(k_rep, kind, vol, epoch, pos, part, obj):
    if len(k_rep) != 32:
        raise ValueError("K_rep must be 32 bytes")
    return derive_key(k_rep, REPL_KEY_LABEL, repl_kdf_fields(kind, vol, epoch, pos, part, obj))


def repl_aad(hdr, i, last):
    return lp(REPL_AAD_LABEL) + lp(hdr) + lp(u64(i)) + lp(b"\x01" if last else b"\x00")


def repl_nblocks(L):
    return max(1, (L + REPL_B - 1) // REPL_B)


def repl_object_size(L):
    return REPL_HEADER_SIZE + L + TAG * repl_nblocks(L)


def repl_plain_len(size):
    """12.5: the plaintext length an object size stands for, or None."""
    r = size - REPL_HEADER_SIZE
    if r < TAG:
        return None
    full, rem = divmod(r, REPL_B + TAG)
    if rem == 0:
        return full * REPL_B
    if full == 0 and rem == TAG:
        return 0
    if rem > TAG:
        return full * REPL_B + rem - TAG
    return None


def repl_seal(k_rep, kind, kek_version, vol, epoch, pos, part, last, obj, plaintext):
    hdr = repl_header(kind, kek_version, vol, epoch, pos, part, last, obj)
    gcm = AESGCM(repl_key(k_rep, kind, vol, epoch, pos, part, obj))
    n = repl_nblocks(len(plaintext))
    out = [hdr]
    for i in range(n):
        out.append(gcm.encrypt(nonce(i), plaintext[i * REPL_B:(i + 1) * REPL_B], repl_aad(hdr, i, i == n - 1)))
    return b"".join(out)


def repl_open(k_rep, want, data):
    """12.6: want = (kind, kek_version, vol, epoch, pos, part) from the name and the volume."""
    stored = repl_parse_header(data)
    kind, kek_version, vol, epoch, pos, part, last, obj = stored
    if (kind, kek_version, vol, epoch, pos, part) != tuple(want):
        raise Reject("stored header does not match the name")
    # Byte for byte: the expected header with the stored object id and flags.
    if data[:REPL_HEADER_SIZE] != repl_header(*want, last, obj):
        raise Reject("stored header bytes differ")
    L = repl_plain_len(len(data))
    if L is None:
        raise Reject("object size fits no plaintext length")
    hdr = data[:REPL_HEADER_SIZE]
    gcm = AESGCM(repl_key(k_rep, kind, vol, epoch, pos, part, obj))
    n = repl_nblocks(L)
    out = []
    pos_ = REPL_HEADER_SIZE
    for i in range(n):
        size = min(REPL_B, L - i * REPL_B) + TAG
        try:
            out.append(gcm.decrypt(nonce(i), data[pos_:pos_ + size], repl_aad(hdr, i, i == n - 1)))
        except InvalidTag:
            raise Reject("replica block %d: tag mismatch" % i)
        pos_ += size
    assert pos_ == len(data)
    return b"".join(out)


def repl_pattern(n):
    return bytes((7 * i + 3) % 251 for i in range(n))


def repl_name(v):
    return (v["kind"], v["kek_version"], h(v["volume_id"]), v["epoch"], v["position"], v["part"])


def repl_plaintext(v):
    if v.get("plaintext_pattern"):
        if v["plaintext_pattern"] != REPL_PATTERN:
            raise ValueError("unknown plaintext pattern")
        return repl_pattern(v["plaintext_len"])
    return h(v["plaintext"])


def check_replica_object(c, idx, v):
    name = "replica %d" % idx
    k_rep = h(v["key"])
    kind, kek_version, vol, epoch, pos, part = repl_name(v)
    obj, last = h(v["object_id"]), v["last"]
    plain = repl_plaintext(v)
    data = h(v["object"])
    c.eq(name + " block size", v["block_size"], REPL_B)
    c.eq(name + " plaintext_len", len(plain), v["plaintext_len"])
    hdr = repl_header(kind, kek_version, vol, epoch, pos, part, last, obj)
    c.eq(name + " header", hdr, h(v["header"]))
    c.eq(name + " parse header", repl_parse_header(data), (kind, kek_version, vol, epoch, pos, part, last, obj))
    fields = repl_kdf_fields(kind, vol, epoch, pos, part, obj)
    c.eq(name + " subkey info", kdf_info(REPL_KEY_LABEL, fields), h(v["subkey_info"]))
    c.eq(name + " subkey", repl_key(k_rep, kind, vol, epoch, pos, part, obj), h(v["subkey"]))
    c.eq(name + " object size", repl_object_size(len(plain)), v["object_size"])
    c.eq(name + " stored size", len(data), v["object_size"])
    c.eq(name + " plaintext length from size", repl_plain_len(len(data)), len(plain))
    n = repl_nblocks(len(plain))
    c.eq(name + " block count", len(v["blocks"]), n)
    off = REPL_HEADER_SIZE
    for bv in v["blocks"]:
        i = bv["index"]
        bn = "%s block %d" % (name, i)
        plen = min(REPL_B, len(plain) - i * REPL_B)
        c.eq(bn + " offset", off, bv["offset"])
        c.eq(bn + " length", plen + TAG, bv["length"])
        c.eq(bn + " plain_len", plen, bv["plain_len"])
        c.eq(bn + " last", i == n - 1, bv["last"])
        c.eq(bn + " nonce", nonce(i), h(bv["nonce"]))
        aad = repl_aad(hdr, i, i == n - 1)
        c.eq(bn + " aad", aad, h(bv["aad"]))
        c.eq(bn + " aad size", len(aad), 112)
        c.eq(bn + " tag", data[off + plen:off + plen + TAG], h(bv["tag"]))
        off += plen + TAG
    c.eq(name + " decrypt", repl_open(k_rep, repl_name(v), data), plain)
    c.eq(name + " re-encrypt", repl_seal(k_rep, kind, kek_version, vol, epoch, pos, part, last, obj, plain), data)


def replica_own_tampering(c, idx, v, others):
    """Tampered variants this decoder makes up itself from FORMAT.md 12.6."""
    name = "replica %d" % idx
    k_rep, want, data = h(v["key"]), repl_name(v), h(v["object"])
    n = len(v["blocks"])
    small = len(data) < 1024
    # Every header bit; every byte of a small object (one bit each); every tag bit.
    for p in range(len(data)):
        in_tag = any(bv["offset"] + bv["length"] - TAG <= p < bv["offset"] + bv["length"] for bv in v["blocks"])
        if p < REPL_HEADER_SIZE or in_tag:
            bits = range(8)
        elif small or p % 997 == 0:
            bits = [p % 8]
        else:
            continue
        for bit in bits:
            d = bytearray(data)
            d[p] ^= 1 << bit
            c.rejects("%s flip byte %d bit %d" % (name, p, bit), lambda: repl_open(k_rep, want, bytes(d)))
    # Every truncation of a small object; block boundaries and the last block of a large one.
    cuts = range(len(data)) if small else sorted({0, 63, 64, 65, 80, v["blocks"][0]["length"] + 64,
                                                  len(data) - 1, len(data) - 16, len(data) - 17})
    for cut in cuts:
        c.rejects("%s truncated to %d" % (name, cut), lambda: repl_open(k_rep, want, data[:cut]))
    for extra in (b"\x00", bytes(TAG), bytes(TAG + 1)):
        c.rejects("%s extended by %d" % (name, len(extra)), lambda: repl_open(k_rep, want, data + extra))
    # The last block re-read as not last: drop it and keep the others (multi-block only).
    if n >= 2:
        c.rejects(name + " last block dropped", lambda: repl_open(k_rep, want, data[:v["blocks"][-1]["offset"]]))
    # Every field of the name changed, with the stored header as is and rewritten to match.
    kind, kek_version, vol, epoch, pos, part = want
    _, _, _, _, _, _, last, obj = repl_parse_header(data)
    variants = [("kind", ("s" if kind == "d" else "d", kek_version, vol, epoch, pos, 0)),
                ("kek version", (kind, kek_version + 1, vol, epoch, pos, part)),
                ("volume", (kind, kek_version, bytes(range(0x50, 0x60)), epoch, pos, part)),
                ("epoch", (kind, kek_version, vol, epoch + 1, pos, part)),
                ("position", (kind, kek_version, vol, epoch, pos + 1, part))]
    if kind == "s":
        variants.append(("part", (kind, kek_version, vol, epoch, pos, part + 1)))
    for what, w in variants:
        c.rejects("%s named with another %s" % (name, what), lambda: repl_open(k_rep, w, data))
        forged = repl_header(*w, last and w[0] == "s", obj) + data[REPL_HEADER_SIZE:]
        c.rejects("%s named with another %s, header forged" % (name, what), lambda: repl_open(k_rep, w, forged))
    c.rejects(name + " wrong key", lambda: repl_open(bytes(32), want, data))
    for j, w in others:
        od = h(w["object"])
        c.rejects("%s replaced by replica %d" % (name, j), lambda: repl_open(k_rep, want, od))
        c.rejects("%s replaced by replica %d, header kept" % (name, j),
                  lambda: repl_open(k_rep, want, data[:REPL_HEADER_SIZE] + od[REPL_HEADER_SIZE:]))


def apply_replica_tamper(rs, t):
    v = rs["objects"][t["vector"]]
    k_rep, want, data = h(v["key"]), repl_name(v), bytearray(h(v["object"]))
    kind = t["kind"]
    if kind == "flip":
        data[t["offset"]] ^= 1 << t["bit"]
    elif kind == "truncate":
        del data[t["length"]:]
    elif kind == "extend":
        data += h(t["append"])
    elif kind == "swap_blocks":
        blocks = [bytes(data[b["offset"]:b["offset"] + b["length"]]) for b in v["blocks"]]
        a, b = t["block_a"], t["block_b"]
        blocks[a], blocks[b] = blocks[b], blocks[a]
        data = data[:REPL_HEADER_SIZE] + b"".join(blocks)
    elif kind == "swap_header":
        data[:REPL_HEADER_SIZE] = h(rs["objects"][t["with"]]["header"])
    elif kind == "replace":
        data = bytearray(h(rs["objects"][t["with"]]["object"]))
    elif kind == "rename":
        want = repl_name(t["expect"])
        if t["rewrite_header"]:
            last = bool(data[47] & REPL_FLAG_LAST) and want[0] == "s"
            data[:REPL_HEADER_SIZE] = repl_header(*want, last, bytes(data[48:64]))
    elif kind == "key":
        k_rep = h(t["key"])
    else:
        raise ValueError("unknown replica tamper kind " + kind)
    return k_rep, want, bytes(data)


def check_replicas(c, vf):
    rs = vf["replica"]
    objs = rs["objects"]
    for i, v in enumerate(objs):
        check_replica_object(c, i, v)
        replica_own_tampering(c, i, v, [(j, w) for j, w in enumerate(objs) if j != i])
    for t in rs["tampered"]:
        k_rep, want, data = apply_replica_tamper(rs, t)
        c.rejects("replica tampered: " + t["desc"], lambda: repl_open(k_rep, want, data))
    # Round trips at the sizes 12.5 singles out, with fresh random ids.
    v = objs[0]
    for L in (0, 1, REPL_B - 1, REPL_B, REPL_B + 1, 3 * REPL_B):
        obj = os.urandom(16)
        plain = os.urandom(L)
        sealed = repl_seal(h(v["key"]), "s", 7, h(v["volume_id"]), 9, 11, 3, True, obj, plain)
        c.eq("replica round trip %d bytes: size" % L, len(sealed), repl_object_size(L))
        c.eq("replica round trip %d bytes" % L,
             repl_open(h(v["key"]), ("s", 7, h(v["volume_id"]), 9, 11, 3), sealed), plain)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        here, "..", "..", "crypto", "format", "testdata", "vectors.json")
    with open(path) as f:
        vf = json.load(f)
    c = Checks()
    try:
        check_ids(c, vf)
        check_derived_keys(c, vf)
        objs = vf["objects"]
        for i, v in enumerate(objs):
            check_object(c, i, v)
            own_tampering(c, i, v, [(j, w) for j, w in enumerate(objs) if j != i])
        check_vector_tampering(c, vf)
        check_boxes(c, vf)
        check_replicas(c, vf)
    except Exception as e:  # a crash is a failure, never a pass
        c.failed += 1
        print("FAIL: decoder raised %s: %s" % (type(e).__name__, e))
    print("%d passed, %d failed" % (c.passed, c.failed))
    return 1 if c.failed or c.passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
