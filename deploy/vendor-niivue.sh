#!/usr/bin/env bash
# Refresh the vendored NiiVue viewer (service/web/vendor/niivue/) from the npm registry.
#   deploy/vendor-niivue.sh            # the pinned version below
#   NIIVUE_VERSION=0.70.0 deploy/vendor-niivue.sh
# Copies the self-contained UMD bundle (dist/niivue.umd.js: no imports, no network use), writes
# VERSION (version, the tarball's sha512 integrity as npm checked it, the bundle's sha256, date) and
# the BSD-2-Clause licence (LICENSE.txt) beside it.
# Needs npm (Node 20); the page itself never loads anything from outside the service.
set -euo pipefail
VERSION="${NIIVUE_VERSION:-0.69.0}"
REPO_ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$REPO_ROOT/service/web/vendor/niivue"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

cd "$WORK"
npm pack --silent "@niivue/niivue@$VERSION" >/dev/null
INTEGRITY="$(npm view "@niivue/niivue@$VERSION" dist.integrity)"
LICENSE_NAME="$(npm view "@niivue/niivue@$VERSION" license)"
tar xzf "niivue-niivue-$VERSION.tgz"
test -s package/dist/niivue.umd.js || { echo "no dist/niivue.umd.js in @niivue/niivue@$VERSION" >&2; exit 1; }

mkdir -p "$DEST"
cp package/dist/niivue.umd.js "$DEST/niivue.umd.js"
# The npm tarball carries no licence file; this is the text of the project's LICENSE (niivue/niivue).
cat > "$DEST/LICENSE.txt" <<'LICENSE'
BSD 2-Clause License

Copyright (c) 2021, Niivue
All rights reserved.

Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this
   list of conditions and the following disclaimer.

2. Redistributions in binary form must reproduce the above copyright notice,
   this list of conditions and the following disclaimer in the documentation
   and/or other materials provided with the distribution.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE
FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY,
OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
LICENSE
cat > "$DEST/VERSION" <<NOTE
package: @niivue/niivue
version: $VERSION
license: $LICENSE_NAME
file: dist/niivue.umd.js -> niivue.umd.js
integrity: $INTEGRITY
sha256: $(sha256sum "$DEST/niivue.umd.js" | cut -d' ' -f1)
refreshed: $(date -u +%Y-%m-%d) by deploy/vendor-niivue.sh
NOTE
echo "vendored @niivue/niivue@$VERSION into $DEST"
