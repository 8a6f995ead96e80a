package config

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// The --config file is TOML, flat: its keys are the flags' names
// (redis-url = "redis://…"). go-toml decodes the values; its parser gives
// the line of every key, so that each mistake, and `wspubsub config`, can
// name file:line.

// fileKey is one top-level key of the file and the line it is on.
type fileKey struct {
	name string
	line int
}

// loadFile sets every flag not given yet from the TOML file at path.
// Unknown keys, sections and values of the wrong type are errors naming
// path:line; a key a flag or variable already set is checked, then ignored.
func (f *flagSet) loadFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading the configuration file: %w", err)
	}
	values := map[string]any{}
	if err := toml.Unmarshal(data, &values); err != nil {
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, _ := de.Position()
			return fmt.Errorf("%s:%d: %v (is it TOML? see README, Configuration file)", path, row, de)
		}
		return fmt.Errorf("%s: %w", path, err)
	}
	keys, err := fileKeys(path, data)
	if err != nil {
		return err
	}
	var errs []error
	for _, k := range keys {
		at := fmt.Sprintf("%s:%d", path, k.line)
		fl := f.Lookup(k.name)
		switch {
		case k.name == "config":
			errs = append(errs, fmt.Errorf("%s: \"config\" cannot be set inside the configuration file", at))
			continue
		case fl == nil || f.cmdOnly[k.name]:
			errs = append(errs, fmt.Errorf("%s: unknown setting %q%s", at, k.name, didYouMean(f, k.name)))
			continue
		}
		hide := secret(k.name) // its value must not be quoted in an error
		parts, err := fileStrings(kindOf(fl.Value), values[k.name], hide)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %s: %v", at, k.name, err))
			continue
		}
		if f.given[k.name] {
			continue // a flag or WSPUBSUB_* variable wins over the file
		}
		for _, p := range parts {
			if err := fl.Value.Set(p); err != nil {
				if hide {
					errs = append(errs, fmt.Errorf("%s: %s: not a valid value (not shown: a secret)", at, k.name))
					break
				}
				errs = append(errs, fmt.Errorf("%s: %s = %q: %s", at, k.name, p, valueProblem(fl, err)))
				break
			}
		}
		f.given[k.name], f.source[k.name] = true, at
	}
	return errors.Join(errs...)
}

func didYouMean(f *flagSet, name string) string {
	if s := f.suggest(name); s != "" && s != "config" && !f.cmdOnly[s] {
		return fmt.Sprintf("; did you mean %q?", s)
	}
	return ""
}

// fileKeys lists the file's keys with their lines. Settings are top-level
// keys: a [section] is refused, since every key after it would belong to
// it and silently not be a setting.
func fileKeys(path string, data []byte) ([]fileKey, error) {
	var p unstable.Parser
	p.Reset(data)
	var keys []fileKey
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.KeyValue, unstable.Table, unstable.ArrayTable:
		default:
			continue
		}
		var parts []string
		line := 0
		it := e.Key()
		for it.Next() {
			k := it.Node()
			if line == 0 {
				line = p.Shape(k.Raw).Start.Line
			}
			parts = append(parts, string(k.Data))
		}
		name := strings.Join(parts, ".")
		if e.Kind != unstable.KeyValue {
			return nil, fmt.Errorf("%s:%d: section [%s]: settings are top-level keys named as the flags (redis-url = \"redis://…\"), with no sections", path, line, name)
		}
		keys = append(keys, fileKey{name: name, line: line})
	}
	if err := p.Error(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return keys, nil
}

// fileStrings turns a TOML value into the string(s) the flag's Set takes,
// refusing the types that would be guesses: a duration is a string with a
// unit ("5s"), a boolean is true or false (not "yes"), a list is an array of
// strings or one comma-separated string. With hide (a secret setting), an
// error names the value's type but not the value.
func fileStrings(kind valueKind, v any, hide bool) ([]string, error) {
	want := func(what string, got any) error { return wantType(what, got, hide) }
	switch kind {
	case kindString:
		if s, ok := v.(string); ok {
			return []string{s}, nil
		}
		return nil, want("a string in quotes", v)
	case kindDuration:
		if s, ok := v.(string); ok {
			return []string{s}, nil
		}
		return nil, want(`a duration string such as "30s" or "5m"`, v)
	case kindInt:
		if n, ok := v.(int64); ok {
			return []string{strconv.FormatInt(n, 10)}, nil
		}
		return nil, want("a whole number", v)
	case kindFloat:
		switch n := v.(type) {
		case int64:
			return []string{strconv.FormatInt(n, 10)}, nil
		case float64:
			return []string{strconv.FormatFloat(n, 'g', -1, 64)}, nil
		}
		return nil, want("a number", v)
	case kindBool:
		if b, ok := v.(bool); ok {
			return []string{strconv.FormatBool(b)}, nil
		}
		return nil, want("true or false", v)
	case kindSize:
		switch n := v.(type) {
		case int64:
			return []string{strconv.FormatInt(n, 10)}, nil
		case string:
			return []string{n}, nil
		}
		return nil, want(`a byte count: a whole number or a string such as "1MiB"`, v)
	case kindList:
		return listStrings(v, want)
	}
	return nil, want("a value", v)
}

func listStrings(v any, want func(string, any) error) ([]string, error) {
	switch l := v.(type) {
	case string:
		return []string{l}, nil
	case []any:
		if len(l) == 0 {
			return []string{""}, nil // an empty list replaces the default
		}
		var out []string
		for _, e := range l {
			s, ok := e.(string)
			if !ok {
				return nil, want("an array of strings", v)
			}
			out = append(out, s)
		}
		return out, nil
	}
	return nil, want(`an array of strings such as ["a", "b"] or one comma-separated string`, v)
}

func wantType(what string, got any, hide bool) error {
	if hide {
		return fmt.Errorf("want %s, got %s (value not shown: a secret)", what, tomlKind(got))
	}
	return fmt.Errorf("want %s, got %s", what, tomlType(got))
}

// tomlKind names a decoded TOML value's type alone.
func tomlKind(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a number"
	case bool:
		return "a boolean"
	}
	return tomlType(v) // arrays, tables, dates: the type only already
}

// tomlType names a decoded TOML value's type as the file's author wrote it.
func tomlType(v any) string {
	switch v := v.(type) {
	case string:
		return fmt.Sprintf("the string %q", v)
	case int64:
		return fmt.Sprintf("the integer %d", v)
	case float64:
		return fmt.Sprintf("the number %v", v)
	case bool:
		return fmt.Sprintf("the boolean %v", v)
	case []any:
		return "an array"
	case map[string]any:
		return "a table"
	case time.Time, toml.LocalDate, toml.LocalTime, toml.LocalDateTime:
		return "a date/time"
	}
	return fmt.Sprintf("%T", v)
}
