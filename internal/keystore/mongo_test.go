package keystore

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/wspubsub/wspubsub/internal/testenv"
)

func TestMongoStore(t *testing.T) {
	srv := testenv.Mongo(t)
	ctx := context.Background()
	mc, err := mongo.Connect(options.Client().ApplyURI(srv.URL()))
	if err != nil {
		t.Fatal(err)
	}
	defer mc.Disconnect(ctx)
	coll := mc.Database("myDB").Collection("myCollection")
	if _, err := coll.InsertMany(ctx, []any{bson.D{{Key: "_id", Value: "known"}}, bson.D{{Key: "_id", Value: "x"}, {Key: "token", Value: "tok-1"}}}); err != nil {
		t.Fatal(err)
	}
	// Lookups that must be answered have a minute; a short timeout only
	// where the server is down (a lookup then waits out its timeout).
	byID, err := NewMongo(MongoConfig{URI: srv.URL(), Database: "myDB", Collection: "myCollection", Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer byID.Close(ctx)
	byField, _ := NewMongo(MongoConfig{URI: srv.URL(), Database: "myDB", Collection: "myCollection", Field: "token", Timeout: time.Minute})
	defer byField.Close(ctx)
	short, _ := NewMongo(MongoConfig{URI: srv.URL(), Database: "myDB", Collection: "myCollection", Timeout: 500 * time.Millisecond})
	defer short.Close(ctx)

	for _, c := range []struct {
		s    *Mongo
		key  string
		want bool
	}{{byID, "known", true}, {byID, "unknown", false}, {byField, "tok-1", true}, {byField, "known", false}} {
		got, err := c.s.Contains(ctx, c.key)
		if err != nil || got != c.want {
			t.Errorf("%s: %v %v", c.key, got, err)
		}
	}
	if err := byID.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	start := time.Now()
	if _, err := short.Contains(ctx, "known"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("store down: %v", err)
	}
	// The lookup is bounded by its timeout, not the driver's own 30 s
	// server selection: how long past the 500 ms is the machine's, so only
	// a bound the driver's default would exceed is asserted.
	took := time.Since(start)
	t.Logf("lookup with the store down took %v (timeout 500ms)", took)
	if took > 20*time.Second {
		t.Fatalf("lookup took %v with a 500ms timeout", took)
	}
	if err := short.Ping(ctx); err == nil {
		t.Fatal("ping succeeded with the server down")
	}
	srv.Start()
	deadline := time.Now().Add(time.Minute)
	for {
		if ok, err := byID.Contains(ctx, "known"); err == nil && ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no recovery after restart")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
