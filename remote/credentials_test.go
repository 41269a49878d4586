package remote

import (
	"errors"
	"strings"
	"testing"

	"github.com/rclone/rclone/fs/fspath"
)

const secret = "Sup3rS3cretValue"

func TestCheckRemoteRefusesCredentials(t *testing.T) {
	cases := []struct {
		remote string
		key    string // named in the error
		env    string // the environment variable suggested
	}{
		{":s3,provider=AWS,secret_access_key=" + secret + ":bkt", "secret_access_key", "RCLONE_S3_SECRET_ACCESS_KEY"},
		{":s3,access_key_id=" + secret + ":bkt", "access_key_id", "RCLONE_S3_ACCESS_KEY_ID"},
		{":s3,session_token='" + secret + "':bkt/p", "session_token", "RCLONE_S3_SESSION_TOKEN"},
		{":s3,sse_customer_key=" + secret + ":bkt", "sse_customer_key", "RCLONE_S3_SSE_CUSTOMER_KEY"},
		{":sftp,host=h,pass=" + secret + ":dir", "pass", "RCLONE_SFTP_PASS"},
		{":sftp,host=h,key_pem='" + secret + "':dir", "key_pem", "RCLONE_SFTP_KEY_PEM"},
		{":sftp,host=h,key_file_pass=" + secret + ":dir", "key_file_pass", "RCLONE_SFTP_KEY_FILE_PASS"},
		// A remote named in rclone.conf, with an override: its type is
		// not looked up, every linked backend's options count.
		{"mys3,secret_access_key=" + secret + ":bkt", "secret_access_key", "RCLONE_CONFIG_MYS3_SECRET_ACCESS_KEY"},
		{"box,pass=" + secret + ":dir", "pass", "RCLONE_CONFIG_BOX_PASS"},
		{":s3,Secret_Access_Key=" + secret + ":bkt", "Secret_Access_Key", "RCLONE_S3_SECRET_ACCESS_KEY"},
		// rclone's global options, given per remote.
		{":s3,override.client_pass=" + secret + ":bkt", "override.client_pass", "RCLONE_CLIENT_PASS"},
		{":s3,global.client_pass=" + secret + ":bkt", "global.client_pass", "RCLONE_CLIENT_PASS"},
		// Options no linked backend has, that look like secrets.
		{":s3,api_token=" + secret + ":bkt", "api_token", "RCLONE_S3_API_TOKEN"},
		{":s3,client_secret=" + secret + ":bkt", "client_secret", "RCLONE_S3_CLIENT_SECRET"},
		{":s3,service_account_credentials=" + secret + ":bkt", "service_account_credentials", ""},
		// crypt is registered as a side effect of rclone's operations.
		{":crypt,remote=/x,password=" + secret + ":", "password", "RCLONE_CRYPT_PASSWORD"},
	}
	for _, c := range cases {
		err := CheckRemote(c.remote)
		if !errors.Is(err, ErrCredentials) {
			t.Errorf("CheckRemote(%q) = %v; want ErrCredentials", c.remote, err)
			continue
		}
		msg := err.Error()
		if strings.Contains(msg, secret) {
			t.Errorf("the error echoes the secret: %s", msg)
		}
		if !strings.Contains(msg, `"`+c.key+`"`) {
			t.Errorf("the error does not name option %q: %s", c.key, msg)
		}
		if c.env != "" && !strings.Contains(msg, c.env) {
			t.Errorf("the error does not point to %s: %s", c.env, msg)
		}
		if !strings.Contains(msg, "rclone.conf") {
			t.Errorf("the error does not point to rclone.conf: %s", msg)
		}
		if strings.ContainsRune(msg, '\n') {
			t.Errorf("the error spans lines: %q", msg)
		}
		if r := Redact(c.remote); strings.Contains(r, secret) {
			t.Errorf("Redact(%q) = %q still holds the secret", c.remote, r)
		}
	}
	// Why access key ids are refused is said.
	if err := CheckRemote(":s3,access_key_id=AKIA:bkt"); err == nil || !strings.Contains(err.Error(), "names the account") {
		t.Errorf("access_key_id refusal does not say why: %v", err)
	}
}

func TestCheckRemoteURLUserInfo(t *testing.T) {
	for _, r := range []string{
		":s3,provider=Minio,endpoint='http://admin:" + secret + "@10.0.0.5:9000':bkt",
		":s3,endpoint='https://" + secret + "@s3.example.com':bkt",
		":s3,override.http_proxy='http://u:" + secret + "@proxy:3128':bkt",
	} {
		err := CheckRemote(r)
		if !errors.Is(err, ErrCredentials) {
			t.Errorf("CheckRemote(%q) = %v; want ErrCredentials", r, err)
			continue
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("the error echoes the secret: %v", err)
		}
		if red := Redact(r); strings.Contains(red, secret) || !strings.Contains(red, "***@") {
			t.Errorf("Redact(%q) = %q; want the user info replaced by ***", r, red)
		}
	}
}

func TestCheckRemoteAccepts(t *testing.T) {
	for _, r := range []string{
		"/srv/coffer",
		"/tmp/has:colon,and=equals",
		"s3:bucket/prefix",
		"mys3:bkt",
		"mys3,chunk_size=16Mi,upload_concurrency=8:bkt",
		":s3,provider=Minio,endpoint='http://10.0.0.5:9000':bkt/p",
		":s3,provider=AWS,env_auth=true,region=eu-west-1:bkt",
		":s3,provider=Rclone,endpoint='http://127.0.0.1:1234',upload_cutoff=5Mi,override.low_level_retries=2:b",
		":sftp,host=10.1.1.1,port=2222,user=backup,key_file='/etc/coffer/id_ed25519',known_hosts_file='/etc/coffer/known_hosts',shell_type=none:/srv/objects",
		":local:/srv/objects",
	} {
		if err := CheckRemote(r); err != nil {
			t.Errorf("CheckRemote(%q) = %v; want nil", r, err)
		}
		// Nothing to hide: Redact keeps a string rclone parses to the same
		// remote, so it can be stored and reopened.
		red := Redact(r)
		p1, err1 := fspath.Parse(r)
		p2, err2 := fspath.Parse(red)
		if err1 != nil || err2 != nil || p1.Name != p2.Name || p1.Path != p2.Path || len(p1.Config) != len(p2.Config) {
			t.Errorf("Redact(%q) = %q parses differently", r, red)
			continue
		}
		for k, v := range p1.Config {
			if p2.Config[k] != v {
				t.Errorf("Redact(%q) changed %s: %q -> %q", r, k, v, p2.Config[k])
			}
		}
	}
}

func TestCheckRemoteUnparsable(t *testing.T) {
	for _, r := range []string{"", ":s3,=x:bkt", ":s3,endpoint='unterminated:bkt"} {
		if err := CheckRemote(r); err == nil {
			t.Errorf("CheckRemote(%q) = nil; want a parse error", r)
		}
	}
	// Secrets in a string that cannot be parsed cannot be located: hide all.
	bad := ":s3,secret_access_key='" + secret
	if red := Redact(bad); strings.Contains(red, secret) {
		t.Errorf("Redact(%q) = %q", bad, red)
	}
}

func TestRedactKeepsLocatorsHidesSecrets(t *testing.T) {
	r := ":sftp,host=files.example.com,user=backup,pass=" + secret + ",port=22:dir/sub"
	got := Redact(r)
	want := ":sftp,host=files.example.com,pass=***,port=22,user=backup:dir/sub"
	if got != want {
		t.Errorf("Redact = %q; want %q", got, want)
	}
}

func TestValidName(t *testing.T) {
	good := []string{"a", "coffer-volume", "c/ab/abcdefghijklmnopqrstuvwxyz", "b/2026-01-01_x.bak", ".hidden", "a/.b", strings.Repeat("x", MaxNameLen)}
	for _, n := range good {
		if err := ValidName(n); err != nil {
			t.Errorf("ValidName(%q) = %v", n, err)
		}
	}
	bad := []string{"", "A", "a b", "a/", "/a", "a//b", ".", "..", "a/..", "../a", "a/./b", "a..b", "é", "a\x00", "a:b", strings.Repeat("x", MaxNameLen+1)}
	for _, n := range bad {
		if err := ValidName(n); !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidName(%q) = %v; want ErrInvalidName", n, err)
		}
	}
	for _, p := range []string{"", "c/", "c/a", "t"} {
		if err := validPrefix(p); err != nil {
			t.Errorf("validPrefix(%q) = %v", p, err)
		}
	}
	for _, p := range []string{"/", "C/", "a//", "../"} {
		if err := validPrefix(p); err == nil {
			t.Errorf("validPrefix(%q) = nil; want an error", p)
		}
	}
}
