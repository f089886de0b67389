#!/usr/bin/env bash
# Development PKI for Sigil (never for production).
#
#   certs/gen.sh [--force] OUT            CA, server (localhost, 127.0.0.1) and one client per role
#   certs/gen.sh --client OUT NAME [URI]  one more client certificate signed by OUT's CA,
#                                         with URI as its SAN (none if omitted)
#
# Roles travel as URI SANs: spiffe://sigil/role/<role>. Keys are EC P-256
# (PKCS#8). Private keys are written with mode 600 and are git-ignored.
set -euo pipefail

umask 077
days=825

leaf() { # out name ext
  local out=$1 name=$2 ext=$3
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$out/$name.key" 2>/dev/null
  openssl req -new -key "$out/$name.key" -subj "/O=Sigil development/CN=$name" -out "$out/$name.csr"
  openssl x509 -req -in "$out/$name.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days "$days" -sha256 \
    -extfile <(printf '%b' "$ext") -out "$out/$name.pem" 2>/dev/null
  rm -f "$out/$name.csr"
  chmod 644 "$out/$name.pem"
}

client() { # out name [uri]
  local ext="basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
  if [ -n "${3:-}" ]; then ext+="subjectAltName=URI:$3\n"; fi
  leaf "$1" "$2" "$ext"
}

if [ "${1:-}" = "--client" ]; then
  [ $# -ge 3 ] || { echo "usage: $0 --client OUT NAME [URI]" >&2; exit 2; }
  client "$2" "$3" "${4:-}"
  exit 0
fi

force=0
if [ "${1:-}" = "--force" ]; then force=1; shift; fi
out=${1:-certs/out}
mkdir -p "$out"
roles="withdrawal-engine frontend admin approver"
if [ -f "$out/ca.pem" ] && [ $force -eq 0 ]; then
  # A role added since the CA was made gets its certificate from that CA.
  for role in $roles; do
    if [ ! -f "$out/$role.pem" ] && [ -f "$out/ca.key" ]; then
      client "$out" "$role" "spiffe://sigil/role/$role"
      echo "certs: added the $role client certificate in $out"
    fi
  done
  echo "certs: $out already has a CA (use --force to replace it)"
  exit 0
fi

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$out/ca.key" 2>/dev/null
openssl req -x509 -new -key "$out/ca.key" -subj "/O=Sigil development/CN=Sigil Development CA" \
  -days 3650 -sha256 -set_serial "0x$(openssl rand -hex 16)" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$out/ca.pem"
chmod 644 "$out/ca.pem"

leaf "$out" server "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
for role in $roles; do
  client "$out" "$role" "spiffe://sigil/role/$role"
done
echo "certs: development CA, server (localhost, 127.0.0.1) and clients withdrawal-engine, frontend, admin, approver in $out"
