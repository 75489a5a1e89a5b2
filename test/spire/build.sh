#!/usr/bin/env bash
# Builds the SPIRE server and agent used by test/e2e/spire_test.go
# (MESHD_SPIRE=1) into a cache directory outside the repository:
#
#   ${MESHD_SPIRE_CACHE:-$HOME/.cache/meshd-spire}/bin/{spire-server,spire-agent}
#
# `go install github.com/spiffe/spire/...` does not work for SPIRE (its
# go.mod has replace directives), so the module source is fetched with
# `go mod download`, copied to a writable directory and built there with
# the module's own go.mod. A cold build takes ~10-16 min on 2 cores; the
# binaries are reused while the recorded version matches.
#
# Usage: test/spire/build.sh            (prints the bin directory)
set -euo pipefail

version="${MESHD_SPIRE_VERSION:-v1.13.3}"
cache="${MESHD_SPIRE_CACHE:-$HOME/.cache/meshd-spire}"
bin="$cache/bin"
src="$cache/src"
stamp="$bin/VERSION"

if [[ -x "$bin/spire-server" && -x "$bin/spire-agent" ]] &&
   { [[ ! -f "$stamp" ]] || [[ "$(cat "$stamp")" == "$version" ]]; }; then
	# Binaries built before the stamp existed are taken as $version.
	[[ -f "$stamp" ]] || echo "$version" >"$stamp"
	echo "$bin"
	exit 0
fi

mkdir -p "$cache" "$bin"
# The module cache copy is read-only; build in a writable copy.
dir="$(cd "$cache" && go mod download -json "github.com/spiffe/spire@$version" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
if [[ -z "$dir" || ! -d "$dir" ]]; then
	echo "build.sh: go mod download github.com/spiffe/spire@$version gave no module directory" >&2
	exit 1
fi
rm -rf "$src"
cp -r "$dir" "$src"
chmod -R u+w "$src"
(
	cd "$src"
	# Build each into a temporary name first so an interrupted build never
	# leaves a half-written binary behind.
	go build -o "$bin/spire-agent.tmp" ./cmd/spire-agent
	go build -o "$bin/spire-server.tmp" ./cmd/spire-server
) >&2
mv "$bin/spire-agent.tmp" "$bin/spire-agent"
mv "$bin/spire-server.tmp" "$bin/spire-server"
echo "$version" >"$stamp"
echo "$bin"
