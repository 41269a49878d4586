package fusefront

import (
	"context"

	"coffer/fs/content"
	"coffer/fs/volume"
)

// New builds the file system over an open volume and its data path. data may
// be shared with other users of the volume (status, lock); FS never closes it.
func New(v *volume.Volume, data *content.Store, opt Options) *FS {
	return newFS(v, contentStore{data}, opt)
}

// contentStore adapts *content.Store to dataStore.
type contentStore struct{ *content.Store }

func (c contentStore) Open(ctx context.Context, ino uint64) (dataFile, error) {
	f, err := c.Store.Open(ctx, ino)
	if err != nil {
		return nil, err
	}
	return f, nil
}
