package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/pelletier/go-toml/v2"
)

// Setting is one serve setting as `wspubsub config` shows it.
type Setting struct {
	Name   string
	Value  string // as the flag prints it, secrets hidden
	Source string // "flag --listen", "env WSPUBSUB_LISTEN", "wspubsub.toml:7" or "default"
	Usage  string // the flag's help text
	Hidden bool   // Value had a secret masked: it cannot be written back as it is
	kind   valueKind
}

// Default reports whether the setting has its default value.
func (s Setting) Default() bool { return strings.HasPrefix(s.Source, "default") }

// Effective is the serve configuration `wspubsub config` prints.
type Effective struct {
	Serve    Serve
	Settings []Setting // every serve setting, by name (as --help lists them)
	Format   string    // "text" or "toml"
}

// ParseConfig parses `wspubsub config [--format text|toml] [serve flags]`:
// the serve flags, environment and --config file exactly as serve reads
// them. An invalid configuration is a *UsageError with every problem.
func ParseConfig(args []string, getenv func(string) string, out io.Writer) (Effective, error) {
	var e Effective
	f := newFlagSet("wspubsub config", out)
	f.cmdOnly = map[string]bool{"format": true}
	f.StringVar(&e.Format, "format", "text", `output: "text" (setting, value, source) or "toml" (a --config file of these settings)`)
	f.Usage = func() {
		fmt.Fprint(f.Output(), "Usage: wspubsub config [--format text|toml] [serve flags]\n\n"+
			"Prints the configuration `wspubsub serve` would run with, given the same flags, WSPUBSUB_*\n"+
			"variables and --config file: every setting, its value and where it came from (flag, env,\n"+
			"file:line or default), secrets hidden. Precedence: flags > environment > file > defaults.\n"+
			"Exit status 2 and the problems when the configuration is invalid.\n\n")
		f.PrintDefaults()
	}
	c, f, err := parseServe(f, args, getenv)
	if err != nil {
		return e, err
	}
	if e.Format != "text" && e.Format != "toml" {
		return e, &UsageError{Err: fmt.Errorf(`--format must be "text" or "toml": %q`, e.Format)}
	}
	e.Serve = c
	e.Settings = f.settings()
	for i, s := range e.Settings {
		if s.Name == "listen" && s.Source == "default" && c.Listen != f.Lookup("listen").DefValue {
			e.Settings[i].Source = "default (demo mode: no key store)"
		}
		if s.Source == "default" {
			e.Settings[i].Source += computedDefault(s.Name, c)
		}
	}
	return e, nil
}

// computedDefault says what the gateway makes of a default that is a rule
// rather than a value (0: the open-file limit minus 256, ...), as it will
// on this machine, so that `wspubsub config` shows what will run.
func computedDefault(name string, c Serve) string {
	switch {
	case name == "max-connections" && c.MaxConnections == 0:
		return fmt.Sprintf(": the open-file limit minus 256, %d here", OpenFileLimit()-256)
	case name == "writers" && c.Writers == 0:
		return fmt.Sprintf(": half the CPUs, at least one, %d here (and %d helpers for small batches)", max(1, runtime.GOMAXPROCS(0)/2), max(0, runtime.GOMAXPROCS(0)-max(1, runtime.GOMAXPROCS(0)/2)))
	case name == "auth-timeout" && c.AuthTimeout == 0:
		return fmt.Sprintf(": --key-check-timeout, %v", c.KeyCheckTimeout)
	case name == "allowed-hosts" && len(c.AllowedHosts) == 0 && c.Demo():
		return " (demo mode: localhost, *.localhost, 127.0.0.0/8, ::1)"
	case name == "allowed-hosts" && len(c.AllowedHosts) == 0:
		return ": any host"
	}
	return ""
}

// OpenFileLimit is this process's open-file limit (RLIMIT_NOFILE), or
// 1<<20 when it cannot be read or is unbounded.
func OpenFileLimit() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur > 1<<30 {
		return 1 << 20
	}
	return int(rl.Cur)
}

// settings lists every flag that is a setting, with its source.
func (f *flagSet) settings() []Setting {
	var out []Setting
	f.VisitAll(func(fl *flag.Flag) {
		if f.cmdOnly[fl.Name] {
			return
		}
		src := f.source[fl.Name]
		if src == "" {
			src = "default"
		}
		v, hidden := Conceal(fl.Name, fl.Value.String())
		out = append(out, Setting{Name: fl.Name, Value: v, Source: src, Usage: fl.Usage, Hidden: hidden, kind: kindOf(fl.Value)})
	})
	return out
}

// secret reports whether a setting's whole value is a secret. This is the
// one place that says so: add a name here when adding such a flag. Names
// with token, secret or password in them are secret anyway.
func secret(name string) bool {
	switch name {
	case "publish-token", "jwt-key", "jwt-secret", "auth-token":
		return true
	}
	for _, w := range []string{"token", "secret", "password"} {
		if strings.Contains(name, w) {
			return true
		}
	}
	return false
}

// Conceal returns value fit to print for setting name: a secret setting's
// value hidden whole, and in any other value the passwords of URLs
// (redis://:pw@host, mongodb://user:pw@host, comma-separated lists of them)
// and their query parameters that look like credentials. hidden reports
// whether anything was masked.
func Conceal(name, value string) (shown string, hidden bool) {
	if value == "" {
		return "", false
	}
	if secret(name) {
		if strings.HasPrefix(value, "file:") {
			return value, false // a path: the secret is in the file (--jwt-key file:…)
		}
		return "<hidden>", true
	}
	parts := strings.Split(value, ",")
	for i, p := range parts {
		u, err := url.Parse(strings.TrimSpace(p))
		if err != nil || u.Scheme == "" || u.User == nil {
			// A password url.Parse cannot read ('/', '#' or a bare '%' in
			// it) fails the parse or lands in the path or fragment.
			if m, ok := maskUserinfo(p); ok {
				parts[i], hidden = m, true
				u, err = url.Parse(strings.TrimSpace(m)) // for its query, below
			}
			if err != nil || u.Scheme == "" {
				continue
			}
		}
		changed := false
		if _, ok := u.User.Password(); ok {
			u.User, changed = url.UserPassword(u.User.Username(), "xxxxx"), true
		}
		q := u.Query()
		for k := range q {
			if secret(strings.ToLower(k)) || strings.EqualFold(k, "key") || strings.Contains(strings.ToLower(k), "credential") {
				q.Set(k, "xxxxx")
				changed = true
			}
		}
		if changed {
			u.RawQuery = q.Encode()
			parts[i], hidden = u.String(), true
		}
	}
	return strings.Join(parts, ","), hidden
}

// maskUserinfo masks what stands between "scheme://" and the last '@' of a
// URL that url.Parse does not read as user info, the host kept:
// "redis://:pa/ss@h:6379" is "redis://xxxxx@h:6379".
func maskUserinfo(p string) (string, bool) {
	i := strings.Index(p, "://")
	if i < 0 {
		return p, false
	}
	rest := p[i+3:]
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return p, false
	}
	return p[:i+3] + "xxxxx" + rest[at:], true
}

// WriteText writes one line per setting: name, value, (source). The name
// column has a fixed width, so that a line's layout depends on that line
// alone (the README quotes lines of it).
func (e Effective) WriteText(w io.Writer) error {
	const nameWidth = 24
	fmt.Fprintln(w, "# wspubsub serve: effective configuration, secrets hidden")
	fmt.Fprintln(w, "# precedence: flags > WSPUBSUB_* environment > --config file > defaults")
	for _, s := range e.Settings {
		v := s.Value
		if v == "" {
			v = `""`
		}
		if _, err := fmt.Fprintf(w, "%-*s %s  (%s)\n", nameWidth-1, s.Name, v, s.Source); err != nil {
			return err
		}
	}
	return nil
}

// WriteTOML writes a --config file of the settings: the values not at
// their default as settings, the defaults and hidden secrets as comments,
// each under its help text.
func (e Effective) WriteTOML(w io.Writer) error {
	fmt.Fprint(w, "# wspubsub serve configuration (wspubsub config --format toml).\n"+
		"# Keys are the serve flags' names; flags and WSPUBSUB_* variables win over this file.\n"+
		"# Commented settings are defaults, or secrets hidden here: uncomment to set them.\n")
	var errs []error
	for _, s := range e.Settings {
		if s.Name == "config" {
			continue
		}
		line, err := s.tomlLine()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Fprintln(w)
		for _, l := range wrap(s.Usage, 98) {
			fmt.Fprintln(w, "#", l)
		}
		switch {
		case s.Hidden:
			fmt.Fprintf(w, "# %s  # hidden (from %s): write it here or keep it in %s\n", line, s.Source, EnvName(s.Name))
		case s.Default():
			fmt.Fprintf(w, "# %s\n", line)
		default:
			fmt.Fprintf(w, "%s  # from %s\n", line, s.Source)
		}
	}
	return errors.Join(errs...)
}

// tomlLine is `name = value` with value in the TOML type the file takes
// for the setting's kind.
func (s Setting) tomlLine() (string, error) {
	var v any = s.Value
	var err error
	switch s.kind {
	case kindInt, kindSize:
		v, err = strconv.ParseInt(s.Value, 10, 64)
	case kindFloat:
		v, err = strconv.ParseFloat(s.Value, 64)
	case kindBool:
		v, err = strconv.ParseBool(s.Value)
	case kindList:
		l := []string{}
		if s.Value != "" {
			l = strings.Split(s.Value, ",")
		}
		v = l
	}
	if err != nil {
		return "", fmt.Errorf("writing %s = %q as TOML: %w", s.Name, s.Value, err)
	}
	b, err := toml.Marshal(map[string]any{s.Name: v})
	if err != nil {
		return "", fmt.Errorf("writing %s as TOML: %w", s.Name, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// wrap splits text into lines of at most width bytes at spaces.
func wrap(text string, width int) []string {
	var lines []string
	line := ""
	for w := range strings.FieldsSeq(text) {
		if line != "" && len(line)+1+len(w) > width {
			lines = append(lines, line)
			line = ""
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	if line != "" {
		lines = append(lines, line)
	}
	return lines
}
