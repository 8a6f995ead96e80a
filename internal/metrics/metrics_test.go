package metrics

import "testing"

// The writers' counters are registered under the names README and the
// load tool (frames per write) read.
func TestSocketWriteCountersRegistered(t *testing.T) {
	m := New()
	m.SocketWrites.Add(2)
	m.FramesWritten.Add(32)
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if ms := mf.GetMetric(); len(ms) == 1 && ms[0].GetCounter() != nil {
			got[mf.GetName()] = ms[0].GetCounter().GetValue()
		}
	}
	if got["wspubsub_socket_writes_total"] != 2 || got["wspubsub_frames_written_total"] != 32 {
		t.Fatalf("socket writes %v, frames written %v", got["wspubsub_socket_writes_total"], got["wspubsub_frames_written_total"])
	}
}
