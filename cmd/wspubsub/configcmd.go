package main

import (
	"io"
	"os"

	"github.com/wspubsub/wspubsub/internal/config"
)

// configCmd prints the effective serve configuration: every setting, its
// value and where it came from, secrets hidden (--format toml: a --config
// file of it). An invalid configuration is a usage error (exit 2).
func configCmd(args []string, stdout, stderr io.Writer) error {
	e, err := config.ParseConfig(args, os.Getenv, stdout) // --help
	if err != nil {
		return err
	}
	if err := checkKeyMaterial(e.Serve); err != nil {
		return err
	}
	if e.Format == "toml" {
		return e.WriteTOML(stdout)
	}
	return e.WriteText(stdout)
}
