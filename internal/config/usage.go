package config

// UsageError is a mistake on the command line: an unknown flag or
// sub-command, a bad value, a missing or extra argument. The command prints
// it (with a suggestion where one fits) and where to find the usage, and
// exits 2 — the convention of Go's flag package and of most CLIs — where a
// failure at run time exits 1.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }
