package client

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"
)

// DefaultTokenRefresh is how often a TokenFile re-reads its file in the
// background when the token's exp claim asks for nothing sooner.
const DefaultTokenRefresh = 5 * time.Minute

// minTokenRefresh bounds how often the background re-read runs, however
// close the token is to its expiry.
const minTokenRefresh = time.Second

// TokenFile is a bearer token kept in a file that another party rotates:
// on Kubernetes, the projected service-account token kubelet rewrites
// before it expires (at 80% of its lifetime). Token re-reads the file on
// every call, which Options.TokenSource makes every SVID request; Run also
// re-reads it on a timer, so the copy kept for a failed read stays fresh
// and a rotation is logged when it happens. It is safe for concurrent use.
type TokenFile struct {
	path    string
	refresh time.Duration
	log     *slog.Logger
	now     func() time.Time

	mu    sync.Mutex
	token string
	exp   time.Time // the token's exp claim; zero when it has none
}

// NewTokenFile reads path once (an error names it when it is missing or
// empty) and returns the TokenFile; refresh is Run's period,
// DefaultTokenRefresh when zero or negative; logger nil discards.
func NewTokenFile(path string, refresh time.Duration, logger *slog.Logger) (*TokenFile, error) {
	if refresh <= 0 {
		refresh = DefaultTokenRefresh
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	f := &TokenFile{path: path, refresh: refresh, log: logger, now: time.Now}
	if _, err := f.Token(); err != nil {
		return nil, err
	}
	return f, nil
}

// Token reads the file and returns its token (surrounding white space
// removed). When the file cannot be read or is empty, it returns the last
// token read while that token's exp claim has not passed (kubelet replaces
// the file atomically, so this covers only an outage of the volume), and
// the read error otherwise.
func (f *TokenFile) Token() (string, error) {
	tok, err := f.read()
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil {
		if f.token != "" && (f.exp.IsZero() || f.now().Before(f.exp)) {
			f.log.Warn("token file unreadable; using the last token read", "path", f.path, "err", err, "expires", f.exp)
			return f.token, nil
		}
		return "", err
	}
	if tok != f.token {
		exp := tokenExpiry(tok)
		if f.token != "" {
			f.log.Info("token file rotated", "path", f.path, "expires", exp)
		}
		f.token, f.exp = tok, exp
	}
	return tok, nil
}

// Current returns the last token read and its exp claim (zero when it has
// none) without reading the file.
func (f *TokenFile) Current() (string, time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.token, f.exp
}

func (f *TokenFile) read() (string, error) {
	data, err := os.ReadFile(f.path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return "", fmt.Errorf("token file %s: empty", f.path)
	}
	return tok, nil
}

// Run re-reads the file until ctx ends: every refresh period, or sooner,
// halfway to the current token's expiry (kubelet has rotated the file by
// 80% of the token's lifetime, so a read at that point sees the successor
// well before the old token expires). It returns ctx's error.
func (f *TokenFile) Run(ctx context.Context) error {
	for {
		wait := f.refresh
		if _, exp := f.Current(); !exp.IsZero() {
			wait = min(wait, max(exp.Sub(f.now())/2, minTokenRefresh))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		if _, err := f.Token(); err != nil {
			f.log.Warn("token file not re-read", "path", f.path, "err", err)
		}
	}
}

// tokenExpiry returns the exp claim of a JWT (a service-account token),
// zero for a token that is not a JWT or has no exp. The signature is not
// checked: the control plane's TokenReview does that; the claim only
// schedules the next read.
func tokenExpiry(tok string) time.Time {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return time.Time{}
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}
	}
	var claims struct {
		Exp json.Number `json:"exp"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		return time.Time{}
	}
	sec, err := claims.Exp.Int64()
	if err != nil || sec <= 0 {
		return time.Time{}
	}
	return time.Unix(sec, 0)
}

// errNoToken is returned by a TokenSource that yields an empty token.
var errNoToken = errors.New("token source returned an empty token")
