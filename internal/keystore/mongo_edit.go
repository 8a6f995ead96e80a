package keystore

import (
	"context"
	"fmt"
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

var _ Editor = (*Mongo)(nil)

// Add implements Editor: it inserts {<field>: key} unless a document
// already holds key. With the default field, _id, MongoDB's unique index
// also settles a race between two adds.
func (m *Mongo) Add(ctx context.Context, key string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	known, err := m.Contains(ctx, key)
	if err != nil || known {
		return false, err
	}
	_, err = m.coll.InsertOne(ctx, bson.D{{Key: m.field, Value: key}})
	switch {
	case err == nil:
		return true, nil
	case mongo.IsDuplicateKeyError(err):
		return false, nil
	default:
		return false, fmt.Errorf("%w: adding key to MongoDB: %w", ErrUnavailable, err)
	}
}

// Remove implements Editor: every document holding key goes.
func (m *Mongo) Remove(ctx context.Context, key string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	res, err := m.coll.DeleteMany(ctx, bson.D{{Key: m.field, Value: key}})
	if err != nil {
		return false, fmt.Errorf("%w: removing key from MongoDB: %w", ErrUnavailable, err)
	}
	return res.DeletedCount > 0, nil
}

// List implements Editor: the string values of the key field, sorted, each
// once; documents without one (or with another type) are skipped, as the
// gateway's lookups never match them.
func (m *Mongo) List(ctx context.Context) ([]string, error) {
	cur, err := m.coll.Find(ctx, bson.D{{Key: m.field, Value: bson.D{{Key: "$type", Value: "string"}}}},
		options.Find().SetProjection(bson.D{{Key: m.field, Value: 1}}).SetSort(bson.D{{Key: m.field, Value: 1}}))
	if err != nil {
		return nil, fmt.Errorf("%w: listing keys in MongoDB: %w", ErrUnavailable, err)
	}
	defer cur.Close(ctx)
	var keys []string
	for cur.Next(ctx) {
		k, ok := cur.Current.Lookup(strings.Split(m.field, ".")...).StringValueOK()
		if ok && (len(keys) == 0 || keys[len(keys)-1] != k) {
			keys = append(keys, k)
		}
	}
	if err := cur.Err(); err != nil {
		return nil, fmt.Errorf("%w: listing keys in MongoDB: %w", ErrUnavailable, err)
	}
	return keys, nil
}
