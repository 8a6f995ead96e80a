package broker

import "testing"

// The values are those of the Redis Cluster specification and of
// CLUSTER KEYSLOT.
func TestSlot(t *testing.T) {
	for key, want := range map[string]uint16{
		"123456789":            12739, // the specification's CRC16 check value 0x31C3, mod 16384
		"foo":                  12182,
		"{user1000}.following": Slot("user1000"),
		"foo{}{bar}":           Slot("foo{}{bar}"), // an empty tag: the whole key
		"foo{{bar}}zap":        Slot("{bar"),
		"wspubsub:h:{k1}":      Slot("k1"),
	} {
		if got := Slot(key); got != want {
			t.Errorf("Slot(%q) = %d, want %d", key, got, want)
		}
	}
	if Slot("foo{}{bar}") == Slot("bar") {
		t.Error("an empty first tag must not fall through to a later one")
	}
}
