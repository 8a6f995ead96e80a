package e2e

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// lostReport explains, for the diagnostics, the first max messages of want
// (the key's, in order) that c never received: the id each was
// acknowledged with, by which gateway and when, what c received around it
// and its connections (and, polling, its polls) at that time. Under c.mu.
func (c *chaosClient) lostReport(want []int, pub *chaosPublisher, max int) string {
	var lost []int
	for _, n := range want {
		if !slices.Contains(c.log, n) {
			lost = append(lost, n)
		}
	}
	return c.lostReportOf(want, lost, pub, max)
}

// lostReportOf is lostReport for the messages lost, of want, only (those
// lost silently, say). Under c.mu.
func (c *chaosClient) lostReportOf(want, lost []int, pub *chaosPublisher, max int) string {
	at := make(map[int]int, len(c.log)) // n → index in log of its first receipt
	for i, n := range c.log {
		if _, ok := at[n]; !ok && n != chaosGapMark {
			at[n] = i
		}
	}
	// Ids are shown as the message they came with: id(n=…).
	nOf := make(map[string]int, len(c.ids))
	j := 0
	for _, n := range c.log {
		if n != chaosGapMark {
			nOf[c.ids[j]] = n
			j++
		}
	}
	name := func(id string) string {
		if n, ok := nOf[id]; ok {
			return fmt.Sprintf("id(n=%d)", n)
		}
		return strconv.Quote(id)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s (%s, sid %s): lost n=%v", c.key, c.transport, c.sid, lost[:min(len(lost), 20)])
	if len(lost) > 20 {
		fmt.Fprintf(&b, " (and %d more)", len(lost)-20)
	}
	received := func(n int) string {
		i := at[n]
		conn := "no connection"
		if k := c.recvConn[i]; k >= 0 {
			conn = fmt.Sprintf("#%d (%s)", k, c.conns[k].gw)
		}
		return fmt.Sprintf("n=%d (id %s) received +%v on %s", n, c.ids[c.idIndex(i)], chaosRound(c.recvAt[i]), conn)
	}
	for li, n := range lost[:min(len(lost), max)] {
		a := pub.ackOf(n)
		fmt.Fprintf(&b, "\n  n=%d id %s: acknowledged (%s) by %s at +%v", n, pub.idOf(n), a.status, a.gw, chaosRound(a.at))
		if len(a.attempts) > 0 {
			fmt.Fprintf(&b, " after failed attempts %s", strings.Join(a.attempts, ", "))
		}
		// The nearest messages of the key received before and after it.
		wi := slices.Index(want, n)
		shown := map[int]bool{}
		for j := wi - 1; j >= 0; j-- {
			if _, ok := at[want[j]]; ok {
				fmt.Fprintf(&b, "\n    before it: %s", received(want[j]))
				shown[c.recvConn[at[want[j]]]] = true
				break
			}
		}
		for j := wi + 1; j < len(want); j++ {
			if _, ok := at[want[j]]; ok {
				fmt.Fprintf(&b, "\n    after it:  %s", received(want[j]))
				shown[c.recvConn[at[want[j]]]] = true
				break
			}
		}
		if li > 0 && a.at-pub.ackOf(lost[li-1]).at < time.Second {
			b.WriteString("\n    (connections: as above)")
			continue
		}
		// The connections around the acknowledgement (at most 8).
		from, to := a.at-time.Second, a.at+time.Second
		var idx []int
		for k, cn := range c.conns {
			end := cn.end
			if cn.why == "" {
				end = to
			}
			if shown[k] || (cn.start <= to && end >= from) {
				idx = append(idx, k)
			}
		}
		if len(idx) > 8 {
			// The 8 that started nearest to the acknowledgement.
			slices.SortFunc(idx, func(x, y int) int {
				return cmp.Compare((c.conns[x].start - a.at).Abs(), (c.conns[y].start - a.at).Abs())
			})
			idx = idx[:8]
			slices.Sort(idx)
		}
		for _, k := range idx {
			cn := c.conns[k]
			fmt.Fprintf(&b, "\n    #%d %s", k, cn.format(name))
			var polls []string
			for _, p := range cn.polls {
				if p.at <= a.at+500*time.Millisecond && p.at+p.took >= a.at-200*time.Millisecond {
					polls = append(polls, fmt.Sprintf("+%v since=%s → %s (%v)", chaosRound(p.at), name(p.since), p.answer, chaosRound(p.took)))
				}
			}
			if len(polls) > 12 {
				polls = append(polls[:12], fmt.Sprintf("… %d more", len(polls)-12))
			}
			if len(polls) > 0 {
				fmt.Fprintf(&b, "\n      polls: %s", strings.Join(polls, "; "))
			}
		}
	}
	if len(lost) > max {
		fmt.Fprintf(&b, "\n  (the other %d not shown)", len(lost)-max)
	}
	return b.String()
}

// idIndex maps an index in c.log to the index in c.ids (gap marks have no
// id); under c.mu.
func (c *chaosClient) idIndex(i int) int {
	j := 0
	for _, n := range c.log[:i] {
		if n != chaosGapMark {
			j++
		}
	}
	return j
}

// disorderReport shows, for the diagnostics, where c's log first goes
// wrong (a duplicate, or a message older than one received before it):
// the frames around it, when and on which connection each came, and those
// connections (with, polling, their polls). "" when nothing is wrong.
// Under c.mu.
func (c *chaosClient) disorderReport(want []int) string {
	pos := make(map[int]int, len(want))
	for i, n := range want {
		pos[n] = i
	}
	seen := map[int]bool{}
	bad, last := -1, -1
	for i, n := range c.log {
		if n == chaosGapMark {
			continue
		}
		p, ok := pos[n]
		if !ok || seen[n] || p < last {
			bad = i
			break
		}
		seen[n], last = true, p
	}
	if bad < 0 {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s (%s, sid %s): first wrong frame, n=%d, at log index %d:", c.key, c.transport, c.sid, c.log[bad], bad)
	conns := map[int]bool{}
	for i := max(0, bad-12); i < min(len(c.log), bad+6); i++ {
		what := fmt.Sprintf("n=%d id %s", c.log[i], c.ids[c.idIndex(i)])
		if c.log[i] == chaosGapMark {
			what = "gap"
		}
		mark := "  "
		if i == bad {
			mark = "=>"
		}
		fmt.Fprintf(&b, "\n  %s %s at +%v on #%d", mark, what, chaosRound(c.recvAt[i]), c.recvConn[i])
		conns[c.recvConn[i]] = true
	}
	name := func(id string) string { return strconv.Quote(id) }
	for k := range c.conns {
		if !conns[k] {
			continue
		}
		cn := c.conns[k]
		fmt.Fprintf(&b, "\n  #%d %s", k, cn.format(name))
		for _, p := range cn.polls {
			fmt.Fprintf(&b, "\n      poll +%v since=%s → %s (%v)", chaosRound(p.at), name(p.since), p.answer, chaosRound(p.took))
		}
	}
	return b.String()
}
