//go:build !meshd_sidecar

package main

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"sync"

	"meshd.dev/meshd/ca"
)

// CARotatePath is the control plane's admin endpoint for rotating the
// built-in CA's root without a failed handshake. POST it three times,
// waiting at least one --svid-ttl between steps so every sidecar has
// renewed (sidecars renew at half-life and receive the bundle with each
// SVID):
//
//	POST /ca/rotate?step=trust   generate a new root and add it to the
//	                             bundle; the old root still issues
//	POST /ca/rotate?step=issue   issue from the new root (persisted to
//	                             --ca-dir when the root was generated there)
//	POST /ca/rotate?step=retire  remove every other root from the bundle
//
// Each answers 200 with the rotation state as JSON, 409 when the step is
// out of order, 400 for an unknown step, 405 for another method.
const CARotatePath = "/ca/rotate"

// caRotation serves CARotatePath for one CA. Safe for concurrent use.
type caRotation struct {
	ca  *ca.CA
	dir string // --ca-dir to persist the new root to; "" with --ca-cert
	log *slog.Logger

	mu      sync.Mutex
	pending *ca.Authority // set by trust, cleared by retire
	issuing bool          // issue done for pending
}

// rotationState is the JSON answer of CARotatePath.
type rotationState struct {
	Step    string   `json:"step"`
	Roots   []string `json:"roots"`   // subject and serial of every trusted root, oldest first
	Issuing string   `json:"issuing"` // the root that signs new SVIDs
}

func (r *caRotation) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	step := req.URL.Query().Get("step")
	r.mu.Lock()
	defer r.mu.Unlock()
	var err error
	code := http.StatusConflict
	switch step {
	case "trust":
		if r.pending != nil {
			err = fmt.Errorf("a rotation is in progress (issue or retire it first)")
			break
		}
		var a *ca.Authority
		if a, err = ca.GenerateRoot(r.ca.TrustDomain()); err != nil {
			code = http.StatusInternalServerError
			break
		}
		if err = r.ca.AddRoot(a.Root); err != nil {
			code = http.StatusInternalServerError
			break
		}
		r.pending, r.issuing = a, false
	case "issue":
		if r.pending == nil || r.issuing {
			err = fmt.Errorf("step issue needs a preceding step trust")
			break
		}
		if r.dir != "" {
			if err = ca.SaveRoot(r.dir, r.pending); err != nil {
				code = http.StatusInternalServerError
				break
			}
		}
		if err = r.ca.AddAuthority(r.pending); err != nil {
			code = http.StatusInternalServerError
			break
		}
		r.issuing = true
	case "retire":
		if r.pending == nil || !r.issuing {
			err = fmt.Errorf("step retire needs a preceding step issue")
			break
		}
		for _, root := range r.ca.Bundle() {
			if root.Equal(r.pending.Root) {
				continue
			}
			if err = r.ca.RemoveRoot(root); err != nil {
				code = http.StatusInternalServerError
				break
			}
		}
		r.pending = nil
	default:
		err, code = fmt.Errorf("step %q: want trust, issue or retire", step), http.StatusBadRequest
	}
	if err != nil {
		r.log.Warn("CA root rotation refused", "step", step, "err", err)
		http.Error(w, "ca rotate: "+err.Error(), code)
		return
	}
	st := rotationState{Step: step}
	for _, root := range r.ca.Bundle() {
		st.Roots = append(st.Roots, rootName(root))
	}
	st.Issuing = st.Roots[len(st.Roots)-1]
	if r.pending != nil && !r.issuing {
		st.Issuing = st.Roots[len(st.Roots)-2]
	}
	r.log.Info("CA root rotation", "step", step, "roots", st.Roots, "issuing", st.Issuing)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(st)
}

func rootName(c *x509.Certificate) string {
	return fmt.Sprintf("%s serial %s", c.Subject.CommonName, c.SerialNumber.Text(16))
}
