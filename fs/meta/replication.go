package meta

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"syscall"
)

// Replication is what the catalog asks of a replicator (fs/replica) once
// SetReplication installed one. The catalog never checkpoints on its own
// then (wal_autocheckpoint is 0 on the writer): only Checkpoint does, with
// the writer held and ShipAll called first, so no committed WAL frame is
// folded into the main file before the replicator has shipped it.
type Replication interface {
	// Admit runs before every write transaction; an error fails the write
	// (ENOSPC past the cap on unreplicated changes, EROFS when another host
	// owns the volume).
	Admit() error
	// Flush returns once every transaction committed before the call is
	// replicated. Sync calls it after making the WAL durable.
	Flush(ctx context.Context) error
	// ShipAndCheckpoint ships every committed frame, then runs checkpoint
	// (which reports whether the WAL was folded into the main file and
	// truncated), with no shipping in between. The catalog calls it with the
	// writer held, so nothing commits meanwhile either. With ship false it
	// ships nothing (no remote call while the writer waits): if a committed
	// frame is not shipped yet, it does not checkpoint and returns false.
	ShipAndCheckpoint(ctx context.Context, checkpoint func() (bool, error), ship bool) (bool, error)
}

type replicationHolder struct{ r Replication }

// SetReplication installs r (nil removes it). Set it before the catalog is
// shared: writes committed before it are replicated only by the replicator's
// own first pass.
func (c *Catalog) SetReplication(r Replication) {
	if r == nil {
		c.repl.Store(nil)
		return
	}
	c.repl.Store(&replicationHolder{r})
}

func (c *Catalog) replication() Replication {
	if h := c.repl.Load(); h != nil {
		return h.r
	}
	return nil
}

func (c *Catalog) flushReplica(ctx context.Context) error {
	if r := c.replication(); r != nil {
		if err := r.Flush(ctx); err != nil {
			return fmt.Errorf("meta: sync: replicate the catalog: %w", err)
		}
	}
	return nil
}

// selfCheckpointEvery: without a replicator, the catalog checkpoints itself
// every this many commits (SQLite's own default is every 1000 pages).
const selfCheckpointEvery = 256

func (c *Catalog) selfCheckpoint(ctx context.Context) {
	// PASSIVE: never waits for readers; a later one catches up.
	c.w.ExecContext(context.WithoutCancel(ctx), "PRAGMA wal_checkpoint(PASSIVE)")
}

// Checkpoint folds the WAL into the main file and truncates it: with the
// writer held it lets the replicator ship everything first
// (Replication.ShipAndCheckpoint), then runs wal_checkpoint(TRUNCATE). done is
// false, with no error, when readers on older snapshots kept it from
// completing within the busy timeout.
func (c *Catalog) Checkpoint(ctx context.Context) (done bool, err error) {
	return c.checkpoint(ctx, true)
}

// CheckpointIfShipped is Checkpoint for the replicator's own housekeeping: it
// checkpoints only if every committed frame is already on the remote, so that
// writers never wait for a remote call behind the held writer.
func (c *Catalog) CheckpointIfShipped(ctx context.Context) (done bool, err error) {
	return c.checkpoint(ctx, false)
}

func (c *Catalog) checkpoint(ctx context.Context, ship bool) (bool, error) {
	if c.w == nil {
		return false, errf(syscall.EROFS, "checkpoint: catalog opened read-only")
	}
	conn, err := c.w.Conn(ctx)
	if err != nil {
		return false, wrapSQL("checkpoint", err)
	}
	defer conn.Close()
	return c.shipAndTruncate(ctx, conn, "checkpoint", ship)
}

// shipAndTruncate runs wal_checkpoint(TRUNCATE) on the writer conn, through
// the replicator if there is one. done is false if readers kept it from
// completing.
func (c *Catalog) shipAndTruncate(ctx context.Context, conn *sql.Conn, what string, ship bool) (done bool, err error) {
	checkpoint := func() (bool, error) {
		var busy, frames, moved int
		if err := conn.QueryRowContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)").Scan(&busy, &frames, &moved); err != nil {
			return false, wrapSQL(what, err)
		}
		return busy == 0, nil
	}
	r := c.replication()
	if r == nil {
		return checkpoint()
	}
	done, err = r.ShipAndCheckpoint(ctx, checkpoint, ship)
	if err != nil {
		return false, fmt.Errorf("meta: %s: %w", what, err)
	}
	return done, nil
}

// ReadMainFile runs read on the catalog's main file while it holds every
// committed change and nothing can change it: with the writer held it
// checkpoints (as Checkpoint), opens a read transaction that sees only the
// main file (SQLite's read mark 0, which no checkpoint can pass), releases
// the writer and calls read. Writers go on meanwhile, into the WAL. This is
// how a replicator streams a snapshot without a second copy on disk.
func (c *Catalog) ReadMainFile(ctx context.Context, read func(f *os.File) error) error {
	if c.w == nil {
		return errf(syscall.EROFS, "read catalog file: catalog opened read-only")
	}
	rconn, err := c.r.Conn(ctx)
	if err != nil {
		return wrapSQL("read catalog file", err)
	}
	defer rconn.Close()
	wconn, err := c.w.Conn(ctx)
	if err != nil {
		return wrapSQL("read catalog file", err)
	}
	release := func() {
		if wconn != nil {
			wconn.Close()
			wconn = nil
		}
	}
	defer release()
	done, err := c.shipAndTruncate(ctx, wconn, "read catalog file: checkpoint", true)
	if err != nil {
		return err
	}
	if !done {
		return errf(syscall.EBUSY, "read catalog file: readers on older snapshots kept the checkpoint from completing")
	}
	if _, err := rconn.ExecContext(ctx, "BEGIN"); err != nil {
		return wrapSQL("read catalog file: begin", err)
	}
	defer rconn.ExecContext(context.WithoutCancel(ctx), "ROLLBACK")
	var one int
	if err := rconn.QueryRowContext(ctx, "SELECT 1 FROM volume WHERE id = 1").Scan(&one); err != nil {
		return wrapSQL("read catalog file: begin", err)
	}
	release()
	f, err := os.Open(c.path)
	if err != nil {
		return fmt.Errorf("meta: read catalog file: %w", err)
	}
	defer f.Close()
	return read(f)
}

// ReplicaEpoch is the owner epoch of the catalog's replicas (0: never
// replicated).
func (c *Catalog) ReplicaEpoch(ctx context.Context) (uint32, error) {
	var e int64
	if err := c.r.QueryRowContext(ctx, "SELECT replica_epoch FROM volume WHERE id = 1").Scan(&e); err != nil {
		return 0, wrapSQL("read replica epoch", err)
	}
	return uint32(e), nil
}

// SetReplicaEpoch records the owner epoch (coffer init, restore, the first
// mount of a volume made before replication).
func (c *Catalog) SetReplicaEpoch(ctx context.Context, epoch uint32) error {
	return c.update(ctx, "set replica epoch", func(t *Tx) error {
		_, err := t.exec("set replica epoch", "UPDATE volume SET replica_epoch = ? WHERE id = 1", int64(epoch))
		return err
	})
}
