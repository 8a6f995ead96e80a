package config

import (
	"io"
	"time"
)

// FlagSet is the flag set of this package for commands that keep their
// settings elsewhere (bench): every flag gets its WSPUBSUB_* twin, and
// Parse reports mistakes as *UsageError, like the commands parsed here.
type FlagSet struct{ f *flagSet }

// NewFlagSet returns an empty flag set for the command name
// ("wspubsub bench"); out receives --help.
func NewFlagSet(name string, out io.Writer) *FlagSet { return &FlagSet{f: newFlagSet(name, out)} }

// String declares a string flag.
func (s *FlagSet) String(p *string, name, def, usage string) { s.f.str(p, name, def, usage) }

// Duration declares a duration flag.
func (s *FlagSet) Duration(p *time.Duration, name string, def time.Duration, usage string) {
	s.f.dur(p, name, def, usage)
}

// Int declares an integer flag.
func (s *FlagSet) Int(p *int, name string, def int, usage string) { s.f.integer(p, name, def, usage) }

// Float declares a floating-point flag.
func (s *FlagSet) Float(p *float64, name string, def float64, usage string) {
	s.f.float(p, name, def, usage)
}

// Bool declares a boolean flag.
func (s *FlagSet) Bool(p *bool, name string, def bool, usage string) {
	s.f.boolean(p, name, def, usage)
}

// Parse parses args, then the environment twins of the flags not given.
// Errors are *UsageError, except flag.ErrHelp after --help.
func (s *FlagSet) Parse(args []string, getenv func(string) string) error {
	return s.f.parse(args, getenv)
}

// IsSet reports whether flag name was given, on the command line or
// through its environment twin (after Parse).
func (s *FlagSet) IsSet(name string) bool { return s.f.isSet(name) }

// Args returns the arguments after the flags.
func (s *FlagSet) Args() []string { return s.f.Args() }
