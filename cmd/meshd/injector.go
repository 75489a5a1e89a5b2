//go:build !meshd_sidecar

package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"meshd.dev/meshd/kube/inject"
)

// injectorStopTimeout bounds the graceful stop of the webhook server.
const injectorStopTimeout = 5 * time.Second

func runInjector(args []string, _, stderr io.Writer) int {
	fs := flag.NewFlagSet("injector", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "0.0.0.0:9443", "HTTPS address of the webhook (POST /inject, GET /healthz)")
	certFile := fs.String("tls-cert", "", "serving certificate PEM (its CA is the webhook's caBundle)")
	keyFile := fs.String("tls-key", "", "private key PEM of --tls-cert")
	addrPath := fs.String("address-path", "", "write the bound address to this file")
	level := fs.String("log-level", "info", "log level: debug, info, warn, error")
	config := injectFlags(fs)
	if code, done := parseFlags(fs, args, 2); done {
		return code
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "meshd injector: unexpected arguments %q\n", fs.Args())
		return 2
	}
	logger, err := newLogger(stderr, *level)
	if err != nil {
		fmt.Fprintf(stderr, "meshd injector: %v\n", err)
		return 2
	}
	if *certFile == "" || *keyFile == "" {
		fmt.Fprintln(stderr, "meshd injector: --tls-cert and --tls-key are required (the API server calls webhooks over HTTPS only)")
		return 2
	}
	cfg, err := config()
	if err != nil {
		fmt.Fprintf(stderr, "meshd injector: %v\n", err)
		return 2
	}
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		fmt.Fprintf(stderr, "meshd injector: --tls-cert/--tls-key: %v\n", err)
		return 1
	}
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(stderr, "meshd injector: --listen: %v\n", err)
		return 1
	}
	if *addrPath != "" {
		if err := writeAddressFile(*addrPath, lis.Addr().String()); err != nil {
			_ = lis.Close()
			fmt.Fprintf(stderr, "meshd injector: %v\n", err)
			return 1
		}
	}
	mux := http.NewServeMux()
	mux.Handle("/inject", &inject.Webhook{Config: cfg, Logger: logger})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
	}
	errs := make(chan error, 1)
	go func() {
		if err := srv.ServeTLS(lis, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errs <- err
		}
		close(errs)
	}()
	logger.Info("injector serving", "address", lis.Addr().String(), "image", cfg.Image, "xds", cfg.XDSAddress)
	code := awaitStop(logger, errs)
	ctx, cancel := context.WithTimeout(context.Background(), injectorStopTimeout)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		_ = srv.Close()
	}
	<-errs
	return code
}
