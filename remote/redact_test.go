package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestOpenErrorsHideSecrets: whatever is wrong with a remote string (a backend this build
// does not link, an option the backend does not know, a credential, a malformed string),
// no error of Open, no String() of what it opened and no log line shows a secret from it;
// an unknown backend is still named.
func TestOpenErrorsHideSecrets(t *testing.T) {
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	tmp := t.TempDir()
	cases := []struct {
		remote  string
		backend string // an unknown backend the error must name
	}{
		// Backends this build does not link, with secrets in their connection-string options.
		{":azureblob,sas_url='https://x.blob.core.windows.net/?sig=" + secret + "':c", "azureblob"},
		{":azureblob,account=acct,sas_url='https://acct.blob.core.windows.net/c?sv=2024&sig=" + secret + "&se=2030':c", "azureblob"},
		{":azureblob,connection_string='DefaultEndpointsProtocol=https;AccountName=a;AccountKey=" + secret + "':c", "azureblob"},
		{":azureblob,key=" + secret + ":c", "azureblob"},
		{":azureblob,password=" + secret + ":c", "azureblob"},
		{":b2,account=123,token=" + secret + ":bkt", "b2"},
		{":gcs,service_account_json='{\"private_key\":\"" + secret + "\"}':bkt", "gcs"},
		{":drive,client_id=" + secret + ",root_folder_id=x:", "drive"},
		{":alias,remote=" + secret + ":", "alias"},
		{":webdav,url='https://dav.example.com/?access=" + secret + "',user=u:", "webdav"},
		// Linked backends with an option they do not register carrying a secret.
		{":s3,sas_url='https://x.example.com/?sig=" + secret + "':bkt", ""},
		{":s3,provider=AWS,foo=" + secret + ":bkt", ""},
		{":s3,override.foo_sig=" + secret + ":bkt", ""},
		{":sftp,host=127.0.0.1,port=1,shell_type=none,foo=" + secret + ":dir", ""},
		{":crypt,remote=" + filepath.Join(tmp, "c") + ",foo=" + secret + ":", ""},
		{":local,foo=" + secret + ":" + filepath.Join(tmp, "l"), ""},
		{"nosuchremote,foo=" + secret + ":bkt", ""},
		// A credential in a URL's query or user info of a known option.
		{":s3,endpoint='https://s3.example.com/?X-Amz-Signature=" + secret + "':bkt", ""},
		{":s3,endpoint='https://u:" + secret + "@s3.example.com':bkt", ""},
		// Malformed strings.
		{":s3,foo='" + secret + ":bkt", ""},
		{":azureblob,sas_url='https://x/?sig=" + secret, ""},
		{":s3,=" + secret + ":bkt", ""},
		{":s3,foo=" + secret, ""},
	}
	for _, c := range cases {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		s, err := Open(ctx, c.remote, Options{Logger: logger, Retries: -1})
		cancel()
		if err == nil {
			t.Logf("%s: opened as %s", c.remote, s)
			if strings.Contains(s.String(), secret) {
				t.Errorf("%s: String() shows the secret: %s", c.remote, s)
			}
			_ = s.Close(context.Background())
			continue
		}
		msg := err.Error()
		t.Logf("%s: %s", c.remote, msg)
		if strings.Contains(msg, secret) {
			t.Errorf("%s: the error shows the secret: %s", c.remote, msg)
		}
		if c.backend != "" && !strings.Contains(msg, `didn't find backend called "`+c.backend+`"`) {
			t.Errorf("%s: the error does not name backend %q: %s", c.remote, c.backend, msg)
		}
		if strings.ContainsRune(msg, '\n') {
			t.Errorf("%s: the error spans lines: %q", c.remote, msg)
		}
	}
	if strings.Contains(logs.String(), secret) {
		t.Errorf("the logs show the secret:\n%s", logs.String())
	}
}

// TestRedactHidesUnknownOptions: Redact, which every message and the catalog use, hides
// every option the backend does not register and credential query parameters, and keeps
// the rest as it was.
func TestRedactHidesUnknownOptions(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{":azureblob,account=acct,sas_url='https://x/?sig=" + secret + "':c", ":azureblob,account=***,sas_url=***:c"},
		{":s3,foo=" + secret + ",provider=AWS:bkt", ":s3,foo=***,provider=AWS:bkt"},
		{":s3,override.foo=" + secret + ",override.low_level_retries=2:bkt", ":s3,override.foo=***,override.low_level_retries=2:bkt"},
		{"mys3,chunk_size=16Mi,foo=" + secret + ":bkt", "mys3,chunk_size=16Mi,foo=***:bkt"},
		{":s3,endpoint='https://h/?sig=" + secret + "&x=1':bkt", ":s3,endpoint='https://h/?sig=***&x=1':bkt"},
		{":s3,endpoint='https://h%zz/?x=1&sig=" + secret + "':bkt", ":s3,endpoint=***:bkt"},
	} {
		if got := Redact(c.in); got != c.want {
			t.Errorf("Redact(%q) = %q; want %q", c.in, got, c.want)
		}
	}
}

// TestRedactError: an error from rclone that quotes the remote string back (whole or a
// hidden value) is shown without it, and still unwraps to the original.
func TestRedactError(t *testing.T) {
	r := ":s3,foo='a," + secret + "',provider=AWS:bkt"
	base := errors.New("base")
	for _, quoted := range []string{r, "'a," + secret + "'", "a," + secret, ":s3,foo='a," + secret + "',provider=AWS"} {
		err := redactError(fmt.Errorf("rclone says %q: %w", quoted, base), hiddenValues(r), r)
		if strings.Contains(err.Error(), secret) {
			t.Errorf("%q: %v", quoted, err)
		}
		if !errors.Is(err, base) {
			t.Errorf("%q: the redacted error does not unwrap", quoted)
		}
	}
	// Nothing hidden: the error is left alone.
	plain := errors.New("x :s3,provider=AWS:bkt")
	if err := redactError(plain, hiddenValues(":s3,provider=AWS:bkt"), ":s3,provider=AWS:bkt"); err != plain {
		t.Errorf("an error with nothing to hide was changed: %v", err)
	}
}
