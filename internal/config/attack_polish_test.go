package config

import (
	"strings"
	"testing"
)

// A secret written with the wrong TOML type (publish-token = 1234…, a
// token of digits left unquoted) was quoted whole in the error, which goes
// to the terminal and to whatever collects the service's output.
func TestFileErrorsHideSecretValues(t *testing.T) {
	for _, line := range []string{
		`publish-token = 918273645546372819`,
		`publish-token = 9.18273645546372819e5`,
		`jwt-key = 918273645546372819`,
		`publish-token = [918273645546372819]`,
	} {
		_, err := ParseConfig([]string{"--config", writeFile(t, line+"\n")}, env(nil), nil)
		msg := usageErr(t, err)
		if strings.Contains(msg, "918273") || strings.Contains(msg, "9.18273") {
			t.Fatalf("%s: error shows the secret: %s", line, msg)
		}
		if !strings.Contains(msg, ":1:") {
			t.Fatalf("%s: error does not say where: %s", line, msg)
		}
	}
}

// A URL whose password url.Parse cannot read (a '/' or '#' in it, a bare
// '%': common in generated passwords) was shown whole by `wspubsub config`
// and quoted whole by the validation of --jwks-url / --auth-url.
func TestUnparseableURLPasswordsHidden(t *testing.T) {
	for _, u := range []string{
		"redis://:pa/ss0rd@redis.example:6379",
		"redis://user:pa%zzss0rd@redis.example:6379",
		"redis://user:pa#ss0rd@redis.example:6379/0",
		"mongodb://user:pa/ss0rd@mongo.example:27017",
		"redis://:12/ss0rd@redis.example:6379?password=ss0rd2",
	} {
		shown, hidden := Conceal("redis-url", u)
		if strings.Contains(shown, "ss0rd") || !hidden {
			t.Fatalf("Conceal(%q) = %q, %v", u, shown, hidden)
		}
		if !strings.Contains(shown, "example") {
			t.Fatalf("Conceal(%q) = %q: the host should stay", u, shown)
		}
	}
	for _, flag := range []string{"--jwks-url", "--auth-url"} {
		_, err := ParseConfig([]string{flag, "ftp://user:s3cretpw@idp.example/x?token=t0ken"}, env(nil), nil)
		msg := usageErr(t, err)
		if strings.Contains(msg, "s3cretpw") || strings.Contains(msg, "t0ken") {
			t.Fatalf("%s: error shows the credentials: %s", flag, msg)
		}
		_, err = ParseConfig([]string{flag, "https://user:s3c/retpw@idp.example/x"}, env(nil), nil)
		if err != nil && strings.Contains(err.Error(), "retpw") {
			t.Fatalf("%s: error shows the password: %s", flag, err)
		}
	}
}

// `wspubsub keys add` took a key with invalid UTF-8 (each bad byte read as
// the printable U+FFFD): a key that JSON events and logs rewrite, so the
// backend's recipient never matches it.
func TestKeysRefusesInvalidUTF8(t *testing.T) {
	for _, k := range []string{"\xff", "ab\xc3", "key-\xed\xa0\x80"} {
		if err := CheckKey(k); err == nil {
			t.Fatalf("CheckKey(%q) accepted it", k)
		}
	}
	if err := CheckKey("clé-ü-1"); err != nil {
		t.Fatalf("a UTF-8 key refused: %v", err)
	}
}
