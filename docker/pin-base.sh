#!/usr/bin/env bash
# Resolve the Dockerfile's base tag to its digest and write `FROM image:tag@sha256:…` back (make pin-base).
# Needs registry access and one of: docker buildx (imagetools) or crane. A digest is written only when resolved.
set -euo pipefail
cd "$(dirname "$0")/.."
dockerfile=${DOCKERFILE:-Dockerfile}
docker=${DOCKER:-docker}
from=$(grep -m1 -E '^FROM ' "$dockerfile" | awk '{print $2}')
ref=${from%@*}   # re-pinning resolves the tag again
if [[ "$ref" != *:* ]]; then echo "pin-base: $ref has no tag; put an exact tag in the FROM line" >&2; exit 2; fi
digest=""
if "$docker" buildx version >/dev/null 2>&1; then
  digest=$("$docker" buildx imagetools inspect "$ref" --format '{{json .Manifest}}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["digest"])') || true
elif command -v crane >/dev/null 2>&1; then
  digest=$(crane digest "$ref") || true
else
  echo "pin-base: needs docker buildx or crane to ask the registry" >&2; exit 2
fi
if [[ ! "$digest" =~ ^sha256:[0-9a-f]{64}$ ]]; then
  echo "pin-base: could not resolve $ref to a digest (got '${digest}'); the Dockerfile is unchanged" >&2; exit 1
fi
tmp=$(mktemp "$dockerfile.XXXXXX")
awk -v old="$from" -v new="$ref@$digest" '!done && $1 == "FROM" && $2 == old {$2 = new; done = 1} {print}' "$dockerfile" >"$tmp"
mv "$tmp" "$dockerfile"
echo "pinned $ref@$digest"
