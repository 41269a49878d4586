package remote

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/rclone/rclone/fs"
	"github.com/rclone/rclone/fs/hash"
	"github.com/rclone/rclone/fs/object"
)

// guardedReader feeds a Put from the caller's buffer until the Put is
// abandoned; from then on it never touches the buffer again.
type guardedReader struct {
	mu   sync.Mutex
	data []byte
	off  int
	dead bool
}

var errAbandoned = errors.New("call abandoned")

func (g *guardedReader) Read(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.dead {
		return 0, errAbandoned
	}
	if g.off >= len(g.data) {
		return 0, io.EOF
	}
	n := copy(p, g.data[g.off:])
	g.off += n
	return n, nil
}

func (g *guardedReader) kill() {
	g.mu.Lock()
	g.dead, g.data = true, nil
	g.mu.Unlock()
}

func (s *rcloneStore) Put(ctx context.Context, name string, data []byte) error {
	if err := ValidName(name); err != nil {
		return fmt.Errorf("remote: put %s: %w", name, err)
	}
	var hashes map[hash.Type]string
	if s.md5 {
		sum := md5.Sum(data)
		hashes = map[hash.Type]string{hash.MD5: hex.EncodeToString(sum[:])}
	}
	in := &guardedReader{data: data}
	err := s.run(ctx, func(ctx context.Context) error {
		info := object.NewStaticObjectInfo(name, time.Now(), int64(len(data)), true, hashes, nil)
		if s.fds != nil {
			// Whatever happened, the name may now hold other bytes (even in an abandoned
			// call finishing late).
			defer s.fds.invalidate(name)
		}
		if _, err := s.f.Put(ctx, in, info); err != nil {
			return ctxErr(ctx, err)
		}
		if s.localDir != "" && !s.noSync {
			return s.syncLocal(name)
		}
		return nil
	}, in.kill)
	if err != nil {
		return fmt.Errorf("remote: put %s: %w", name, err)
	}
	return nil
}

func (s *rcloneStore) Delete(ctx context.Context, name string) error {
	if err := ValidName(name); err != nil {
		return fmt.Errorf("remote: delete %s: %w", name, err)
	}
	err := s.run(ctx, func(ctx context.Context) error {
		if s.fds != nil {
			defer s.fds.invalidate(name)
		}
		// The lookup stays (a HEAD on S3): deletes run in the background, and an S3
		// server over a file system (rclone serve s3) fails a DELETE of a name that is
		// a folder, which must read as "no such object".
		o, err := s.newObject(ctx, name)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := o.Remove(ctx); err != nil {
			// local and sftp: gone since the lookup (a concurrent delete).
			if errors.Is(err, os.ErrNotExist) || errors.Is(err, fs.ErrorObjectNotFound) {
				return nil
			}
			return ctxErr(ctx, err)
		}
		return nil
	}, nil)
	if err != nil {
		return fmt.Errorf("remote: delete %s: %w", name, err)
	}
	return nil
}
