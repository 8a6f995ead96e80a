package keystore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/readpref"
)

// MongoConfig says where keys live.
type MongoConfig struct {
	URI        string
	Database   string
	Collection string
	Field      string        // document field holding the key, "_id" by default
	Timeout    time.Duration // per lookup
}

// Mongo looks keys up in a MongoDB collection through one pooled client for
// the whole process (the original opened a connection per check).
type Mongo struct {
	client  *mongo.Client
	coll    *mongo.Collection
	field   string
	timeout time.Duration
}

// NewMongo creates the client. It does not wait for the server: a MongoDB
// that is down at start makes lookups fail (and readiness false) until it
// comes up.
func NewMongo(cfg MongoConfig) (*Mongo, error) {
	if cfg.Field == "" {
		cfg.Field = "_id"
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	opts := options.Client().ApplyURI(cfg.URI).
		SetServerSelectionTimeout(cfg.Timeout).
		SetConnectTimeout(cfg.Timeout).
		SetAppName("wspubsub")
	client, err := mongo.Connect(opts)
	if err != nil {
		return nil, fmt.Errorf("creating MongoDB client for %s: %w", redactURI(cfg.URI), err)
	}
	return &Mongo{
		client:  client,
		coll:    client.Database(cfg.Database).Collection(cfg.Collection),
		field:   cfg.Field,
		timeout: cfg.Timeout,
	}, nil
}

// Contains implements KeyStore.
func (m *Mongo) Contains(ctx context.Context, key string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	err := m.coll.FindOne(ctx, bson.D{{Key: m.field, Value: key}},
		options.FindOne().SetProjection(bson.D{{Key: "_id", Value: 1}})).Err()
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, mongo.ErrNoDocuments):
		return false, nil
	default:
		return false, fmt.Errorf("%w: looking up key in MongoDB: %w", ErrUnavailable, err)
	}
}

// Ping implements KeyStore.
func (m *Mongo) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	if err := m.client.Ping(ctx, readpref.Primary()); err != nil {
		return fmt.Errorf("%w: pinging MongoDB: %w", ErrUnavailable, err)
	}
	return nil
}

// Close implements KeyStore.
func (m *Mongo) Close(ctx context.Context) error { return m.client.Disconnect(ctx) }

// redactURI drops credentials from a connection string for logging.
func redactURI(uri string) string {
	scheme := strings.Index(uri, "://")
	at := strings.LastIndex(uri, "@")
	if scheme < 0 || at < scheme {
		return uri
	}
	return uri[:scheme+3] + "***@" + uri[at+1:]
}
