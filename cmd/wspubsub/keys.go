package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/wspubsub/wspubsub/internal/config"
	"github.com/wspubsub/wspubsub/internal/keystore"
)

// keysCmd edits the key store: `wspubsub keys add|rm|ls`. Keys are printed
// whole here, by design: it is the operator's own store.
func keysCmd(args []string, stdout, stderr io.Writer) error {
	cfg, err := config.ParseKeys(args, os.Getenv, stdout) // --help
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
	defer cancel()
	ed, where, closeStore, err := openEditor(cfg)
	if err != nil {
		return err
	}
	defer closeStore()
	switch cfg.Action {
	case "add":
		return addKeys(ctx, ed, where, cfg.Keys, stdout, stderr)
	case "rm":
		return removeKeys(ctx, ed, where, cfg.Keys, stdout, stderr)
	default:
		keys, err := ed.List(ctx)
		if err != nil {
			return storeError("listing the keys of", where, err)
		}
		for _, k := range keys {
			fmt.Fprintln(stdout, k)
		}
		if len(keys) == 0 {
			fmt.Fprintf(stderr, "no keys in %s\n", where)
		}
		return nil
	}
}

// openEditor opens the store cfg names; where describes it for messages
// (without credentials).
func openEditor(cfg config.Keys) (ed keystore.Editor, where string, closeStore func(), err error) {
	if cfg.KeysFile != "" {
		return keystore.NewFileEditor(cfg.KeysFile), cfg.KeysFile, func() {}, nil
	}
	m, err := keystore.NewMongo(keystore.MongoConfig{URI: cfg.MongoURI, Database: cfg.MongoDB,
		Collection: cfg.MongoCollection, Field: cfg.MongoKeyField, Timeout: cfg.Timeout})
	if err != nil { // a malformed --mongo-uri: the client does not dial yet
		return nil, "", nil, &config.UsageError{Err: err}
	}
	where = fmt.Sprintf("MongoDB %s %s.%s (field %s)", keystore.RedactURI(cfg.MongoURI), cfg.MongoDB, cfg.MongoCollection, cfg.MongoKeyField)
	return m, where, func() { _ = m.Close(context.Background()) }, nil
}

// addKeys adds keys (none: one generated); a key already there is no error.
// A generated key alone goes to stdout, so that KEY=$(wspubsub keys add …)
// works.
func addKeys(ctx context.Context, ed keystore.Editor, where string, keys []string, stdout, stderr io.Writer) error {
	generated := len(keys) == 0
	if generated {
		k, err := keystore.NewKey()
		if err != nil {
			return err
		}
		keys = []string{k}
	}
	for _, k := range keys {
		added, err := ed.Add(ctx, k)
		switch {
		case err != nil:
			return storeError("adding a key to", where, err)
		case generated:
			fmt.Fprintln(stdout, k)
			fmt.Fprintf(stderr, "added a new random key to %s\n", where)
		case added:
			fmt.Fprintf(stdout, "added %s to %s\n", k, where)
		default:
			fmt.Fprintf(stdout, "%s is already in %s: nothing to do\n", k, where)
		}
	}
	return nil
}

// removeKeys removes keys; any that was not there makes it fail (exit 1)
// after the others are removed.
func removeKeys(ctx context.Context, ed keystore.Editor, where string, keys []string, stdout, stderr io.Writer) error {
	missing := 0
	for _, k := range keys {
		removed, err := ed.Remove(ctx, k)
		switch {
		case err != nil:
			return storeError("removing a key from", where, err)
		case removed:
			fmt.Fprintf(stdout, "removed %s from %s\n", k, where)
		default:
			fmt.Fprintf(stderr, "%s is not in %s\n", k, where)
			missing++
		}
	}
	if missing > 0 {
		return fmt.Errorf("%d of %d key(s) not found in %s", missing, len(keys), where)
	}
	return nil
}

// storeError says what failed in one line: the driver's own error names
// every server of its topology (keystore.Reason shortens it).
func storeError(doing, where string, err error) error {
	return fmt.Errorf("%s %s: %s", doing, where, keystore.Reason(err))
}
