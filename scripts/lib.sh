# Shell helpers shared by the demo and benchmark scripts.

# manufacture_tpm STATE CA: writes a software TPM's state into STATE with endorsement keys and
# EK certificates issued by a local CA in CA (made on first use), as a TPM manufacturer would.
# The gateway pins CA/swtpm-localca-rootca-cert.pem; the worker presents CA/issuercert.pem.
manufacture_tpm() {
  local state=$1 ca=$2
  mkdir -p "$state" "$ca"
  cat > "$ca/localca.conf" <<CONF
statedir = $ca
signingkey = $ca/signkey.pem
issuercert = $ca/issuercert.pem
certserial = $ca/certserial
CONF
  printf -- '--platform-manufacturer ccgate\n--platform-version 1\n--platform-model swtpm\n' > "$ca/localca.options"
  cat > "$ca/swtpm_setup.conf" <<CONF
create_certs_tool = /usr/bin/swtpm_localca
create_certs_tool_config = $ca/localca.conf
create_certs_tool_options = $ca/localca.options
CONF
  swtpm_setup --tpm2 --tpmstate "$state" --create-ek-cert --overwrite --config "$ca/swtpm_setup.conf" >/dev/null
}

# start_swtpm DIR: starts a software TPM on a free loopback port pair; sets SWTPM_PID and TCTI.
start_swtpm() {
  local dir=$1 port
  for _ in $(seq 1 20); do
    port=$(( (RANDOM % 20000 + 30000) & ~1 ))
    swtpm socket --tpm2 --server type=tcp,port=$port,bindaddr=127.0.0.1 \
      --ctrl type=tcp,port=$((port+1)),bindaddr=127.0.0.1 \
      --tpmstate dir="$dir" --flags not-need-init,startup-clear &
    SWTPM_PID=$!
    for _ in $(seq 1 100); do
      if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then TCTI="swtpm:host=127.0.0.1,port=$port"; return 0; fi
      kill -0 "$SWTPM_PID" 2>/dev/null || break
      sleep 0.05
    done
    kill "$SWTPM_PID" 2>/dev/null || true
  done
  echo "could not start swtpm" >&2
  return 1
}

# free_port: prints a free loopback TCP port.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_for CMD...: retries CMD every 0.5 s for up to ${WAIT_SECONDS:-120} s.
wait_for() {
  local deadline=$(( $(date +%s) + ${WAIT_SECONDS:-120} ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}
