package fusefront

import (
	"context"

	"coffer/fs/content"
	"coffer/fs/volume"
)

// New builds the file system over an open volume and its data path. data may
// be shared with other users of the volume (status, lock); FS never closes it.
func New(v *volume.Volume, data *content.DataPath, opt Options) *FS {
	return newFS(v, contentDataPath{data}, opt)
}

// contentDataPath adapts *content.DataPath to dataPath.
type contentDataPath struct{ *content.DataPath }

func (c contentDataPath) Open(ctx context.Context, ino uint64) (dataFile, error) {
	f, err := c.DataPath.Open(ctx, ino)
	if err != nil {
		return nil, err
	}
	return f, nil
}
