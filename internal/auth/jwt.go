package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wspubsub/wspubsub/internal/keystore"
)

// MinHMACKeyBytes is the shortest HS256 secret accepted: RFC 7518 §3.2
// asks for a key at least as long as the hash.
const MinHMACKeyBytes = 32

// JWTConfig configures a JWT authenticator.
type JWTConfig struct {
	// Key is the verification key, as --jwt-key takes it (see ParseKey).
	Key string
	// Audience and Issuer, when not empty, must be the token's aud
	// (one of them) and iss.
	Audience string
	Issuer   string
}

// JWT verifies tokens against one key. A token's sub is the routing key;
// exp is required and becomes the identity's expiry; the algorithm is
// pinned to the key's type (no "none", no HS/RS confusion).
type JWT struct {
	key    any
	parser *jwt.Parser
}

// NewJWT builds a verifier from cfg.
func NewJWT(cfg JWTConfig) (*JWT, error) {
	key, algs, err := ParseKey(cfg.Key)
	if err != nil {
		return nil, err
	}
	return &JWT{key: key, parser: newParser(algs, cfg.Audience, cfg.Issuer)}, nil
}

// newParser checks the signature with algs only, requires exp, and aud
// and iss when set.
func newParser(algs []string, aud, iss string) *jwt.Parser {
	opts := []jwt.ParserOption{jwt.WithValidMethods(algs), jwt.WithExpirationRequired()}
	if aud != "" {
		opts = append(opts, jwt.WithAudience(aud))
	}
	if iss != "" {
		opts = append(opts, jwt.WithIssuer(iss))
	}
	return jwt.NewParser(opts...)
}

// Authenticate implements keystore.Authenticator.
func (j *JWT) Authenticate(_ context.Context, c keystore.Credential) (keystore.Identity, error) {
	return verify(j.parser, c.Secret, func(*jwt.Token) (any, error) { return j.key, nil })
}

// Ping implements keystore.Authenticator: a static key is always there.
func (j *JWT) Ping(context.Context) error { return nil }

// Close implements keystore.Authenticator.
func (j *JWT) Close(context.Context) error { return nil }

// verify parses and checks token; every failure wraps
// keystore.ErrUnauthorized, with the library's reason (never the token).
func verify(p *jwt.Parser, token string, kf jwt.Keyfunc) (keystore.Identity, error) {
	var claims jwt.RegisteredClaims
	if _, err := p.ParseWithClaims(token, &claims, kf); err != nil {
		return keystore.Identity{}, fmt.Errorf("%w: token: %w", keystore.ErrUnauthorized, err)
	}
	if claims.Subject == "" {
		return keystore.Identity{}, fmt.Errorf("%w: token has no sub", keystore.ErrUnauthorized)
	}
	if claims.ExpiresAt.Unix() > MaxExpirySeconds {
		// Milliseconds where seconds belong: a token that never expires.
		return keystore.Identity{}, fmt.Errorf("%w: token exp is past the year 9999 (Unix milliseconds instead of seconds?)", keystore.ErrUnauthorized)
	}
	return keystore.Identity{Key: claims.Subject, Expires: claims.ExpiresAt.Time}, nil
}

// ParseKey reads --jwt-key: "file:<path>" reads the file, else the value
// itself is used. A PEM public key (PKIX "PUBLIC KEY", PKCS#1 "RSA PUBLIC
// KEY", or a certificate) verifies RS256/384/512 and PS256/384/512 (RSA),
// ES256/384/512 (by the curve) or EdDSA (Ed25519); anything else is an
// HMAC secret of at least MinHMACKeyBytes bytes (HS256/384/512; surrounding
// whitespace of a file is trimmed). It returns the key and the algorithms
// it may verify.
func ParseKey(v string) (key any, algs []string, err error) {
	raw := []byte(v)
	if path, ok := strings.CutPrefix(v, "file:"); ok {
		if raw, err = os.ReadFile(path); err != nil {
			return nil, nil, fmt.Errorf("--jwt-key: reading the key file: %w", err)
		}
	}
	if block, _ := pem.Decode(raw); block != nil {
		return publicKey(block)
	}
	text := strings.TrimSpace(string(raw))
	// A public key's text must never become an HMAC secret: the key is
	// public, so anyone could sign. PEM that pem.Decode does not take
	// (literal \n from an env file, one line) and bare base64 DER (what
	// identity providers display) are read as the key they are, or refused.
	if strings.Contains(text, "-----BEGIN") {
		if block := looseBlock(text); block != nil {
			return publicKey(block)
		}
		return nil, nil, errors.New("--jwt-key: looks like a PEM block but does not parse (line breaks lost?); give it as file:<path> of the PEM file")
	}
	if der, err := base64.StdEncoding.DecodeString(text); err == nil {
		if key, ok := derPublicKey(der); ok {
			algs, err := algorithmsOf(key)
			return key, algs, err
		}
	}
	secret := []byte(text)
	if len(secret) < MinHMACKeyBytes {
		return nil, nil, fmt.Errorf("--jwt-key: an HS256 secret must be at least %d bytes (got %d); or give a PEM public key (file:<path>)", MinHMACKeyBytes, len(secret))
	}
	return secret, []string{"HS256", "HS384", "HS512"}, nil
}

func publicKey(block *pem.Block) (any, []string, error) {
	var (
		key any
		err error
	)
	switch block.Type {
	case "PUBLIC KEY":
		key, err = x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		key, err = x509.ParsePKCS1PublicKey(block.Bytes)
	case "CERTIFICATE":
		var cert *x509.Certificate
		if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
			key = cert.PublicKey
		}
	default:
		return nil, nil, fmt.Errorf("--jwt-key: a PEM %q block is not a public key (want PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE; never give the gateway a private key)", block.Type)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("--jwt-key: parsing the PEM public key: %w", err)
	}
	algs, err := algorithmsOf(key)
	return key, algs, err
}

// looseBlock reads a PEM block whose line breaks were lost or written as
// a literal \n: the type from its BEGIN line, the body base64 without
// whitespace.
func looseBlock(text string) *pem.Block {
	text = strings.ReplaceAll(text, `\n`, "\n")
	if block, _ := pem.Decode([]byte(text)); block != nil {
		return block
	}
	rest, ok := strings.CutPrefix(text, "-----BEGIN ")
	if !ok {
		return nil
	}
	typ, rest, ok := strings.Cut(rest, "-----")
	if !ok {
		return nil
	}
	body, _, ok := strings.Cut(rest, "-----END ")
	if !ok {
		return nil
	}
	der, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(body), ""))
	if err != nil {
		return nil
	}
	return &pem.Block{Type: typ, Bytes: der}
}

// derPublicKey parses der as a PKIX or PKCS#1 public key or a certificate.
func derPublicKey(der []byte) (any, bool) {
	if key, err := x509.ParsePKIXPublicKey(der); err == nil {
		return key, true
	}
	if key, err := x509.ParsePKCS1PublicKey(der); err == nil {
		return key, true
	}
	if cert, err := x509.ParseCertificate(der); err == nil {
		return cert.PublicKey, true
	}
	return nil, false
}

// algorithmsOf pins the algorithms to the key's type.
func algorithmsOf(key any) ([]string, error) {
	switch k := key.(type) {
	case *rsa.PublicKey:
		return []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}, nil
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return []string{"ES256"}, nil
		case elliptic.P384():
			return []string{"ES384"}, nil
		case elliptic.P521():
			return []string{"ES512"}, nil
		}
		return nil, errors.New("--jwt-key: unsupported elliptic curve (want P-256, P-384 or P-521)")
	case ed25519.PublicKey:
		return []string{"EdDSA"}, nil
	}
	return nil, fmt.Errorf("--jwt-key: unsupported public key type %T", key)
}

// asymmetric are the algorithms a JWKS key may verify: never HS (a JWKS is
// public; a secret in it would let anyone sign).
var asymmetric = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
