package config

import (
	"errors"
	"flag"
	"io"
	"slices"
	"strings"
	"testing"
)

func TestParseKeys(t *testing.T) {
	env := func(vars map[string]string) func(string) string { return func(k string) string { return vars[k] } }
	c, err := ParseKeys([]string{"add", "--keys-file", "k.txt", "a", "b"}, env(nil), io.Discard)
	if err != nil || c.Action != "add" || c.KeysFile != "k.txt" || !slices.Equal(c.Keys, []string{"a", "b"}) {
		t.Fatalf("%+v %v", c, err)
	}
	c, err = ParseKeys([]string{"ls"}, env(map[string]string{"WSPUBSUB_MONGO_URI": "mongodb://h", "WSPUBSUB_MONGO_DB": "d"}), io.Discard)
	if err != nil || c.MongoURI != "mongodb://h" || c.MongoDB != "d" || c.MongoCollection != "myCollection" || c.MongoKeyField != "_id" {
		t.Fatalf("environment twins and serve's defaults: %+v %v", c, err)
	}
	for _, args := range [][]string{
		{},                           // no action
		{"--keys-file", "k"},         // no action
		{"list", "--keys-file", "k"}, // unknown action
		{"ls"},                       // no store
		{"ls", "--keys-file", "k", "--mongo-uri", "mongodb://h"}, // two stores
		{"ls", "--keys-file", "k", "extra"},                      // ls takes none
		{"rm", "--keys-file", "k"},                               // rm needs keys
		{"add", "--keys-file", "k", "a b"},                       // space
		{"add", "--keys-file", "k", "#x"},                        // comment
		{"add", "--keys-file", "k", "x", "--mongo-db", "y"},      // flag after the keys
		{"add", "--no-such-flag"},
		{"add", "--keys-file", "k", "--timeout", "0s"},
	} {
		_, err := ParseKeys(args, env(nil), io.Discard)
		var u *UsageError
		if !errors.As(err, &u) {
			t.Errorf("%q: %v, want a UsageError", args, err)
		}
	}
	if _, err := ParseKeys([]string{"add", "--help"}, env(nil), io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("--help: %v", err)
	}
	var help strings.Builder
	_, _ = ParseKeys([]string{"--help"}, env(nil), &help)
	for _, want := range []string{"keys add", "keys rm", "keys ls", "whole by design", "WSPUBSUB_KEYS_FILE", "WSPUBSUB_MONGO_URI"} {
		if !strings.Contains(help.String(), want) {
			t.Errorf("--help lacks %q", want)
		}
	}
}
