package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Keys holds the settings of `wspubsub keys add|rm|ls`, which edit the key
// store the gateway reads: MongoDB or a key file, exactly one.
type Keys struct {
	Action string   // "add", "rm" or "ls"
	Keys   []string // add (none: generate one), rm

	MongoURI        string
	MongoDB         string
	MongoCollection string
	MongoKeyField   string
	KeysFile        string
	Timeout         time.Duration
}

// maxKeyBytes bounds a key given to `wspubsub keys`: a key travels in a URL.
const maxKeyBytes = 1024

// ParseKeys parses `wspubsub keys ACTION [flags] [KEY...]`. The store flags
// have the names, defaults and environment twins of serve's, so the same
// WSPUBSUB_* variables point both at one store.
func ParseKeys(args []string, getenv func(string) string, out io.Writer) (Keys, error) {
	var c Keys
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		c.Action, args = args[0], args[1:]
	}
	f := newFlagSet("wspubsub keys", out)
	f.str(&c.MongoURI, "mongo-uri", "", "MongoDB holding client keys, e.g. mongodb://127.0.0.1:27017 (give this or --keys-file)")
	f.str(&c.MongoDB, "mongo-db", "myDB", "MongoDB database")
	f.str(&c.MongoCollection, "mongo-collection", "myCollection", "MongoDB collection")
	f.str(&c.MongoKeyField, "mongo-key-field", "_id", "document field holding the key")
	f.str(&c.KeysFile, "keys-file", "", "file with one key per line, as serve's --keys-file (give this or --mongo-uri); add creates it")
	f.dur(&c.Timeout, "timeout", 10*time.Second, "give up after this long")
	f.Usage = func() {
		fmt.Fprint(f.Output(), `Usage:
  wspubsub keys add [flags] [KEY...]   add keys (none given: generate a random one and print it)
  wspubsub keys rm  [flags] KEY...     remove keys (exit status 1 if one was not there)
  wspubsub keys ls  [flags]            print every key, one per line

Edits the key store a gateway reads: MongoDB (--mongo-uri) or a key file (--keys-file), exactly one.
A gateway on --keys-file sees a change within a second; one on MongoDB at its next lookup.
Keys are secrets: the gateway never logs one whole, but this command prints them whole by design
(it is the operator's own store). Flags go before the keys.

`)
		f.PrintDefaults()
	}
	if err := f.parse(args, getenv); err != nil {
		return c, asUsage(err)
	}
	c.Keys = f.Args()
	return c, c.validate(f)
}

func (c *Keys) validate(f *flagSet) error {
	bad := func(format string, a ...any) error { return &UsageError{Err: fmt.Errorf(format, a...)} }
	switch c.Action {
	case "add", "rm", "ls":
	case "":
		return bad("keys needs an action: add, rm or ls")
	default:
		return bad("unknown keys action %q (want add, rm or ls)", c.Action)
	}
	if (c.MongoURI == "") == (c.KeysFile == "") {
		return bad("give exactly one key store: --mongo-uri or --keys-file (or WSPUBSUB_MONGO_URI / WSPUBSUB_KEYS_FILE)%s", bothSet(f))
	}
	if c.Timeout <= 0 {
		return bad("--timeout must be positive: %v", c.Timeout)
	}
	switch {
	case c.Action == "ls" && len(c.Keys) > 0:
		return bad("keys ls takes no arguments")
	case c.Action == "rm" && len(c.Keys) == 0:
		return bad("keys rm takes one or more keys")
	}
	for _, k := range c.Keys {
		if err := CheckKey(k); err != nil {
			return &UsageError{Err: err}
		}
	}
	return nil
}

func bothSet(f *flagSet) string {
	if f.isSet("mongo-uri") && f.isSet("keys-file") {
		return ": both are set"
	}
	return ""
}

// CheckKey reports whether key can be stored and used: 1 to 1024 bytes,
// printable, no spaces, not starting with # (a key file's comment) or -
// (a flag).
func CheckKey(key string) error {
	switch {
	case key == "":
		return errors.New("a key must not be empty")
	case len(key) > maxKeyBytes:
		return fmt.Errorf("a key must be at most %d bytes: %d", maxKeyBytes, len(key))
	case strings.HasPrefix(key, "#"):
		return fmt.Errorf("a key must not start with # (a comment in a key file): %q", key)
	case strings.HasPrefix(key, "-"):
		// Most likely a flag placed after the keys, which Go's flag
		// package takes as an argument.
		return fmt.Errorf("%q looks like a flag: flags go before the keys", key)
	}
	if !utf8.ValidString(key) {
		// Ranging over it would read each bad byte as U+FFFD, which is
		// printable; JSON (events, logs) would then change the key.
		return fmt.Errorf("a key must be UTF-8 text: %q", key)
	}
	for _, r := range key {
		if unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return fmt.Errorf("a key must be printable without spaces: %q", key)
		}
	}
	return nil
}

// asUsage marks a flag-parsing error as a usage error, unless it already is
// one or is the request for help.
func asUsage(err error) error {
	var u *UsageError
	if errors.As(err, &u) || errors.Is(err, flag.ErrHelp) {
		return err
	}
	return &UsageError{Err: err}
}
