#!/usr/bin/env bash
# Resolve each of the Dockerfile's FROM tags to its digest and write `FROM image:tag@sha256:…` back (make pin-base):
# the Python base and the CUDA image the compatibility libraries come from.
# Needs registry access and one of: docker buildx (imagetools) or crane. A digest is written only when resolved.
set -euo pipefail
cd "$(dirname "$0")/.."
dockerfile=${DOCKERFILE:-Dockerfile}
docker=${DOCKER:-docker}
if "$docker" buildx version >/dev/null 2>&1; then
  resolve() { "$docker" buildx imagetools inspect "$1" --format '{{json .Manifest}}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["digest"])'; }
elif command -v crane >/dev/null 2>&1; then
  resolve() { crane digest "$1"; }
else
  echo "pin-base: needs docker buildx or crane to ask the registry" >&2; exit 2
fi
for from in $(awk '$1 == "FROM" {print $2}' "$dockerfile"); do
  ref=${from%@*}   # re-pinning resolves the tag again
  if [[ "$ref" != *:* ]]; then echo "pin-base: $ref has no tag; put an exact tag in the FROM line" >&2; exit 2; fi
  digest=$(resolve "$ref") || true
  if [[ ! "$digest" =~ ^sha256:[0-9a-f]{64}$ ]]; then
    echo "pin-base: could not resolve $ref to a digest (got '${digest}'); FROM $from is left as it is" >&2; exit 1
  fi
  tmp=$(mktemp "$dockerfile.XXXXXX")
  awk -v old="$from" -v new="$ref@$digest" '$1 == "FROM" && $2 == old {$2 = new} {print}' "$dockerfile" >"$tmp"
  mv "$tmp" "$dockerfile"
  echo "pinned $ref@$digest"
done
