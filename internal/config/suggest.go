package config

import (
	"errors"
	"flag"
	"fmt"
	"slices"
	"strings"
	"time"
)

// flagProblem rewrites an error of the flag package in the words of this
// command line: --name, what the value should look like, and for an unknown
// flag the closest known one.
func (f *flagSet) flagProblem(err error) error {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		name = strings.TrimLeft(name, "-")
		if s := f.suggest(name); s != "" {
			return fmt.Errorf("unknown flag --%s; did you mean --%s?", name, s)
		}
		return fmt.Errorf("unknown flag --%s", name)
	}
	if name, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
		return fmt.Errorf("flag --%s needs a value", strings.TrimLeft(name, "-"))
	}
	// invalid value "abc" for flag -idle-timeout: parse error
	// invalid boolean value "x" for -presence: parse error
	for _, sep := range []string{" for flag -", " for -"} {
		i := strings.LastIndex(msg, sep)
		if i < 0 || !strings.HasPrefix(msg, "invalid ") {
			continue
		}
		name, inner, _ := strings.Cut(msg[i+len(sep):], ": ")
		if fl := f.Lookup(name); fl != nil {
			value := msg[strings.Index(msg, "value ")+len("value ") : i]
			return fmt.Errorf("--%s %s: %s", name, value, valueProblem(fl, errors.New(inner)))
		}
	}
	if arg, ok := strings.CutPrefix(msg, "bad flag syntax: "); ok {
		return fmt.Errorf("bad flag syntax: %s (write --name value or --name=value)", arg)
	}
	return err
}

// valueProblem says what is wrong with a value flag fl refused: what the
// built-in kinds expect (their own errors say "parse error"), else the
// flag's own error.
func valueProblem(fl *flag.Flag, err error) string {
	switch kindOf(fl.Value) {
	case kindDuration:
		return "not a duration (want a number with a unit: 500ms, 30s, 5m, 1h30m)"
	case kindInt:
		return "not a whole number"
	case kindFloat:
		return "not a number"
	case kindBool:
		return "not a boolean (want true or false)"
	}
	if err == nil {
		return "invalid value"
	}
	return err.Error()
}

// flagAliases maps names people type from other tools to this command's
// flag (offered only when the flag set has it).
func flagAliases(name string) []string {
	switch name {
	case "port", "bind", "addr", "address", "host", "http", "listen-addr":
		return []string{"listen"}
	case "redis", "redis-addr", "redis-uri":
		return []string{"redis-url"}
	case "mongo", "mongodb", "mongo-url", "mongodb-uri", "mongodb-url":
		return []string{"mongo-uri"}
	case "token", "auth-token", "api-key":
		return []string{"publish-token"}
	case "keys", "key-file":
		return []string{"keys-file"}
	case "log", "verbose", "debug", "v":
		return []string{"log-level"}
	case "origins", "cors":
		return []string{"allowed-origins"}
	case "cert", "tls-crt":
		return []string{"tls-cert"}
	case "url", "server", "addr-gateway":
		return []string{"gateway", "target"}
	case "config-file", "conf", "c":
		return []string{"config"}
	}
	return nil
}

// suggest returns the known flag closest to name: an alias, the only flag it
// is a prefix of, or one within a small edit distance; "" when none is close
// enough to be a likely meaning.
func (f *flagSet) suggest(name string) string {
	var names []string
	f.VisitAll(func(fl *flag.Flag) { names = append(names, fl.Name) })
	return closest(name, names)
}

// closest is suggest over a list of candidate names.
func closest(name string, names []string) string {
	name = strings.ReplaceAll(strings.ToLower(strings.TrimLeft(name, "-")), "_", "-")
	if name == "" {
		return ""
	}
	if slices.Contains(names, name) {
		return name // a case or underscore slip
	}
	for _, a := range flagAliases(name) {
		if slices.Contains(names, a) {
			return a
		}
	}
	var prefixed []string
	for _, n := range names {
		if strings.HasPrefix(n, name) {
			prefixed = append(prefixed, n)
		}
	}
	if len(prefixed) > 0 && len(name) >= 3 {
		return slices.MinFunc(prefixed, func(a, b string) int { return len(a) - len(b) })
	}
	best, bestD := "", len(name)/3+1 // about one slip per three letters
	for _, n := range names {
		if d := editDistance(name, n); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// valueKind is what a flag's value is, which decides what a TOML value for
// it may be and what a refused value is told.
type valueKind int

const (
	kindString valueKind = iota
	kindDuration
	kindInt
	kindFloat
	kindBool
	kindSize
	kindList
)

// kindOf infers the kind from the flag's value, so that flags declared
// through any helper (or flag's own methods) are covered.
func kindOf(v flag.Value) valueKind {
	switch v.(type) {
	case *sizeValue:
		return kindSize
	case *listValue, *defaultedList:
		return kindList
	}
	if g, ok := v.(flag.Getter); ok {
		switch g.Get().(type) {
		case time.Duration:
			return kindDuration
		case int, int64, uint, uint64:
			return kindInt
		case float64:
			return kindFloat
		case bool:
			return kindBool
		}
	}
	return kindString
}
