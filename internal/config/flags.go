package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// EnvPrefix prefixes every flag's environment twin: --redis-url is
// WSPUBSUB_REDIS_URL.
const EnvPrefix = "WSPUBSUB_"

// EnvName returns the environment variable that sets flag name.
func EnvName(name string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// flagSet is a flag.FlagSet whose every flag has an environment twin; a
// flag given on the command line wins over its variable.
type flagSet struct {
	*flag.FlagSet
	given  map[string]bool   // set on the command line, through the environment or in the --config file
	source map[string]string // where each given flag's value came from (see Setting.Source)
	// cmdOnly flags steer the command itself (config's --format): no
	// environment twin, not a setting of the file, not listed.
	cmdOnly map[string]bool
}

func newFlagSet(name string, out io.Writer) *flagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	return &flagSet{FlagSet: fs}
}

func usage(name, text string) string { return text + " [$" + EnvName(name) + "]" }

func (f *flagSet) str(p *string, name, def, text string) {
	f.StringVar(p, name, def, usage(name, text))
}
func (f *flagSet) dur(p *time.Duration, name string, def time.Duration, text string) {
	f.DurationVar(p, name, def, usage(name, text))
}
func (f *flagSet) integer(p *int, name string, def int, text string) {
	f.IntVar(p, name, def, usage(name, text))
}
func (f *flagSet) float(p *float64, name string, def float64, text string) {
	f.Float64Var(p, name, def, usage(name, text))
}
func (f *flagSet) boolean(p *bool, name string, def bool, text string) {
	f.BoolVar(p, name, def, usage(name, text))
}
func (f *flagSet) size(p *int, name string, def int, text string) {
	*p = def
	f.Var((*sizeValue)(p), name, usage(name, text))
}
func (f *flagSet) list(p *[]string, name, text string) {
	f.Var((*listValue)(p), name, usage(name, text))
}

// parse parses args, then fills flags not given from the environment, then
// (when the set has a --config flag and it is set) those still not given from
// the TOML file: flags > environment > file > defaults. Every mistake is a
// *UsageError that says just what is wrong, with a suggestion where one is
// close; the usage is printed only for --help.
func (f *flagSet) parse(args []string, getenv func(string) string) error {
	if err := f.parseArgs(args); err != nil {
		return err
	}
	given, source := map[string]bool{}, map[string]string{}
	f.Visit(func(fl *flag.Flag) { given[fl.Name], source[fl.Name] = true, "flag --"+fl.Name })
	f.given, f.source = given, source
	var errs []error
	f.VisitAll(func(fl *flag.Flag) {
		if given[fl.Name] || f.cmdOnly[fl.Name] {
			return
		}
		if v, ok := lookup(getenv, EnvName(fl.Name)); ok {
			given[fl.Name], source[fl.Name] = true, "env "+EnvName(fl.Name)
			if err := fl.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %s", EnvName(fl.Name), v, valueProblem(fl, err)))
			}
		}
	})
	if fl := f.Lookup("config"); len(errs) == 0 && fl != nil && fl.Value.String() != "" {
		errs = append(errs, f.loadFile(fl.Value.String()))
	}
	if err := errors.Join(errs...); err != nil {
		return &UsageError{Err: err}
	}
	return nil
}

// parseArgs runs the flag package quietly: on a mistake it would print the
// error and the whole usage, which buries the one line that matters.
func (f *flagSet) parseArgs(args []string) error {
	out, usage := f.Output(), f.Usage
	f.SetOutput(io.Discard)
	f.Usage = func() {}
	err := f.Parse(args)
	f.SetOutput(out)
	f.Usage = usage
	switch {
	case err == nil:
		return nil
	case errors.Is(err, flag.ErrHelp):
		usage()
		return err
	}
	return &UsageError{Err: f.flagProblem(err)}
}

// isSet reports whether flag name was given, on the command line or
// through its environment twin (after parse).
func (f *flagSet) isSet(name string) bool { return f.given[name] }

func lookup(getenv func(string) string, name string) (string, bool) {
	v := getenv(name)
	return v, v != ""
}

// sizeValue is a byte count that accepts suffixes: 512, 64KiB, 1MiB, 2MB.
type sizeValue int

func (s *sizeValue) String() string { return strconv.Itoa(int(*s)) }

func (s *sizeValue) Set(v string) error {
	n, err := ParseSize(v)
	if err != nil {
		return err
	}
	*s = sizeValue(n)
	return nil
}

// ParseSize parses a byte count with an optional KB/KiB/MB/MiB/GB/GiB suffix.
func ParseSize(v string) (int, error) {
	v = strings.TrimSpace(v)
	mult := 1
	for _, u := range []struct {
		suffix string
		mult   int
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000}, {"B", 1}} {
		if strings.HasSuffix(v, u.suffix) {
			v, mult = strings.TrimSpace(strings.TrimSuffix(v, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("not a byte size: %q", v)
	}
	return n * mult, nil
}

// listValue is a comma-separated list; repeating the flag appends.
type listValue []string

func (l *listValue) String() string { return strings.Join(*l, ",") }

func (l *listValue) Set(v string) error {
	for p := range strings.SplitSeq(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

// defaultedList is a listValue with a default that the first Set replaces.
type defaultedList struct {
	p   *[]string
	set bool
}

func (l *defaultedList) String() string {
	if l.p == nil {
		return ""
	}
	return strings.Join(*l.p, ",")
}

func (l *defaultedList) Set(v string) error {
	if !l.set {
		*l.p, l.set = nil, true
	}
	return (*listValue)(l.p).Set(v)
}

func (f *flagSet) listDefault(p *[]string, name string, def []string, text string) {
	*p = def
	f.Var(&defaultedList{p: p}, name, usage(name, text))
}
