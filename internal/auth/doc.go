// Package auth holds the authenticators that are not key stores: JWT
// verification with a static key (--jwt-key) or a JWKS endpoint
// (--jwks-url), and the HTTP auth hook (--auth-url). Each implements
// keystore.Authenticator: it turns a client's credential into an identity
// (routing key, expiry).
//
// It must not know about sessions, transports or the hub, and must never
// log or forward a credential whole (keystore.Redact), except to the auth
// hook the operator configured, which is asked about it.
package auth
