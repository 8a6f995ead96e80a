// Command plot renders BENCHMARKS.md's figures from the JSON lines that
// `wspubsub bench` prints (collected by scripts/bench-plots.sh,
// bench-all.sh and bench-cluster.sh). It is its
// own module so gonum/plot stays out of the gateway's dependencies.
//
//	go run . -rate ../../docs/bench/rate.jsonl -idle ../../docs/bench/idle.jsonl -out ../../docs/bench
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"image/color"
	"os"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

type result struct {
	Scenario    string  `json:"scenario"`
	Conns       int     `json:"conns"`
	Connected   int     `json:"connected"`
	Published   float64 `json:"published"`
	PublishS    float64 `json:"publish_s"`
	RSSBefore   float64 `json:"gateway_rss_before"`
	RSSAfter    float64 `json:"gateway_rss_after"`
	BytesPerCon float64 `json:"gateway_bytes_per_conn"`
	Label       string  `json:"label"`
	Timeline    []struct {
		T   float64 `json:"t_s"`
		P50 float64 `json:"p50_ms"`
		P99 float64 `json:"p99_ms"`
		Max float64 `json:"max_ms"`
		GC  int     `json:"gateway_gc"`
		A99 float64 `json:"arrival_p99_ms"`
	} `json:"timeline"`
	DeliverS float64 `json:"deliver_s"`
	Nodes    []struct {
		Target     string  `json:"target"`
		RSSBefore  float64 `json:"rss_before"`
		RSSAfter   float64 `json:"rss_after"`
		CPUPublish float64 `json:"cpu_publish_s"`
		Conns      float64 `json:"connections"`
	} `json:"nodes"`
	RedisProcs []struct {
		CPUPublish float64 `json:"cpu_publish_s"`
	} `json:"redis_procs"`
	Latency struct {
		P50  float64 `json:"p50_ms"`
		P90  float64 `json:"p90_ms"`
		P99  float64 `json:"p99_ms"`
		P999 float64 `json:"p999_ms"`
	} `json:"latency"`
}

func read(path string) ([]result, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []result
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r result
		if json.Unmarshal(sc.Bytes(), &r) == nil && r.Scenario != "" {
			out = append(out, r)
		}
	}
	return out, sc.Err()
}

func line(p *plot.Plot, name string, pts plotter.XYs, c color.Color) {
	l, s, err := plotter.NewLinePoints(pts)
	if err != nil {
		panic(err)
	}
	l.Color, s.Color = c, c
	p.Add(l, s)
	p.Legend.Add(name, l, s)
}

func main() {
	rate := flag.String("rate", "", "JSON lines of rate runs")
	idle := flag.String("idle", "", "JSON lines of idle runs")
	timeline := flag.String("timeline", "", "JSON line of one rate run (its latency over time is plotted)")
	cluster := flag.String("cluster", "", "JSON lines of a multi-node run (scripts/bench-cluster.sh): each node's and Redis master's CPU, each node's memory")
	out := flag.String("out", ".", "output directory")
	flag.Parse()
	if *cluster != "" {
		rs, err := read(*cluster)
		if err != nil {
			fail(err)
		}
		plotClusterCPU(rs, filepath.Join(*out, "cluster-cpu.png"))
		plotClusterMemory(rs, filepath.Join(*out, "cluster-memory.png"))
	}
	if *timeline != "" {
		rs, err := read(*timeline)
		if err != nil {
			fail(err)
		}
		for _, r := range rs {
			if len(r.Timeline) > 0 {
				plotTimeline(r, filepath.Join(*out, "latency-over-time.png"))
				break
			}
		}
	}
	if *rate != "" {
		rs, err := read(*rate)
		if err != nil {
			fail(err)
		}
		p := plot.New()
		p.Title.Text = "wspubsub: publish→receive latency vs publish rate (10,000 connections)"
		p.X.Label.Text = "messages per second"
		p.Y.Label.Text = "latency (ms)"
		p.Legend.Top, p.Legend.Left = true, true
		var p50, p90, p99, p999 plotter.XYs
		for _, r := range rs {
			x := r.Published / r.PublishS
			p50 = append(p50, plotter.XY{X: x, Y: r.Latency.P50})
			p90 = append(p90, plotter.XY{X: x, Y: r.Latency.P90})
			p99 = append(p99, plotter.XY{X: x, Y: r.Latency.P99})
			p999 = append(p999, plotter.XY{X: x, Y: r.Latency.P999})
		}
		line(p, "p50", p50, color.RGBA{46, 91, 255, 255})
		line(p, "p90", p90, color.RGBA{18, 128, 74, 255})
		line(p, "p99", p99, color.RGBA{181, 71, 8, 255})
		line(p, "p99.9", p999, color.RGBA{180, 35, 24, 255})
		save(p, filepath.Join(*out, "latency-vs-rate.png"))
	}
	if *idle != "" {
		rs, err := read(*idle)
		if err != nil {
			fail(err)
		}
		p := plot.New()
		p.Title.Text = "wspubsub: gateway memory vs idle connections"
		p.X.Label.Text = "idle authenticated WebSocket connections"
		p.Y.Label.Text = "MB"
		p.Legend.Top, p.Legend.Left = true, true
		var rss, per plotter.XYs
		for _, r := range rs {
			rss = append(rss, plotter.XY{X: float64(r.Connected), Y: r.RSSAfter / 1e6})
			per = append(per, plotter.XY{X: float64(r.Connected), Y: r.BytesPerCon * float64(r.Connected) / 1e6})
		}
		line(p, "gateway RSS", rss, color.RGBA{46, 91, 255, 255})
		line(p, "RSS growth over the empty gateway", per, color.RGBA{181, 71, 8, 255})
		save(p, filepath.Join(*out, "memory-vs-connections.png"))
	}
}

// plotTimeline draws one run's p50, p99 and max per 250 ms of send time,
// and marks the slots in which the gateway finished a GC cycle.
func plotTimeline(r result, path string) {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("wspubsub: latency over time, %.0f msg/s to %d connections (per 250 ms)", r.Published/r.PublishS, r.Connected)
	p.X.Label.Text = "seconds into the run"
	p.Y.Label.Text = "latency (ms)"
	p.Legend.Top, p.Legend.Left = true, true
	var p50, p99, mx, gc, a99 plotter.XYs
	for _, t := range r.Timeline {
		if t.A99 > 0 {
			a99 = append(a99, plotter.XY{X: t.T, Y: t.A99})
		}
		p50 = append(p50, plotter.XY{X: t.T, Y: t.P50})
		p99 = append(p99, plotter.XY{X: t.T, Y: t.P99})
		mx = append(mx, plotter.XY{X: t.T, Y: t.Max})
		if t.GC > 0 {
			gc = append(gc, plotter.XY{X: t.T, Y: 0})
		}
	}
	line(p, "p50", p50, color.RGBA{46, 91, 255, 255})
	line(p, "p99", p99, color.RGBA{181, 71, 8, 255})
	line(p, "max", mx, color.RGBA{180, 35, 24, 255})
	if len(a99) > 0 {
		line(p, "p99 at the client socket (kernel receive stamp)", a99, color.RGBA{0, 140, 70, 255})
	}
	if len(gc) > 0 {
		s, err := plotter.NewScatter(gc)
		if err != nil {
			panic(err)
		}
		s.Color = color.Black
		p.Add(s)
		p.Legend.Add("gateway GC cycle in the slot", s)
	}
	save(p, path)
}

// plotClusterCPU draws, for each run, the cores each gateway and each
// Redis master used while publishing (CPU seconds over the first publish →
// last delivery window): how evenly the nodes share the work, and Redis's
// part of it.
func plotClusterCPU(rs []result, path string) {
	var runs []result
	for _, r := range rs {
		if len(r.Nodes) > 0 && r.DeliverS > 0 {
			runs = append(runs, r)
		}
	}
	if len(runs) == 0 {
		return
	}
	p := plot.New()
	p.Title.Text = fmt.Sprintf("wspubsub: cores used per gateway and per Redis master while publishing (%d connections)", runs[0].Conns)
	p.Y.Label.Text = "cores (CPU seconds per second)"
	p.Legend.Top = true
	var names []string
	for _, r := range runs {
		names = append(names, r.Label)
	}
	p.NominalX(names...)
	nodes, shards := len(runs[0].Nodes), len(runs[0].RedisProcs)
	w := vg.Points(60 / float64(nodes+shards))
	for i := range nodes + shards {
		var vals plotter.Values
		for _, r := range runs {
			v := 0.0
			switch {
			case i < nodes && i < len(r.Nodes):
				v = r.Nodes[i].CPUPublish / r.DeliverS
			case i >= nodes && i-nodes < len(r.RedisProcs):
				v = r.RedisProcs[i-nodes].CPUPublish / r.DeliverS
			}
			vals = append(vals, v)
		}
		b, err := plotter.NewBarChart(vals, w)
		if err != nil {
			panic(err)
		}
		b.LineStyle.Width = 0
		b.Offset = w * vg.Length(float64(i)-float64(nodes+shards-1)/2)
		if i < nodes {
			b.Color = color.RGBA{46, 91, uint8(255 - 20*i), 255}
			if i == 0 {
				p.Legend.Add(fmt.Sprintf("gateways gw1…gw%d", nodes), b)
			}
		} else {
			b.Color = color.RGBA{uint8(230 - 25*(i-nodes)), 90, 20, 255}
			if i == nodes {
				p.Legend.Add(fmt.Sprintf("Redis masters 1…%d", shards), b)
			}
		}
		p.Add(b)
	}
	p.Legend.Left = true
	p.Y.Max *= 1.2 // room for the legend
	save(p, path)
}

// plotClusterMemory draws each gateway's RSS empty and with its share of
// the idle run's connections.
func plotClusterMemory(rs []result, path string) {
	for _, r := range rs {
		if r.Scenario != "idle" || len(r.Nodes) == 0 {
			continue
		}
		p := plot.New()
		p.Title.Text = fmt.Sprintf("wspubsub: RSS per gateway, %d idle connections over %d gateways (%.0f B per connection)",
			r.Connected, len(r.Nodes), r.BytesPerCon)
		p.Y.Label.Text = "MB"
		p.Legend.Top, p.Legend.Left = true, true
		var names []string
		var before, after plotter.Values
		for i, n := range r.Nodes {
			names = append(names, fmt.Sprintf("gw%d (%.0f conns)", i+1, n.Conns))
			before = append(before, n.RSSBefore/1e6)
			after = append(after, n.RSSAfter/1e6)
		}
		p.NominalX(names...)
		w := vg.Points(18)
		for i, s := range []struct {
			name string
			v    plotter.Values
			c    color.Color
		}{{"empty gateway", before, color.RGBA{160, 160, 160, 255}}, {"with its connections", after, color.RGBA{46, 91, 255, 255}}} {
			b, err := plotter.NewBarChart(s.v, w)
			if err != nil {
				panic(err)
			}
			b.LineStyle.Width = 0
			b.Color = s.c
			b.Offset = w * vg.Length(float64(i)-0.5)
			p.Add(b)
			p.Legend.Add(s.name, b)
		}
		p.Y.Max *= 1.2 // room for the legend
		save(p, path)
		return
	}
}

func save(p *plot.Plot, path string) {
	if err := p.Save(8*vg.Inch, 4.5*vg.Inch, path); err != nil {
		fail(err)
	}
	fmt.Println("wrote", path)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "plot:", err)
	os.Exit(1)
}
