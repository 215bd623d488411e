#!/usr/bin/env bash
# Makes what secure.toml reads, under deploy/minio/secrets/ (never commit it):
# a CA and a broker certificate for 127.0.0.1 and localhost (openssl), the
# bootstrap users file with an "admin" user, and an admin API token.
# Passwords come from the environment or are generated:
#   STRATA_ADMIN_PASSWORD=... deploy/minio/make-secrets.sh
set -euo pipefail
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/secrets"
mkdir -p "$dir"
cd "$dir"
umask 077

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
  -subj "/CN=strata local CA" -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=localhost" -keyout tls.key -out tls.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' > tls.ext
openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
  -extfile tls.ext -out tls.crt 2>/dev/null
rm -f tls.csr tls.ext ca.srl

password="${STRATA_ADMIN_PASSWORD:-$(openssl rand -hex 16)}"
cat > users.toml <<TOML
[[user]]
name = "admin"
password = "$password"
TOML
# The single broker of secure.toml is its own inter-broker peer: it needs the
# password of a super user for the SASL_SSL listener it would dial.
printf '%s\n' "$password" > admin-password
token="$(openssl rand -hex 24)"
echo "$token User:admin" > admin-tokens

echo "secrets in $dir:"
echo "  ca.crt (give it to clients), tls.crt, tls.key, users.toml, admin-password, admin-tokens"
echo "  user admin, password: $password"
echo "  admin API token: $token"
