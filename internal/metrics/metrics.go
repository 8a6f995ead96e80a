// Package metrics defines wspubsub's Prometheus metrics on a registry owned
// by one gateway instance (no global registry, so tests can run several
// gateways in one process). It must not hold any logic beyond counting.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/wspubsub/wspubsub/internal/envelope"
)

// Rejection reasons (connections refused before or right after the handshake).
const (
	RejectUnauthorized     = "unauthorized"
	RejectStoreUnavailable = "store_unavailable"
	RejectOrigin           = "origin"
	RejectLimit            = "limit"
	RejectBadRequest       = "bad_request"
	RejectSessionLimit     = "session_limit"       // --max-sessions-per-key or -per-addr
	RejectThrottled        = "throttled"           // too many failed key checks from the address
	RejectSocketLimit      = "socket_limit"        // accepted socket closed at once: too many open
	RejectInternal         = "internal_error"      // admission failed on a bug (a recovered panic)
	RejectHost             = "host"                // Host header not in --allowed-hosts (any request but /healthz)
	RejectHistory          = "history_unavailable" // a resuming client's history could not be read
	RejectDraining         = "draining"            // the gateway is draining (a deploy): refused with 1012
	RejectRouting          = "routing_unavailable" // the key's channel could not be subscribed to (--routing keys)
	// On a TLS port (--tls-cert): plain HTTP or other non-TLS bytes (HTTP
	// 400, closed), and TLS handshakes that failed or timed out.
	RejectNotTLS       = "not_tls"
	RejectTLSHandshake = "tls_handshake"
)

// Resume outcomes (wspubsub_resumes_total{outcome}).
const (
	ResumeFromNow  = "from_now" // since= empty: the client got its position
	ResumeComplete = "complete" // everything after the client's id was replayed
	ResumeGap      = "gap"      // the history no longer reached back: gap frame
	ResumeFailed   = "failed"   // the history could not be read: closed with 1013
	ResumeResync   = "resync"   // a live client caught up after the broker's subscription came back
)

// Publish outcomes (wspubsub_publishes_total{outcome}) of POST /publish.
const (
	PublishRecorded  = "recorded"  // in the history of every recipient, then published
	PublishDuplicate = "duplicate" // idempotency key seen: acknowledged, not published again
	PublishLive      = "live"      // published without history (history off, or a broadcast)
	PublishFailed    = "failed"    // the broker could not take it: 503
)

// Presence outcomes (wspubsub_presence_*_total{outcome}).
const (
	PresenceOK    = "ok"
	PresenceError = "error"
)

// Disconnect reasons (connections that were registered and then ended).
const (
	DiscClient      = "client"
	DiscIdle        = "idle"
	DiscTooSlow     = "too_slow"
	DiscRevoked     = "revoked"
	DiscShutdown    = "shutdown"
	DiscWriteError  = "write_error"
	DiscProtocol    = "protocol"
	DiscTooBig      = "too_big"
	DiscRateLimited = "rate_limited"
	DiscInternal    = "internal_error" // a bug: the connection's goroutine panicked
	DiscInvalidData = "invalid_data"   // client text that is not UTF-8
	DiscDrain       = "drain"          // closed with 1012 by a drain (a deploy)
)

// Metrics holds every collector; fields are safe for concurrent use.
type Metrics struct {
	Registry *prometheus.Registry

	Connections      *prometheus.GaugeVec
	Connects         *prometheus.CounterVec
	Rejections       *prometheus.CounterVec
	Disconnects      *prometheus.CounterVec
	MessagesIn       prometheus.Counter
	Deliveries       prometheus.Counter
	Drops            *prometheus.CounterVec
	BrokerReconnects prometheus.Counter
	BrokerReady      prometheus.Gauge
	EventsPublished  prometheus.Counter
	EventsDropped    prometheus.Counter
	Revocations      prometheus.Counter
	ClientMessages   *prometheus.CounterVec
	WriteStalls      prometheus.Counter
	Resumes          *prometheus.CounterVec
	Replayed         prometheus.Counter
	Publishes        *prometheus.CounterVec

	// SocketWrites and FramesWritten count the WebSocket writers' socket
	// writes (writev/write system calls) and the frames they carried:
	// their ratio is the frames per write, what coalescing achieves.
	SocketWrites  prometheus.Counter
	FramesWritten prometheus.Counter
	// WritePauses counts the writers' short pauses in a burst (input
	// outpacing the writes), each of which lets frames gather.
	WritePauses prometheus.Counter

	// Cluster presence (package presence): write pipelines by outcome,
	// keys waiting to be written, heartbeats by outcome, (re)registrations,
	// fields of dead nodes removed, and reads (/presence, /nodes) by outcome.
	PresenceFlushes    *prometheus.CounterVec
	PresencePending    prometheus.Gauge
	PresenceHeartbeats *prometheus.CounterVec
	PresenceResyncs    prometheus.Counter
	PresenceReaped     prometheus.Counter
	PresenceReads      *prometheus.CounterVec
	// Forwarded counts the plain PUBLISHes this node routed to the keys'
	// channels while it held the forwarding lease (--routing keys).
	Forwarded prometheus.Counter
	// ProbesLost counts subscription probes that did not come back: each
	// made its connection be dropped and subscribed again.
	ProbesLost prometheus.Counter
	// Stripped counts inbound messages delivered with a member removed
	// that their channel may not carry (envelope.StripReasons).
	Stripped *prometheus.CounterVec
}

// New creates the collectors and registers them (plus Go and process
// collectors) on a fresh registry.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Connections: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wspubsub_connections", Help: "Live authenticated connections.",
		}, []string{"transport"}),
		Connects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wspubsub_connects_total", Help: "Connections authenticated and registered.",
		}, []string{"transport"}),
		Rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wspubsub_rejections_total", Help: "Connection attempts refused, by reason.",
		}, []string{"reason"}),
		Disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wspubsub_disconnects_total", Help: "Registered connections that ended, by reason.",
		}, []string{"reason"}),
		MessagesIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspubsub_messages_in_total", Help: "Messages received from the broker.",
		}),
		Deliveries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspubsub_deliveries_total", Help: "Messages queued to a connection.",
		}),
		Drops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wspubsub_drops_total", Help: "Inbound messages dropped, by reason.",
		}, []string{"reason"}),
		BrokerReconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspubsub_broker_reconnects_total", Help: "Times the broker subscription was lost and retried.",
		}),
		BrokerReady: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wspubsub_broker_ready", Help: "1 when the broker subscription is live.",
		}),
		EventsPublished: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspubsub_events_published_total", Help: "connected/disconnected events published.",
		}),
		EventsDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspubsub_events_dropped_total", Help: "connected/disconnected events dropped (queue full or broker down at shutdown).",
		}),
		Revocations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspubsub_revocations_total", Help: "Connections closed because their key was removed.",
		}),
		WriteStalls: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspubsub_write_stalls_total", Help: "Socket writes that could not finish at once and moved to a connection's slow lane.",
		}),
		ClientMessages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wspubsub_client_messages_total", Help: "Text messages received from clients, by kind.",
		}, []string{"kind"}),
	}
	m.Resumes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wspubsub_resumes_total", Help: "History reads for resuming clients, by outcome.",
	}, []string{"outcome"})
	m.Replayed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "wspubsub_replayed_total", Help: "Messages read from history and queued to resuming clients (before duplicate filtering).",
	})
	m.Publishes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wspubsub_publishes_total", Help: "POST /publish requests, by outcome.",
	}, []string{"outcome"})
	m.SocketWrites = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "wspubsub_socket_writes_total", Help: "WebSocket socket writes (writev/write system calls) made by the writers.",
	})
	m.FramesWritten = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "wspubsub_frames_written_total", Help: "WebSocket frames handed to socket writes; divided by wspubsub_socket_writes_total: frames per write.",
	})
	m.WritePauses = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "wspubsub_write_pauses_total", Help: "Pauses of a WebSocket writer while its backlog grew (a burst): connections gather frames meanwhile.",
	})
	m.Forwarded = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "wspubsub_forwarded_total", Help: "Plain PUBLISHes on --channel routed to the keys' channels by this node (it held the forwarding lease; --routing keys).",
	})
	m.PresenceFlushes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wspubsub_presence_flushes_total", Help: "Presence write pipelines sent to Redis, by outcome (ok, error).",
	}, []string{"outcome"})
	m.PresencePending = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "wspubsub_presence_pending", Help: "Keys whose presence changed and is not yet written to Redis.",
	})
	m.PresenceHeartbeats = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wspubsub_presence_heartbeats_total", Help: "Node registry heartbeats, by outcome (ok, error).",
	}, []string{"outcome"})
	m.PresenceResyncs = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "wspubsub_presence_registrations_total", Help: "Times this node registered with a new epoch and rewrote its presence (start, Redis lost its record, or a long stall).",
	})
	m.PresenceReaped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "wspubsub_presence_reaped_total", Help: "Keys of dead nodes whose presence fields this node removed.",
	})
	m.PresenceReads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wspubsub_presence_reads_total", Help: "GET/POST /presence and GET /nodes requests, by outcome (ok, error: 503).",
	}, []string{"outcome"})
	m.Registry.MustRegister(m.PresenceFlushes, m.PresencePending, m.PresenceHeartbeats, m.PresenceResyncs, m.PresenceReaped, m.PresenceReads)
	for _, o := range []string{PresenceOK, PresenceError} {
		m.PresenceFlushes.WithLabelValues(o)
		m.PresenceHeartbeats.WithLabelValues(o)
		m.PresenceReads.WithLabelValues(o)
	}
	m.Stripped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wspubsub_stripped_total", Help: `Inbound messages delivered with a member removed, by reason (untrusted_ids: a "wspubsub_ids" member on a plain PUBLISH; only the history functions write ids).`,
	}, []string{"reason"})
	m.Registry.MustRegister(m.Stripped)
	for _, r := range envelope.StripReasons {
		m.Stripped.WithLabelValues(r)
	}
	m.ProbesLost = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "wspubsub_subscription_probes_lost_total", Help: "Subscription probes that did not come back within the probe interval; each rebuilt its subscription (--routing keys).",
	})
	m.Registry.MustRegister(m.Resumes, m.Replayed, m.Publishes, m.SocketWrites, m.FramesWritten, m.WritePauses, m.Forwarded, m.ProbesLost)
	for _, o := range []string{ResumeFromNow, ResumeComplete, ResumeGap, ResumeFailed, ResumeResync} {
		m.Resumes.WithLabelValues(o)
	}
	for _, o := range []string{PublishRecorded, PublishDuplicate, PublishLive, PublishFailed} {
		m.Publishes.WithLabelValues(o)
	}
	m.Registry.MustRegister(m.Connections, m.Connects, m.Rejections, m.Disconnects,
		m.MessagesIn, m.Deliveries, m.Drops, m.BrokerReconnects, m.BrokerReady,
		m.EventsPublished, m.EventsDropped, m.Revocations, m.ClientMessages, m.WriteStalls,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Pre-declare label values so dashboards see zeros rather than gaps.
	for _, r := range envelope.Reasons {
		m.Drops.WithLabelValues(r)
	}
	for _, r := range []string{RejectUnauthorized, RejectStoreUnavailable, RejectOrigin, RejectLimit, RejectBadRequest,
		RejectSessionLimit, RejectThrottled, RejectSocketLimit, RejectInternal, RejectHost, RejectHistory, RejectRouting} {
		m.Rejections.WithLabelValues(r)
	}
	// The drain's labels (a deploy), declared apart from the lists above.
	m.Rejections.WithLabelValues(RejectDraining)
	m.Disconnects.WithLabelValues(DiscDrain)
	for _, r := range []string{DiscClient, DiscIdle, DiscTooSlow, DiscRevoked, DiscShutdown, DiscWriteError, DiscProtocol, DiscTooBig, DiscRateLimited, DiscInternal, DiscInvalidData} {
		m.Disconnects.WithLabelValues(r)
	}
	return m
}
