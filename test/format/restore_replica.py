#!/usr/bin/python3
"""Rebuild a coffer catalog from its replica objects, written from FORMAT.md section 12.

The replica objects of one epoch are read from a local-folder remote (the folder given
to `coffer init --remote /path`): each is opened as a sealed container (12.1-12.6, with
decode.py's functions), decoded as a delta (12.11) or a snapshot part (12.12), checked
against the chain (12.13) and applied as 12.15 says: the newest complete snapshot, then
every delta after it. It refuses what 12.15 refuses (a hole, a broken link, parts that do
not agree, a wrong last flag, ...) and leaves out only the newest object when it does not
open, with a warning. On success it prints the position and time restored to.

Run:
  /usr/bin/python3 test/format/restore_replica.py --dir REMOTE_DIR --volume HEX \\
      --epoch E --key KEYS --out catalog.db [--json]

KEYS gives K_rep (FORMAT.md 9.8: the volume chain's key for purpose "replica") in hex:
"v=HEX" for KEK version v, several separated by commas ("1=ab..,2=cd.."); a bare HEX is
used for every version not listed. --out must not exist; it is removed if the restore
fails. Exit status: 0 restored, 1 refused or failed, 2 bad arguments.

Needs only python3-cryptography, through decode.py (Debian 12: version 38).
"""

import argparse
import datetime
import json
import os
import re
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import decode  # noqa: E402  (the container of 12.1-12.6: repl_parse_header, repl_open)

# ---------------------------------------------------------------- FORMAT.md 12.10

NAME_RE = re.compile(r"r/([0-9a-f]{8})/([0-9a-f]{16})(?:\.d|\.s\.([0-9a-f]{4}))")


def epoch_prefix(e):
    return "r/%08x/" % e


def name(kind, e, p, k=0):
    if kind == "d":
        return "%s%016x.d" % (epoch_prefix(e), p)
    return "%s%016x.s.%04x" % (epoch_prefix(e), p, k)


def parse_name(n):
    """(kind, epoch, position, part) of a replica object name, or None."""
    m = NAME_RE.fullmatch(n)
    if not m:
        return None
    e, p = int(m.group(1), 16), int(m.group(2), 16)
    if m.group(3) is None:
        return "d", e, p, 0
    return "s", e, p, int(m.group(3), 16)


# ---------------------------------------------------------------- FORMAT.md 12.11, 12.12

DELTA_HEAD = 60
SNAP_HEAD = 38
PART_BYTES = 16 << 20


class Refused(Exception):
    """The replica cannot be restored: the message names the object and the reason."""


def check_page_size(ps):
    if ps < 512 or ps > 65536 or ps & (ps - 1):
        raise ValueError("bad page size %d" % ps)


def pages_per_part(ps):
    return PART_BYTES // ps


def decode_delta(b):
    """12.11: returns dict(page_size, db_pages, time_ns, prev, wal, pages=[(pgno, bytes)])."""
    if len(b) < DELTA_HEAD:
        raise ValueError("delta of %d bytes is shorter than its %d-byte head" % (len(b), DELTA_HEAD))
    ps, db_pages, time_ns = struct.unpack(">IIq", b[0:16])
    check_page_size(ps)
    prev = b[16:32]
    wal = struct.unpack(">IIQII", b[32:56])
    (n,) = struct.unpack(">I", b[56:60])
    rest = b[DELTA_HEAD:]
    if n < 1 or len(rest) != n * (4 + ps):
        raise ValueError("%d pages of %d bytes do not fill %d bytes" % (n, ps, len(rest)))
    if db_pages == 0:
        raise ValueError("database size of 0 pages")
    pages = []
    for i in range(n):
        off = i * (4 + ps)
        (pgno,) = struct.unpack(">I", rest[off:off + 4])
        if pgno == 0 or (i > 0 and pgno <= pages[-1][0]):
            raise ValueError("page %d out of order (entry %d)" % (pgno, i))
        pages.append((pgno, rest[off + 4:off + 4 + ps]))
    return dict(page_size=ps, db_pages=db_pages, time_ns=time_ns, prev=prev, wal=wal, pages=pages)


def decode_part(b, k):
    """12.12: part k of a snapshot: dict(page_size, db_pages, time_ns, parts, first, state, pages)."""
    if len(b) < SNAP_HEAD:
        raise ValueError("snapshot part of %d bytes is shorter than its %d-byte head" % (len(b), SNAP_HEAD))
    ps, db_pages, time_ns, parts, first = struct.unpack(">IIqHI", b[0:22])
    state, pages = b[22:38], b[SNAP_HEAD:]
    check_page_size(ps)
    per = pages_per_part(ps)
    want = 0
    if k * per + 1 <= db_pages:
        want = min(per, db_pages - k * per)
    if db_pages == 0:
        raise ValueError("part %d: database size of 0 pages" % k)
    if parts == 0 or k >= parts:
        raise ValueError("part %d of %d parts" % (k, parts))
    if parts != (db_pages + per - 1) // per:
        raise ValueError("part %d: %d parts for %d pages" % (k, parts, db_pages))
    if first != k * per + 1:
        raise ValueError("part %d starts at page %d, want %d" % (k, first, k * per + 1))
    if len(pages) != want * ps:
        raise ValueError("part %d holds %d bytes, want %d pages of %d" % (k, len(pages), want, ps))
    return dict(page_size=ps, db_pages=db_pages, time_ns=time_ns, parts=parts, first=first, state=state,
                pages=pages)


# ---------------------------------------------------------------- FORMAT.md 12.15: the remote folder


def list_epoch(root, e):
    """12.15 step 1: deltas {P: size}, snaps {P: {k: size}}, newest P, total bytes."""
    deltas, snaps, max_p, total = {}, {}, 0, 0
    top = os.path.join(root, epoch_prefix(e))
    for dirpath, _, files in os.walk(top):
        for f in files:
            path = os.path.join(dirpath, f)
            if os.path.islink(path) or not os.path.isfile(path):
                continue  # the local remote lists regular files only
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            parsed = parse_name(rel)
            if parsed is None or parsed[1] != e:
                continue  # not a replica object of this epoch: ignored
            kind, _, p, k = parsed
            size = os.path.getsize(path)
            if kind == "d":
                deltas[p] = size
            else:
                snaps.setdefault(p, {})[k] = size
            max_p = max(max_p, p)
            total += size
    return deltas, snaps, max_p, total


class KeyMissing(Refused):
    """No replica key for the version an object names: never a dropped tail."""
    pass


class Replica:
    def __init__(self, root, volume, epoch, keys, warn):
        self.root, self.volume, self.epoch, self.keys, self.warn = root, volume, epoch, keys, warn

    def key(self, version):
        if version in self.keys:
            return self.keys[version]
        if None in self.keys:
            return self.keys[None]
        raise ValueError("no replica key given for KEK version %d" % version)

    def open(self, kind, p, k=0):
        """12.6 with what the reader expects; returns (plaintext, object id, last flag).
        Any failure (missing, short, bad header, no key, tag) raises Refused."""
        n = name(kind, self.epoch, p, k)
        try:
            with open(os.path.join(self.root, n), "rb") as f:
                data = f.read()
            if len(data) < decode.REPL_HEADER_SIZE:
                raise decode.Reject("object of %d bytes is shorter than its header" % len(data))
            stored = decode.repl_parse_header(data)
            version = stored[1]  # the KEK version that gave K_rep: header bytes 12..15
            try:
                key = self.key(version)
            except ValueError as err:
                raise KeyMissing("%s: %s" % (n, err))
            plain = decode.repl_open(key, (kind, version, self.volume, self.epoch, p, k), data)
        except (OSError, ValueError, decode.Reject) as e:
            raise Refused("%s: %s" % (n, e))
        return plain, stored[7], stored[6]


def restore(rep, out_path):
    """12.15. Returns a dict: epoch, position, time_ns, objects, bytes, dropped_tail."""
    e = rep.epoch
    deltas, snaps, max_p, total = list_epoch(rep.root, e)
    if not deltas and not snaps:
        raise Refused("%s holds no replica of epoch %d (%s is empty)" % (rep.root, e, epoch_prefix(e)))
    res = dict(epoch=e, position=0, time_ns=0, objects=0, bytes=0, dropped_tail="")
    fd = os.open(out_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    ok = False
    try:
        with os.fdopen(fd, "r+b") as f:

            def progress(n):
                res["bytes"] += n
                res["objects"] += 1

            def apply_snapshot(p):
                """Writes snapshot p into f; (complete, state, page size, time)."""
                parts = snaps[p]
                if 0 not in parts:
                    return False, None, 0, 0
                k, n, p0 = 0, 0, None
                while k == 0 or k < n:
                    if k not in parts:
                        return False, None, 0, 0
                    plain, obj, last = rep.open("s", p, k)
                    try:
                        sp = decode_part(plain, k)
                    except ValueError as err:
                        raise Refused("%s: %s" % (name("s", e, p, k), err))
                    if k == 0:
                        p0, n = sp, sp["parts"]
                        state = sp["state"] if sp["state"] != bytes(16) else obj
                        f.truncate(0)
                    elif any(sp[x] != p0[x] for x in ("parts", "db_pages", "page_size", "state", "time_ns")):
                        return False, None, 0, 0  # a part of another attempt at this snapshot
                    if last != (k == n - 1):
                        raise Refused("%s: last-part flag %s, but the snapshot has %d parts"
                                      % (name("s", e, p, k), last, n))
                    f.seek((sp["first"] - 1) * sp["page_size"])
                    f.write(sp["pages"])
                    progress(parts[k])
                    k += 1
                f.truncate(p0["db_pages"] * p0["page_size"])
                return True, state, p0["page_size"], p0["time_ns"]

            # Step 2: the newest complete snapshot.
            found = False
            end = max_p  # the newest position to restore
            for p in sorted(snaps, reverse=True):
                complete, state, page_size, t = apply_snapshot(p)
                if not complete:
                    # Cut short by a crash: at the newest position without a delta, restore the
                    # state before it; where a delta of the same position carries the chain on,
                    # an older snapshot and the deltas give the same state.
                    if p == max_p and p not in deltas:
                        rep.warn("the newest snapshot (position %d) is incomplete (cut short); restoring the state before it" % p)
                        res["dropped_tail"], end = name("s", e, p, 0), p - 1
                        continue
                    if p in deltas:
                        rep.warn("the snapshot of position %d is incomplete (cut short); using an older one and the deltas after it" % p)
                        continue
                    raise Refused("the snapshot %s is missing parts or has parts of another snapshot (deleted or replaced)"
                                  % name("s", e, p, 0))
                if p > end:
                    continue
                base, found = p, True
                res["position"], res["time_ns"] = p, t
                break
            if not found:
                first = min(deltas) if deltas else 0
                if first > 1:
                    raise Refused("%s is missing: the deltas from position %d on build on it, and no complete "
                                  "snapshot is left" % (name("s", e, first - 1, 0), first))
                raise Refused("%s holds no complete snapshot to restore from" % epoch_prefix(e))

            # Step 3: every delta after it, each linked to the state before it.
            for p in range(base + 1, end + 1):
                n = name("d", e, p)
                if p not in deltas:
                    if p in snaps:
                        raise Refused("position %d has only an incomplete snapshot, and the chain from position "
                                      "%d cannot continue past it" % (p, base))
                    raise Refused("%s is missing: the replica has a hole at position %d (between %d and %d)"
                                  % (n, p, base, end))
                try:
                    plain, obj, _ = rep.open("d", p)
                except Refused as err:
                    if p == end and not isinstance(err, KeyMissing):
                        rep.warn("the newest object does not open; restoring to the position before it: %s" % err)
                        res["dropped_tail"] = n
                        break
                    raise
                try:
                    d = decode_delta(plain)
                except ValueError as err:
                    raise Refused("%s: delta: %s" % (n, err))
                if d["prev"] != state:
                    raise Refused("%s does not follow the state before it (links to %s, the restored state is %s): "
                                  "an object of the chain was replaced by an older copy or another object"
                                  % (n, d["prev"].hex(), state.hex()))
                if d["page_size"] != page_size:
                    raise Refused("%s has page size %d, the catalog %d" % (n, d["page_size"], page_size))
                for pgno, data in d["pages"]:
                    f.seek((pgno - 1) * page_size)
                    f.write(data)
                f.truncate(d["db_pages"] * page_size)
                state, res["position"], res["time_ns"] = obj, p, d["time_ns"]
                progress(deltas[p])
            f.flush()
            os.fsync(f.fileno())
        ok = True
        return res
    finally:
        if not ok:
            try:
                os.remove(out_path)
            except OSError:
                pass


# ---------------------------------------------------------------- command line


def parse_keys(s):
    keys = {}
    for item in s.split(","):
        item = item.strip()
        if not item:
            continue
        version = None
        if "=" in item:
            v, item = item.split("=", 1)
            version = int(v, 10)
            if version < 1 or version > 0xFFFFFFFF:
                raise ValueError("KEK version %d out of range" % version)
        k = bytes.fromhex(item)
        if len(k) != 32:
            raise ValueError("a replica key is 32 bytes (64 hex digits), got %d bytes" % len(k))
        if version in keys:
            raise ValueError("two keys for %s" % ("version %d" % version if version else "every version"))
        keys[version] = k
    if not keys:
        raise ValueError("no key given")
    return keys


def time_text(ns):
    t = datetime.datetime.fromtimestamp(ns // 10**9, tz=datetime.timezone.utc)
    return "%s.%09dZ" % (t.strftime("%Y-%m-%dT%H:%M:%S"), ns % 10**9)


def main(argv):
    ap = argparse.ArgumentParser(description="Rebuild a coffer catalog from the replica objects in a local folder.")
    ap.add_argument("--dir", required=True, help="the local-folder remote (holds r/<epoch>/...)")
    ap.add_argument("--volume", required=True, help="volume id, 32 hex digits")
    ap.add_argument("--epoch", required=True, type=int, help="the epoch to restore")
    ap.add_argument("--key", required=True, help='K_rep in hex: "HEX" or "v=HEX,..." by KEK version')
    ap.add_argument("--out", required=True, help="the catalog file to write (must not exist)")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    a = ap.parse_args(argv)
    try:
        volume = bytes.fromhex(a.volume)
        if len(volume) != 16 or volume == bytes(16):
            raise ValueError("a volume id is 16 nonzero bytes (32 hex digits)")
        if not 0 <= a.epoch <= 0xFFFFFFFF:
            raise ValueError("epoch out of range")
        keys = parse_keys(a.key)
    except ValueError as e:
        print("restore_replica: %s" % e, file=sys.stderr)
        return 2

    def warn(msg):
        print("restore_replica: warning: %s" % msg, file=sys.stderr)

    try:
        res = restore(Replica(a.dir, volume, a.epoch, keys, warn), a.out)
    except (Refused, OSError) as e:
        print("restore_replica: refused: %s" % e, file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(res, sort_keys=True))
    else:
        print("restored epoch %d to position %d, state of %s (time_ns %d): %d objects, %d bytes read%s"
              % (res["epoch"], res["position"], time_text(res["time_ns"]), res["time_ns"], res["objects"],
                 res["bytes"], "; left out the newest object " + res["dropped_tail"] if res["dropped_tail"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
