package envelope

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name, in   string
		recipients []string
		broadcast  bool
		payload    string
		reason     string
	}{
		{name: "seed form", in: `{"recipients":["k1"],"data":{"entry":{"id":"123","comments":0,"tags":0}}}`,
			recipients: []string{"k1"}, payload: `{"data":{"entry":{"id":"123","comments":0,"tags":0}}}`},
		{name: "recipients last", in: `{"data":{"a":1},"recipients":["k1","k2"]}`,
			recipients: []string{"k1", "k2"}, payload: `{"data":{"a":1}}`},
		{name: "bytes pass through", in: ` { "recipients" : [ "k" ] , "data" : {"n":1.0e2, "b":[ 1,2 ],"s":"a\"}b"} } `,
			recipients: []string{"k"}, payload: `{"data" : {"n":1.0e2, "b":[ 1,2 ],"s":"a\"}b"}}`},
		{name: "other members kept in order", in: `{"z":1,"recipients":["k"],"data":"x","a":[]}`,
			recipients: []string{"k"}, payload: `{"z":1,"data":"x","a":[]}`},
		{name: "escaped recipient", in: `{"recipients":["a\u0062c"],"data":1}`, recipients: []string{"abc"}, payload: `{"data":1}`},
		{name: "data null", in: `{"recipients":["k"],"data":null}`, recipients: []string{"k"}, payload: `{"data":null}`},
		{name: "broadcast", in: `{"broadcast":true,"data":{"x":1}}`, broadcast: true, payload: `{"data":{"x":1}}`},
		{name: "invalid json", in: `{"recipients":["k"],"data":{"id”:”123”}}`, reason: ReasonInvalidJSON},
		{name: "truncated", in: `{"recipients":["k"],"data":`, reason: ReasonInvalidJSON},
		{name: "invalid UTF-8 in a string", in: "{\"recipients\":[\"k\"],\"data\":\"a\xffb\"}", reason: ReasonInvalidUTF8},
		{name: "invalid UTF-8 in a recipient", in: "{\"recipients\":[\"\xc3\"],\"data\":1}", reason: ReasonInvalidUTF8},
		{name: "UTF-8 passes", in: `{"recipients":["k"],"data":"héllo ✓"}`, recipients: []string{"k"}, payload: `{"data":"héllo ✓"}`},
		{name: "empty", in: ``, reason: ReasonInvalidJSON},
		{name: "array", in: `["k"]`, reason: ReasonNotObject},
		{name: "string", in: `"k"`, reason: ReasonNotObject},
		{name: "recipients string", in: `{"recipients":"k","data":1}`, reason: ReasonBadRecipients},
		{name: "recipients numbers", in: `{"recipients":[1],"data":1}`, reason: ReasonBadRecipients},
		{name: "recipients mixed", in: `{"recipients":["k",null],"data":1}`, reason: ReasonBadRecipients},
		{name: "no recipients", in: `{"data":1}`, reason: ReasonBadRecipients},
		{name: "empty recipients", in: `{"recipients":[],"data":1}`, reason: ReasonNoRecipients},
		{name: "no data", in: `{"recipients":["k"]}`, reason: ReasonNoData},
		{name: "escaped member name", in: `{"recipients":["a"],"recipi\u0065nts":["c"],"data":1}`, reason: ReasonEscapedName},
		{name: "escaped member name, not routing", in: `{"recipients":["a"],"d\u0061ta":1,"data":1}`, reason: ReasonEscapedName},
		{name: "escaped data name", in: `{"recipients":["a"],"d\u0061ta":1}`, reason: ReasonEscapedName},
		{name: "escaped ids name", in: `{"recipients":["a"],"wspubsub_id\u0073":["x"],"data":1}`, reason: ReasonEscapedName},
		{name: "escapes inside data pass", in: `{"recipients":["a"],"data":{"n\u0061me":"\ud800"}}`,
			recipients: []string{"a"}, payload: `{"data":{"n\u0061me":"\ud800"}}`},
		{name: "lone high surrogate recipient", in: `{"recipients":["\ud800"],"data":1}`, reason: ReasonBadRecipients},
		{name: "lone high surrogate then text", in: `{"recipients":["k","\uD83Dx"],"data":1}`, reason: ReasonBadRecipients},
		{name: "lone low surrogate recipient", in: `{"recipients":["a\udc00"],"data":1}`, reason: ReasonBadRecipients},
		{name: "two high surrogates", in: `{"recipients":["\ud83d\ud83d"],"data":1}`, reason: ReasonBadRecipients},
		{name: "surrogate pair recipient", in: `{"recipients":["\ud83d\uDE00"],"data":1}`, recipients: []string{"😀"}, payload: `{"data":1}`},
		{name: "escaped backslash, no surrogate", in: `{"recipients":["\\ud800"],"data":1}`, recipients: []string{`\ud800`}, payload: `{"data":1}`},
		{name: "broadcast false", in: `{"broadcast":false,"data":1}`, reason: ReasonBadBroadcast},
		{name: "broadcast and recipients", in: `{"broadcast":true,"recipients":["k"],"data":1}`, reason: ReasonBadBroadcast},
	}
	var p Parser
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env, err := p.Parse([]byte(tt.in))
			if tt.reason != "" {
				var e *Error
				if !errors.As(err, &e) || e.Reason != tt.reason {
					t.Fatalf("err = %v, want reason %s", err, tt.reason)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if env.Broadcast != tt.broadcast || string(env.Payload) != tt.payload {
				t.Fatalf("got broadcast=%v payload=%s, want %v %s", env.Broadcast, env.Payload, tt.broadcast, tt.payload)
			}
			// The payload has FrameRoom spare bytes before it, in the same array.
			if len(env.Framed) != FrameRoom+len(env.Payload) || &env.Framed[FrameRoom:][0] != &env.Payload[0] {
				t.Fatalf("Framed is not Payload with %d bytes of room before it", FrameRoom)
			}
			var got []string
			for _, r := range env.Recipients {
				got = append(got, string(r))
			}
			if strings.Join(got, ",") != strings.Join(tt.recipients, ",") {
				t.Fatalf("recipients %q, want %q", got, tt.recipients)
			}
		})
	}
}

// Parse takes a message anyone may have published: its "wspubsub_ids"
// member, well-formed or not, is removed and ignored, never trusted.
func TestParseStripsIDs(t *testing.T) {
	var p Parser
	for _, in := range []string{
		`{"wspubsub_ids":["e.99999999999999-0"],"recipients":["k"],"data":1}`,
		`{"recipients":["k"],"data":1,"wspubsub_ids":["e.1-0"],"wspubsub_ids":["f.1-0"]}`,
		`{"recipients":["k"],"wspubsub_ids":["a","b"],"data":1}`, // not one per recipient
		`{"recipients":["k"],"wspubsub_ids":5,"data":1}`,         // not a list
		`{"recipients":["k"],"wspubsub_ids":[7],"data":1}`,
	} {
		env, err := p.Parse([]byte(in))
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if env.IDs != nil || !env.StrippedIDs || string(env.Payload) != `{"data":1}` {
			t.Fatalf("%s: ids %q stripped=%v payload %s", in, env.IDs, env.StrippedIDs, env.Payload)
		}
	}
	env, err := p.Parse([]byte(`{"broadcast":true,"wspubsub_ids":["e.1-0"],"data":1}`))
	if err != nil || !env.StrippedIDs || string(env.Payload) != `{"data":1}` {
		t.Fatalf("broadcast: %+v %v", env, err)
	}
	env, err = p.Parse([]byte(`{"recipients":["k"],"data":{"wspubsub_ids":["e.1-0"]}}`))
	if err != nil || env.StrippedIDs || string(env.Payload) != `{"data":{"wspubsub_ids":["e.1-0"]}}` {
		t.Fatalf("nested member: %+v %v", env, err)
	}
}

// ParseRecorded trusts the member: one id per recipient, the first member
// when the publisher sent one along behind the history's.
func TestParseRecordedIDs(t *testing.T) {
	var p Parser
	env, err := p.ParseRecorded([]byte(`{"wspubsub_ids":["e.1-0","e.2-0"],"recipients":["a","b"],"wspubsub_ids":["x.9-9","x.9-9"],"data":1}`))
	if err != nil || env.StrippedIDs || len(env.IDs) != 2 || string(env.IDs[0]) != "e.1-0" || string(env.IDs[1]) != "e.2-0" || string(env.Payload) != `{"data":1}` {
		t.Fatalf("got %+v %v", env, err)
	}
	if env, err := p.ParseRecorded([]byte(`{"recipients":["k"],"data":1}`)); err != nil || env.IDs != nil {
		t.Fatalf("no ids: %+v %v", env, err)
	}
	for _, in := range []string{
		`{"recipients":["k"],"wspubsub_ids":["a","b"],"data":1}`,
		`{"recipients":["k"],"wspubsub_ids":5,"data":1}`,
		`{"recipients":["k"],"wspubsub_ids":[7],"data":1}`,
	} {
		var e *Error
		if _, err := p.ParseRecorded([]byte(in)); !errors.As(err, &e) || e.Reason != ReasonBadIDs {
			t.Fatalf("%s: %v, want %s", in, err, ReasonBadIDs)
		}
	}
}

// A top-level member name spelt with an escape is refused by both parsers:
// the history functions read names decoded, this parser as bytes, and
// "recipi\u0065nts" would be recipients to one and data to the other.
func TestParseRefusesEscapedNames(t *testing.T) {
	var p Parser
	for _, in := range []string{
		`{"recipients":["a"],"recipi\u0065nts":["c"],"data":1}`,
		`{"wspubsub_ids":["e.1-0"],"recipients":["a"],"x\"y":1,"data":1}`,
		`{"wspubsub_ids":["e.1-0"],"recipients":["a"],"data":1,"\/":2}`,
	} {
		for name, parse := range map[string]func([]byte) (Envelope, error){"Parse": p.Parse, "ParseRecorded": p.ParseRecorded} {
			var e *Error
			if _, err := parse([]byte(in)); !errors.As(err, &e) || e.Reason != ReasonEscapedName {
				t.Fatalf("%s(%s): %v, want %s", name, in, err, ReasonEscapedName)
			}
		}
	}
}

func TestParseTooLarge(t *testing.T) {
	p := Parser{MaxBytes: 10}
	_, err := p.Parse([]byte(`{"recipients":["k"],"data":1}`))
	var e *Error
	if !errors.As(err, &e) || e.Reason != ReasonTooLarge {
		t.Fatalf("err = %v", err)
	}
}

// FuzzParse checks the parser never panics, and that what it accepts is
// consistent: the payload is valid JSON carrying the same data member.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"recipients":["k1"],"data":{"entry":{"id":"123"}}}`,
		`{"data":[1,{"a":"}"}],"recipients":["a","b\"c"]}`,
		`{"broadcast":true,"data":null}`,
		`{"recipients":[],"data":1}`, `[]`, `{}`, `"x"`, `{"recipients":"x","data":1}`,
		`{"wspubsub_ids":["e.1-0"],"recipients":["k"],"data":1}`,
		`{"recipients":["a"],"recipi\u0065nts":["c"],"data":1}`,
		`{"recipients":["\ud83d\ude00","\ud800","\\udc00"],"data":1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var p Parser
		env, err := p.Parse(in)
		if err != nil {
			return
		}
		if !json.Valid(env.Payload) {
			t.Fatalf("payload not valid JSON: %s (from %s)", env.Payload, in)
		}
		var orig, out map[string]json.RawMessage
		if json.Unmarshal(in, &orig) != nil || json.Unmarshal(env.Payload, &out) != nil {
			t.Fatalf("unmarshal failed for accepted input %s", in)
		}
		if _, ok := out["recipients"]; ok {
			t.Fatalf("recipients leaked into payload: %s", env.Payload)
		}
		if env.IDs != nil {
			t.Fatalf("ids trusted: %s", in)
		}
		if _, ok := out[IDsMember]; ok || env.StrippedIDs != (orig[IDsMember] != nil) {
			t.Fatalf("ids leaked into payload: %s (from %s)", env.Payload, in)
		}
		// The recipients are those a decoding reader (Lua's cjson in the
		// history functions) finds: both must name the same keys.
		if !env.Broadcast {
			var want []string
			if err := json.Unmarshal(orig["recipients"], &want); err != nil || len(want) != len(env.Recipients) {
				t.Fatalf("recipients %q, a decoder reads %q (%v), from %s", env.Recipients, want, err, in)
			}
			for i, r := range env.Recipients {
				if string(r) != want[i] {
					t.Fatalf("recipient %q, a decoder reads %q, from %s", r, want[i], in)
				}
			}
		}
		if string(out["data"]) != string(orig["data"]) {
			t.Fatalf("data changed: %s -> %s", orig["data"], out["data"])
		}
		if !env.Broadcast && len(env.Recipients) == 0 {
			t.Fatalf("accepted with no recipients: %s", in)
		}
	})
}

func BenchmarkParse(b *testing.B) {
	msg := []byte(`{"recipients":["00721b2a-046c-4ecc-a5df-5f808cc6c58f","11721b2a-046c-4ecc-a5df-5f808cc6c58f"],"data":{"entry":{"id":"123","comments":0,"tags":0}}}`)
	var p Parser
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		if _, err := p.Parse(msg); err != nil {
			b.Fatal(err)
		}
	}
}

// validCases are where JSON validators tend to differ: control characters
// and escapes in strings, number forms, literals, nesting at and past
// encoding/json's limit of 10,000, trailing bytes and whitespace.
func validCases() [][]byte {
	cases := [][]byte{}
	for _, s := range []string{
		``, ` `, `{}`, `[]`, `""`, `0`, `-0`, `01`, `1.`, `.1`, `1e`, `1e+`, `1E-2`, `-`, `+1`, `0x1`,
		`1.5e308`, `123456789012345678901234567890`, `NaN`, `Infinity`,
		`true`, `tru`, `truee`, `null`, `nul`, `false `, ` false`, "\ttrue\r\n",
		`"\u00e9"`, `"\u00G9"`, `"\ud800"`, `"\x"`, `"\/"`, `"\'"`, "\"\x01\"", "\"\x7f\"", "\"\xff\"",
		`{"a":1,}`, `[1,]`, `{"a" 1}`, `{a:1}`, `{"a":1}{}`, `[1] [2]`, `{"a":[1,{"b":null}]}`,
		`{"recipients":["k"],"data":{"x":[1e5,-0.5,true,false,null]}}`, "{\"a\":\"\\\"\"}", `["\\"]`, `["\"]`,
	} {
		cases = append(cases, []byte(s))
	}
	for _, n := range []int{9999, 10000, 10001} {
		cases = append(cases,
			append(bytes.Repeat([]byte("["), n), bytes.Repeat([]byte("]"), n)...),
			append(append(bytes.Repeat([]byte(`{"a":`), n), '1'), bytes.Repeat([]byte("}"), n)...),
			bytes.Repeat([]byte("["), n))
	}
	return cases
}

func TestValidAgreesWithEncodingJSON(t *testing.T) {
	for _, c := range validCases() {
		if got, want := Valid(c), json.Valid(c); got != want {
			t.Errorf("Valid(%.40q) = %v, encoding/json says %v", c, got, want)
		}
	}
}

// FuzzValidAgreesWithEncodingJSON: Valid replaces encoding/json.Valid on
// the inbound path, so the two must accept exactly the same messages.
func FuzzValidAgreesWithEncodingJSON(f *testing.F) {
	for _, c := range validCases() {
		if len(c) < 1000 {
			f.Add(c)
		}
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if got, want := Valid(in), json.Valid(in); got != want {
			t.Fatalf("Valid(%q) = %v, encoding/json says %v", in, got, want)
		}
	})
}

// BenchmarkValid: Valid against encoding/json.Valid on a typical message.
func BenchmarkValid(b *testing.B) {
	msg := []byte(`{"recipients":["00721b2a-046c-4ecc-a5df-5f808cc6c58f","11721b2a-046c-4ecc-a5df-5f808cc6c58f"],"data":{"entry":{"id":"123","comments":0,"tags":0}}}`)
	for _, v := range []struct {
		name  string
		valid func([]byte) bool
	}{{"goccy", Valid}, {"encoding_json", json.Valid}} {
		b.Run(v.name, func(b *testing.B) {
			b.SetBytes(int64(len(msg)))
			for b.Loop() {
				if !v.valid(msg) {
					b.Fatal("invalid")
				}
			}
		})
	}
}
