package remote

import (
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"

	"github.com/rclone/rclone/fs"
	"github.com/rclone/rclone/fs/fspath"
)

// locatorOptions are options rclone marks Sensitive (so "rclone config
// redacted" hides them in bug reports) that say where or as whom to connect,
// not what proves it. They are needed to reopen a remote from the catalog, so
// they are allowed in remote strings and shown by Redact.
var locatorOptions = map[string]bool{
	"host": true, // sftp
	"user": true, // sftp
}

// secretWords flag an option name that no linked backend registers (rclone
// ignores it, but it must not be stored either) as a likely credential.
var secretWords = []string{"pass", "secret", "token", "credential", "private", "bearer", "auth"}

// CheckRemote refuses a remote string that carries a credential. What is a
// credential comes from rclone's own option registry: every option marked
// IsPassword or Sensitive (except the locators host and user), on the named
// backend, or on any linked backend for a remote named in rclone.conf, plus
// the same for rclone's global options given as "override."/"global.", plus
// URL user info in any value. Access key ids are refused too: they are not
// secret by themselves, but they name the account the secret unlocks and the
// string is stored in the catalog and shown in status. The error names the
// option and where to put it instead, never its value.
func CheckRemote(s string) error {
	p, err := fspath.Parse(s)
	if err != nil {
		return fmt.Errorf("remote: cannot parse the remote string: %w", err)
	}
	if p.Name == "" {
		return nil // a local path
	}
	keys := make([]string, 0, len(p.Config))
	for k := range p.Config {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, key := range keys {
		if isCredential(p.Name, key) {
			return credentialError(p.Name, key)
		}
		if hasURLUserInfo(p.Config[key]) {
			return fmt.Errorf("remote: %w: the value of %q holds a user name or password in a URL (not shown); "+
				"give the URL without them and put the credentials in rclone.conf or rclone's environment variables",
				ErrCredentials, key)
		}
		if q := urlSecretQuery(p.Config[key]); q != "" {
			return fmt.Errorf("remote: %w: the value of %q holds a credential in its URL's query (parameter %q, value not shown); "+
				"give the URL without it and put the credential in rclone.conf or rclone's environment variables",
				ErrCredentials, key, q)
		}
	}
	return nil
}

// Redact returns s with the value of every credential option (as CheckRemote
// defines it) and of every option the backend does not register (rclone
// ignores those, so nothing is lost, but nothing says they are not secret:
// every option of a backend this build does not link, a SAS URL, a typo)
// replaced by "***", and URL user info and credential query parameters
// masked. It is what every error and log message of this package shows, and
// what the catalog stores. The options are sorted, which rclone does not
// mind. A string that cannot be parsed is replaced whole, since its secrets
// cannot be located.
func Redact(s string) string {
	p, err := fspath.Parse(s)
	if err != nil {
		return "<unparsable remote string>"
	}
	if p.Name == "" {
		return s
	}
	var b strings.Builder
	b.WriteString(p.Name)
	keys := make([]string, 0, len(p.Config))
	for k := range p.Config {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, key := range keys {
		v := p.Config[key]
		switch {
		case hiddenOption(p.Name, key):
			v = "***"
		case hasURLUserInfo(v):
			v = redactURL(v)
		}
		if urlSecretQuery(v) != "" {
			v = redactQuery(v)
		}
		b.WriteByte(',')
		b.WriteString(key)
		b.WriteByte('=')
		b.WriteString(quoteValue(v))
	}
	b.WriteByte(':')
	b.WriteString(p.Path)
	return b.String()
}

// backendOf returns the registered backend named by an on-the-fly remote
// (":s3"), or nil for a remote named in rclone.conf, whose type CheckRemote
// does not look up (it must work without reading the config file).
func backendOf(name string) *fs.RegInfo {
	if !strings.HasPrefix(name, ":") {
		return nil
	}
	ri, err := fs.Find(name[1:])
	if err != nil {
		return nil
	}
	return ri
}

func normKey(key string) string {
	return strings.ReplaceAll(strings.ToLower(key), "-", "_")
}

func isCredential(remoteName, key string) bool {
	k := normKey(key)
	if g, ok := strings.CutPrefix(k, "override."); ok {
		return globalCredential(g)
	}
	if g, ok := strings.CutPrefix(k, "global."); ok {
		return globalCredential(g)
	}
	found := false
	check := func(opts fs.Options) bool {
		o := opts.Get(k)
		if o == nil {
			return false
		}
		found = true
		return o.IsPassword || (o.Sensitive && !locatorOptions[k])
	}
	if ri := backendOf(remoteName); ri != nil {
		if check(ri.Options) {
			return true
		}
	} else {
		for _, ri := range fs.Registry {
			if check(ri.Options) {
				return true
			}
		}
	}
	if found {
		return false
	}
	return looksSecret(k)
}

// knownOption reports whether the backend of remoteName registers key (any
// linked backend, for a remote named in rclone.conf; rclone's global options
// for "override." and "global." keys).
func knownOption(remoteName, key string) bool {
	k := normKey(key)
	g, ok := strings.CutPrefix(k, "override.")
	if !ok {
		g, ok = strings.CutPrefix(k, "global.")
	}
	if ok {
		for i := range fs.ConfigOptionsInfo {
			if fs.ConfigOptionsInfo[i].Name == g {
				return true
			}
		}
		return false
	}
	if strings.HasPrefix(remoteName, ":") {
		ri := backendOf(remoteName)
		return ri != nil && ri.Options.Get(k) != nil
	}
	for _, ri := range fs.Registry {
		if ri.Options.Get(k) != nil {
			return true
		}
	}
	return false
}

// hiddenOption reports whether Redact hides key's value: a credential, or an
// option the backend does not register.
func hiddenOption(remoteName, key string) bool {
	return isCredential(remoteName, key) || !knownOption(remoteName, key)
}

func globalCredential(k string) bool {
	for i := range fs.ConfigOptionsInfo {
		o := &fs.ConfigOptionsInfo[i]
		if o.Name == k {
			return o.IsPassword || o.Sensitive
		}
	}
	return looksSecret(k)
}

func looksSecret(k string) bool {
	if k == "key" || strings.HasSuffix(k, "_key") || strings.HasPrefix(k, "key_") && !strings.HasSuffix(k, "_file") {
		return true
	}
	for _, w := range secretWords {
		if strings.Contains(k, w) {
			return true
		}
	}
	return false
}

func credentialError(remoteName, key string) error {
	k := normKey(key)
	var env string
	switch {
	case strings.HasPrefix(k, "override.") || strings.HasPrefix(k, "global."):
		env = fs.OptionToEnv(k[strings.IndexByte(k, '.')+1:])
	case strings.HasPrefix(remoteName, ":"):
		env = fs.OptionToEnv(remoteName[1:] + "-" + k)
	default:
		env = fs.ConfigToEnv(remoteName, k)
	}
	why := ""
	if strings.HasSuffix(k, "access_key_id") {
		why = " (an access key id is refused too: it names the account its secret unlocks, and remote strings are stored in the catalog and shown in status)"
	}
	return fmt.Errorf("remote: %w: option %q (value not shown)%s; remove it and put it in rclone.conf (see \"rclone config\") "+
		"or in the environment as %s", ErrCredentials, key, why, env)
}

func hasURLUserInfo(v string) bool {
	if !strings.Contains(v, "://") {
		return false
	}
	u, err := url.Parse(v)
	if err != nil {
		// Unparsable: refuse if it even looks like user info.
		rest := v[strings.Index(v, "://")+3:]
		if i := strings.IndexAny(rest, "/?#"); i >= 0 {
			rest = rest[:i]
		}
		return strings.Contains(rest, "@")
	}
	return u.User != nil
}

// urlSecretQuery returns the name of the first query parameter of URL v that
// looks like a credential (a signature, token, key...), or "".
func urlSecretQuery(v string) string {
	if !strings.Contains(v, "://") || !strings.Contains(v, "?") {
		return ""
	}
	var q url.Values
	if u, err := url.Parse(v); err == nil {
		q = u.Query()
	} else { // unparsable: still look at what follows the '?'
		q, _ = url.ParseQuery(v[strings.IndexByte(v, '?')+1:])
	}
	names := slices.Sorted(maps.Keys(q))
	for _, n := range names {
		if secretQueryName(n) {
			return n
		}
	}
	return ""
}

func secretQueryName(n string) bool {
	k := normKey(n)
	return looksSecret(k) || k == "sig" || strings.Contains(k, "signature")
}

// redactQuery replaces the values of v's credential query parameters by ***.
func redactQuery(v string) string {
	u, err := url.Parse(v)
	if err != nil {
		return "***"
	}
	parts := strings.Split(u.RawQuery, "&")
	for i, kv := range parts {
		k, _, _ := strings.Cut(kv, "=")
		if n, err := url.QueryUnescape(k); err != nil || secretQueryName(n) {
			parts[i] = k + "=***"
		}
	}
	u.RawQuery = strings.Join(parts, "&")
	return u.String()
}

func redactURL(v string) string {
	u, err := url.Parse(v)
	if err != nil {
		return "***"
	}
	u.User = nil
	out := u.String()
	if i := strings.Index(out, "://"); i >= 0 {
		return out[:i+3] + "***@" + out[i+3:]
	}
	return "***"
}

// quoteValue quotes a connection-string value the way fspath.Parse expects.
func quoteValue(v string) string {
	if v != "" && !strings.ContainsAny(v, ":,'\"") {
		return v
	}
	return "'" + strings.ReplaceAll(v, "'", "''") + "'"
}

// hiddenValues returns what must not appear in a message about remote string
// s: the values Redact hides, whole and with URL user info, and the raw
// option string. An unparsable string yields s itself.
func hiddenValues(s string) []string {
	p, err := fspath.Parse(s)
	if err != nil {
		return []string{s}
	}
	if p.Name == "" {
		return nil
	}
	var out []string
	for key, v := range p.Config {
		if v != "" && (hiddenOption(p.Name, key) || hasURLUserInfo(v) || urlSecretQuery(v) != "") {
			out = append(out, v, quoteValue(v))
		}
	}
	if len(out) > 0 {
		out = append(out, s, p.ConfigString)
	}
	// Longest first, so a value is not half-replaced through a shorter one.
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return out
}

// redactedError is an error whose text had a remote string's secrets
// replaced by ***; Unwrap still gives the original, for errors.Is.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// redactError returns err with every value in hidden (from hiddenValues)
// replaced by *** in its text, and, if there is any, every string in raw (the
// forms of the remote string given to rclone) too; err itself if none occurs.
// Errors from rclone may quote back the string or a part of it.
func redactError(err error, hidden []string, raw ...string) error {
	if err == nil || len(hidden) == 0 {
		return err
	}
	all := append(slices.Clone(hidden), raw...)
	slices.SortFunc(all, func(a, b string) int { return len(b) - len(a) })
	msg := err.Error()
	red := msg
	for _, h := range all {
		if h != "" {
			red = strings.ReplaceAll(red, h, "***")
		}
	}
	if red == msg {
		return err
	}
	return &redactedError{msg: red, err: err}
}
