// Package longpoll is the XHR long-polling transport, as bullet.js speaks
// it: a GET with header X-Socket-Transport: xhrPolling is held until a
// message is ready (the body is that one message) or the poll timeout
// passes (200 with an empty body). Clients send text by POST to the same URL
// (handled by the gateway).
//
// A polling client is one logical connection across its requests: it is
// admitted once (one connected event), its messages wait in its bounded
// queue between polls, and it ends (one disconnected event) when it has not
// polled for the idle timeout — or within seconds (UnpolledTimeout) when
// no poll of it was ever answered, so abandoned sessions do not pile up.
// Polls are matched to their connection by key and session.Peer.Client
// (the gateway derives it from a "sid" query parameter when the client
// sends one, as wspubsub.js does, else from the client address and
// User-Agent — so two tabs of one old bullet page in one browser share a
// connection). The package owns that matching and the HTTP answers;
// admission and limits are the hub's.
package longpoll

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wspubsub/wspubsub/internal/envelope"
	"github.com/wspubsub/wspubsub/internal/hub"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/session"
)

// Name is the transport's label in metrics, logs and events.
const Name = "polling"

// maxHeldPolls bounds the polls of one connection held at once.
const maxHeldPolls = 4

// Header is the request header bullet.js sets on polls.
const Header = "X-Socket-Transport"

// Config configures the transport; zero values take the defaults in brackets.
type Config struct {
	Hub         *hub.Hub
	Metrics     *metrics.Metrics
	Logger      *slog.Logger
	PollTimeout time.Duration // hold an empty poll this long [30s]
	IdleTimeout time.Duration // no poll for this long: gone [60s]
	// UnpolledTimeout ends a connection none of whose polls was ever
	// answered (the client went away during its first poll) this long
	// after that poll ended [5s].
	UnpolledTimeout time.Duration
	WriteTimeout    time.Duration // a poll's answer must be written within this [10s]
	QueueBytes      int           // per-connection outbound queue [1 MiB]
}

// Server tracks polling connections.
type Server struct {
	cfg Config
	mu  sync.Mutex
	by  map[string]*poller
}

// Wants reports whether r is a bullet-style poll.
func Wants(r *http.Request) bool {
	return r.Method == http.MethodGet && r.Header.Get(Header) == "xhrPolling"
}

// NewServer returns the transport; its sweeper (idle expiry) runs until ctx
// ends.
func NewServer(ctx context.Context, cfg Config) *Server {
	if cfg.PollTimeout <= 0 {
		cfg.PollTimeout = 30 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 60 * time.Second
	}
	if cfg.QueueBytes <= 0 {
		cfg.QueueBytes = 1 << 20
	}
	if cfg.UnpolledTimeout <= 0 {
		cfg.UnpolledTimeout = 5 * time.Second
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{cfg: cfg, by: map[string]*poller{}}
	go s.sweep(ctx)
	return s
}

// Open returns the number of polling connections.
func (s *Server) Open() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.by)
}

// poller is one logical polling connection; it implements session.Transport.
type poller struct {
	srv      *Server
	id       string
	sess     *session.Session
	ready    chan struct{} // closed once admission is decided
	admitErr error
	wake     chan struct{}
	active   atomic.Int32
	answered atomic.Bool // a poll of it was answered: the client is real
	lastSeen atomic.Int64
	closed   atomic.Pointer[closeInfo]
	idle     atomic.Bool

	// A resuming client names, on each poll, the id of the last message it
	// got: until a poll names the one answered last (or a later one), that
	// answer may have been lost on the way and is given again (see next).
	mu         sync.Mutex
	inflight   *session.Message // the last message answered (resuming clients)
	inflightID envelope.ID      // its id
	sentFor    string           // the since of the poll it answered
	// at is where this connection put the client: the id it was admitted
	// from, then each message with an id it answered. Its queue holds what
	// came after at, in order.
	at envelope.ID
}

// next returns the message to answer a poll with, or nil. For a resuming
// client (resuming), the message answered last stays in flight until a
// poll names it or a later id: a poll naming the same since as the poll
// it answered, or an earlier id than its own, did not get it, and is given
// it again. An earlier id, not only the same since: a poll the client gave
// up on can still be held here (or arrive late) when the client's next
// polls come, naming an older since than theirs — what it takes goes
// nowhere, and the client's own poll must get it. Otherwise the next
// queued message, skipping those not after the poll's since (after, when
// afterOK): the since, not what this connection gave before, says where
// the client is — its polls may have reached another gateway meanwhile (a
// load balancer without stickiness, or a reconnect), which gave it what
// this queue still holds. again: the client must resume anew (see below).
// Under p.mu, so that two polls held at once (one of them given up on by
// the client) cannot take two messages for one since: the second gets the
// first's again.
func (p *poller) next(resuming bool, since string, after envelope.ID, afterOK bool) (m *session.Message, again bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if resuming && p.inflight != nil {
		if since == p.sentFor || (afterOK && lacks(after, p.inflightID)) {
			return p.inflight, false
		}
		p.inflight = nil
	}
	for {
		m := p.sess.Pop()
		if m == nil {
			return nil, false
		}
		id, idOK := m.HistoryID()
		if afterOK && idOK && resuming && after.Epoch != "" && id.Epoch != after.Epoch && after != p.at {
			// The client got its id elsewhere (another gateway), from
			// another life of the key's history than this message's (Redis
			// lost it, or it expired): ids of two lives do not compare, so
			// whether it has this message is unknown — given, it could come
			// twice and out of order. It resumes anew, from the history.
			return nil, true
		}
		if afterOK && idOK && !id.After(after) {
			continue // the client has it
		}
		if idOK && p.sess.Resumes() {
			p.inflight, p.inflightID, p.sentFor, p.at = m, id, since, id
		}
		return m, false
	}
}

// lacks reports whether a client whose last id is since cannot have the
// message id: it comes later in the same life of the key's history, or
// since is "0" (before everything). Ids of two lives do not compare (see
// envelope.ID.After): the client is not known to lack it.
func lacks(since, id envelope.ID) bool {
	return (since.Epoch == "" || since.Epoch == id.Epoch) && id.After(since)
}

type closeInfo struct {
	code   int
	reason string
	at     time.Time
}

func (p *poller) signal() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Wake implements session.Transport.
func (p *poller) Wake() { p.signal() }

// KeepAlive implements session.Transport; idle expiry is the sweeper's.
func (p *poller) KeepAlive() {}

// Closed implements session.Transport: a waiting poll answers with the
// close; otherwise the next poll does (the entry stays as a tombstone).
func (p *poller) Closed(code int, reason string) {
	p.closed.Store(&closeInfo{code, reason, time.Now()})
	p.signal()
	why := metrics.DiscClient
	if p.idle.Load() {
		why = metrics.DiscIdle
	}
	go p.srv.cfg.Hub.Leave(p.sess, why) // Closed may run under hub locks
}

func identity(peer session.Peer) string { return peer.Key + "\x00" + peer.Client }

// attach finds the request's connection, admitting a new one if needed.
func (s *Server) attach(r *http.Request, peer session.Peer) (p *poller, err error) {
	id := identity(peer)
	s.mu.Lock()
	if p = s.by[id]; p != nil {
		s.mu.Unlock()
		<-p.ready
		return p, p.admitErr
	}
	p = &poller{srv: s, id: id, ready: make(chan struct{}), wake: make(chan struct{}, 1)}
	p.at, _ = envelope.ParseID(peer.Since)
	p.lastSeen.Store(time.Now().UnixNano())
	p.sess = session.New(s.cfg.Hub.NewID(), peer, Name, p, s.cfg.QueueBytes)
	s.by[id] = p
	s.mu.Unlock()
	defer close(p.ready)
	defer s.cfg.Hub.Recover(p.sess, func() { p.admitErr, err = errInternal, errInternal; s.forget(p) })
	if p.admitErr = s.cfg.Hub.Admit(r.Context(), p.sess); p.admitErr != nil {
		s.forget(p)
		// Closed, as the WebSocket transport does (see eventsource.Serve).
		p.sess.Close(hub.Verdict(p.admitErr))
	}
	return p, p.admitErr
}

var errInternal = &hub.ErrRejected{Code: session.CloseInternal, Reason: "internal error"}

func (s *Server) forget(p *poller) {
	s.mu.Lock()
	if s.by[p.id] == p {
		delete(s.by, p.id)
	}
	s.mu.Unlock()
}

// Serve answers one poll of peer.
func (s *Server) Serve(w http.ResponseWriter, r *http.Request, peer session.Peer) {
	rc := http.NewResponseController(w)
	// A held poll reads nothing; the server's read timeout (for bodies)
	// must not cut it. Its answer is bounded by the write timeout. A poll
	// that declares a body keeps the read timeout: net/http reads that
	// body before answering, and one never sent must not hold the socket.
	if r.Body == nil || r.Body == http.NoBody {
		_ = rc.SetReadDeadline(time.Time{})
	}
	_ = rc.SetWriteDeadline(time.Now().Add(s.cfg.PollTimeout + s.cfg.WriteTimeout))
	p, err := s.attach(r, peer)
	if err != nil {
		code, reason := hub.Verdict(err)
		WriteClose(w, code, reason)
		return
	}
	defer s.cfg.Hub.Recover(p.sess, func() { s.forget(p); WriteClose(w, session.CloseInternal, "internal error") })
	// A client polls once at a time (old pages: once per tab). More polls
	// held at once are an attack on the socket budget, not a client.
	if p.active.Add(1) > maxHeldPolls {
		p.active.Add(-1)
		WriteClose(w, session.CloseTooMany, "too many polls held at once")
		return
	}
	defer func() {
		p.lastSeen.Store(time.Now().UnixNano())
		p.active.Add(-1)
	}()
	w.Header().Set("Cache-Control", "no-store")
	resuming := p.sess.Resumes() && peer.Resume
	var after envelope.ID
	afterOK := false
	if resuming {
		after, afterOK = envelope.ParseID(peer.Since)
	}
	timer := time.NewTimer(s.cfg.PollTimeout)
	defer timer.Stop()
	for {
		m, again := p.next(resuming, peer.Since, after, afterOK)
		if again {
			p.sess.Close(session.CloseTryAgain, "resume again")
		}
		if m != nil {
			p.answered.Store(true)
			writeMessage(w, m)
			if p.active.Load() > 1 {
				// Another poll of this connection is held (the client's
				// own, when this one was given up on): the wake this one
				// took was for it too, and the queue stays armed until a
				// poll finds it empty.
				p.signal()
			}
			return
		}
		if c := p.closed.Load(); c != nil {
			s.forget(p)
			WriteClose(w, c.code, c.reason)
			return
		}
		select {
		case <-p.wake:
		case <-timer.C:
			p.answered.Store(true)
			// An empty answer is 200 with no body, never 204: jQuery 1.9
			// hands bullet `undefined` for a 204 and bullet throws.
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("Content-Length", "0")
			w.WriteHeader(http.StatusOK)
			return
		case <-r.Context().Done():
			return
		}
	}
}

func writeMessage(w http.ResponseWriter, m *session.Message) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(m.Payload)))
	_, _ = w.Write(m.Payload)
}

// WriteClose answers with the HTTP form of a close, on every HTTP
// transport: session.HTTPStatus(code) and the code and reason in
// X-Wspubsub-Close-Code / -Reason headers.
func WriteClose(w http.ResponseWriter, code int, reason string) {
	h := w.Header()
	h.Set("X-Wspubsub-Close-Code", strconv.Itoa(code))
	h.Set("X-Wspubsub-Close-Reason", reason)
	if code == session.CloseTryAgain || code == session.CloseGoingAway || code == session.CloseServiceRestart {
		h.Set("Retry-After", "5")
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(session.HTTPStatus(code))
	_, _ = w.Write([]byte(reason))
}

// sweep ends connections that stopped polling, or never had a poll
// answered, and drops old tombstones.
func (s *Server) sweep(ctx context.Context) {
	t := time.NewTicker(min(s.cfg.IdleTimeout/4, s.cfg.UnpolledTimeout/2, time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, p := range s.expired(time.Now()) {
			p.idle.Store(true)
			p.sess.Close(session.CloseNormal, "idle")
		}
	}
}

// expired removes and returns the connections whose time is up at now.
func (s *Server) expired(now time.Time) []*poller {
	var out []*poller
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, p := range s.by {
		select {
		case <-p.ready:
		default:
			continue
		}
		if c := p.closed.Load(); c != nil {
			if now.Sub(c.at) > 2*s.cfg.PollTimeout {
				delete(s.by, id)
			}
			continue
		}
		limit := s.cfg.IdleTimeout
		if !p.answered.Load() {
			limit = s.cfg.UnpolledTimeout
		}
		if p.active.Load() == 0 && now.Sub(time.Unix(0, p.lastSeen.Load())) > limit {
			delete(s.by, id)
			out = append(out, p)
		}
	}
	return out
}
