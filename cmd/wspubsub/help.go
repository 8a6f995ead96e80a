package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
	"text/tabwriter"
)

// command is one sub-command as the overview lists it.
type command struct{ name, summary string }

// commands lists every sub-command, in the order the overview shows them.
// A function, not a variable: the package keeps no mutable state.
func commands() []command {
	return []command{
		{"serve", "run the gateway (the default: flags without a command run it)"},
		{"publish", "publish a message through a gateway's POST /publish or through Redis"},
		{"bench", "load-test a gateway (connections, delivery rate, latency, memory)"},
		{"presence", "where keys are connected: nodes, connections, transports"},
		{"nodes", "the live gateway nodes"},
		{"keys", "add, remove or list client keys in MongoDB or a key file"},
		{"config", "print the effective serve configuration and where each value came from"},
		{"version", "print the version, VCS revision and Go version"},
		{"help", "this overview; 'wspubsub help <command>' is '<command> --help'"},
	}
}

func commandNames() string {
	var names []string
	for _, c := range commands() {
		names = append(names, c.name)
	}
	return strings.Join(names, ", ")
}

// printOverview writes what `wspubsub --help` shows: every sub-command with
// one line each, and where to find their flags.
func printOverview(w io.Writer) {
	fmt.Fprint(w, "wspubsub is a real-time push gateway: backends publish JSON on Redis (or POST /publish),\n"+
		"wspubsub delivers it to clients over WebSocket, EventSource or long-polling.\n\n"+
		"Usage: wspubsub <command> [flags] [arguments]\n\nCommands:\n")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range commands() {
		fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.summary)
	}
	_ = tw.Flush()
	fmt.Fprint(w, "\nRun 'wspubsub <command> --help' for its flags; every flag has a WSPUBSUB_* environment twin.\n"+
		"Exit status: 0 success, 1 failure at run time, 2 usage error.\n")
}

// printVersion writes the build's module version, VCS revision and time,
// and Go version, from the build information Go stamps into the binary.
func printVersion(w io.Writer) {
	version, rev, at, dirty := "(devel)", "unknown (built outside a git clone, or with -buildvcs=false)", "unknown", ""
	goVersion := runtime.Version()
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v := bi.Main.Version; v != "" {
			version = v // "(devel)" when built from a work tree without a tag
		}
		goVersion = bi.GoVersion
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.time":
				at = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "+dirty" // built from a work tree with uncommitted changes
				}
			}
		}
	}
	fmt.Fprintf(w, "wspubsub %s\nrevision: %s%s\nvcs time: %s\ngo:       %s %s/%s\n",
		version, rev, dirty, at, goVersion, runtime.GOOS, runtime.GOARCH)
}
