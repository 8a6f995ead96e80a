package envelope

import (
	"strconv"
	"strings"
)

// ID is a parsed message id. The zero ID is "0": before everything.
type ID struct {
	Epoch   string
	Ms, Seq uint64
}

// ParseID parses a history id, "<epoch>.<ms>-<seq>" or "0".
func ParseID(s string) (ID, bool) {
	if s == "0" {
		return ID{}, true
	}
	epoch, rest, ok := strings.Cut(s, ".")
	if !ok || epoch == "" || len(s) > MaxIDBytes || strings.Trim(epoch, "0123456789abcdefghijklmnopqrstuvwxyz") != "" {
		return ID{}, false
	}
	ms, seq, ok := strings.Cut(rest, "-")
	if !ok {
		return ID{}, false
	}
	m, err1 := strconv.ParseUint(ms, 10, 64)
	q, err2 := strconv.ParseUint(seq, 10, 64)
	if err1 != nil || err2 != nil {
		return ID{}, false
	}
	return ID{Epoch: epoch, Ms: m, Seq: q}, true
}

// MaxIDBytes bounds an id a client may send.
const MaxIDBytes = 64

// After reports whether id comes after prev in one key's history. An id of
// another epoch than prev's is after it (a new life of the history), and
// every id is after the zero ID.
func (id ID) After(prev ID) bool {
	if prev.Epoch == "" || id.Epoch != prev.Epoch {
		return id.Epoch != "" || prev.Epoch != ""
	}
	if id.Ms != prev.Ms {
		return id.Ms > prev.Ms
	}
	return id.Seq > prev.Seq
}

func (id ID) String() string {
	if id.Epoch == "" {
		return "0"
	}
	return id.Epoch + "." + strconv.FormatUint(id.Ms, 10) + "-" + strconv.FormatUint(id.Seq, 10)
}
