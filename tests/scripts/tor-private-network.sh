#!/usr/bin/env bash
# Copied from the team's tested recipe (shared/recipes/tor-private-network.sh) so that the
# project carries everything its tests need.
# privnet.sh -- minimal private Tor network on 127.0.0.1 (chutney-style, no chutney needed)
# Default: 3 directory authorities (also guard/exit/HSDir relays) + 2 relays + 1 client.
#
# usage:  privnet.sh setup   # wipe $NET, generate keys + torrc files
#         privnet.sh start   # start relays, wait for a complete consensus, start client(s)
#         privnet.sh wait    # wait until every client is bootstrapped and sees all relays
#         privnet.sh stop    # SIGTERM every tor listed in $NET/pids (only ours), then SIGKILL
#         privnet.sh env     # print ports / fingerprints (for arti config etc.)
#
# Ports (all on 127.0.0.1):  node i: ORPort BASE+i, DirPort BASE+100+i (authorities),
#                            ControlPort BASE+200+i;  client node i: SocksPort BASE+300+i
#   default layout: auth0..2 = nodes 0..2, relay3..4 = nodes 3..4, client5 = node 5
#   => client SOCKS 127.0.0.1:15305, client control 127.0.0.1:15205 (cookie auth)
set -euo pipefail

NET=${NET:?set NET to an empty scratch directory for the network}
BASE=${BASE:-15000}
NAUTH=${NAUTH:-3}
NRELAY=${NRELAY:-2}
NCLIENT=${NCLIENT:-1}
# V3AuthVotingInterval: C tor's onion-service time period in a TestingTorNetwork is
# 24*VOTE seconds; arti reads it from the consensus param hsdir_interval (minutes, >= 5).
# 15 s => 6 min, the smallest value that keeps C tor and arti onion services interoperable.
VOTE=${VOTE:-15}
INITVOTE=${INITVOTE:-5}             # TestingV3AuthInitialVotingInterval (before 1st consensus)
VDELAY=${VDELAY:-2}                 # (Testing)V3Auth(Initial)VoteDelay
DDELAY=${DDELAY:-2}                 # (Testing)V3Auth(Initial)DistDelay
TOR=${TOR:-tor}
GENCERT=${GENCERT:-tor-gencert}
RELAY_DIRPORT=${RELAY_DIRPORT:-0}   # 1: give non-authority relays a DirPort too
RELAY_DIRCACHE=${RELAY_DIRCACHE:-0} # 1: non-authority relays are directory caches (+HSDir/Guard)
EXIT_ANY=${EXIT_ANY:-1}             # 0: exit policy "accept 127.0.0.0/8:*, reject *:*" only
LOGINFO=${LOGINFO:-0}               # 1: also write info.log for every node
# EXTRA_TORRC='Opt1 v\nOpt2 v'     # appended to every torrc
# ALIGN=0 (default). ALIGN=1: first sleep until a chosen wall-clock phase of the vote
#   schedule so that the first vote comes ~LEAD s after start. Only useful when tor starts
#   slowly (e.g. with GeoIP loading the first vote could beat the descriptor uploads => partial
#   first consensus => +15 s). With the torrc below ALIGN=0 measured 8.3-9.5 s (8/8 runs).
# CLIENT_LATE=1 (default): start clients only after a complete consensus is published
IP=127.0.0.1

NRELAYS_TOTAL=$((NAUTH + NRELAY))
NNODES=$((NRELAYS_TOTAL + NCLIENT))

node_name() { # index -> nickname
  local i=$1
  if   (( i < NAUTH )); then printf 'auth%d' "$i"
  elif (( i < NRELAYS_TOTAL )); then printf 'relay%d' "$i"
  else printf 'client%d' "$i"; fi
}

common_torrc() { # $1=index
  local i=$1 name; name=$(node_name "$i")
  cat <<EOF
# ---- common ----
TestingTorNetwork 1
DataDirectory $NET/$name
Nickname $name
RunAsDaemon 0
PidFile $NET/$name/pid
Log notice file $NET/$name/notice.log
$( (( LOGINFO )) && echo "Log info file $NET/$name/info.log" )
SafeLogging 0
LogTimeGranularity 1
ShutdownWaitLength 0
Sandbox 0
ControlPort $IP:$((BASE + 200 + i))
$( if (( i >= NRELAYS_TOTAL )); then
  # Clients authenticate controllers by cookie, as a system tor does: Folio's control
  # client must then prove itself with SAFECOOKIE.
  echo "CookieAuthentication 1"; echo "CookieAuthFile $NET/$name/control_auth_cookie"
else echo "CookieAuthentication 0"; fi )
ClientUseIPv6 0
# Do not load the GeoIP databases: saves ~0.3 s CPU, ~40-90 MiB RSS per process and
# makes relays publish their descriptors sooner (=> complete first consensus more often)
GeoIPFile ""
GeoIPv6File ""
DirReqStatistics 0
# fast-bootstrap knobs (chutney common.i)
PathsNeededToBuildCircuits 0.67
TestingDirAuthVoteExit *
# HSDir flag only for directory caches: with "*" the DirCache-0 relays got HSDir too and
# clients (arti in particular) then tried to fetch onion descriptors from them and failed.
TestingDirAuthVoteHSDir $(if (( RELAY_DIRCACHE )); then echo '*'; else cat "$NET/hsdir-fps"; fi)
TestingDirAuthVoteGuard *
TestingMinExitFlagThreshold 0
V3AuthNIntervalsValid 2
EOF
  cat "$NET/dirauthorities.conf"
}

relay_torrc() { # $1=index
  local i=$1
  cat <<EOF
# ---- relay / exit ----
SocksPort 0
Address $IP
ORPort $IP:$((BASE + i))
$( if (( i < NAUTH || RELAY_DIRPORT )); then echo "DirPort $IP:$((BASE + 100 + i))"; fi )
$( if (( i >= NAUTH && ! RELAY_DIRCACHE )); then echo "# not a directory cache: clients then fetch everything from the authorities, which
# have all microdescriptors the moment a consensus is published (a fresh relay cache
# answers 404 for a few seconds and the client backs off ~10 s)
DirCache 0"; fi )
AssumeReachable 1
ContactInfo $(node_name "$i")@test.invalid
ExitRelay 1
ExitPolicyRejectPrivate 0
ExitPolicy accept 127.0.0.0/8:*
$( if (( EXIT_ANY )); then echo "# The next line is needed so the microdescriptor policy summary says \"accept\"
# (summaries ignore addresses; see tor#11264). Only loopback is used in practice.
ExitPolicy accept *:*"; else echo "ExitPolicy reject *:*"; fi )
# no DNS in an offline network
ServerDNSResolvConfFile /dev/null
ServerDNSDetectHijacking 0
ServerDNSTestAddresses
ServerDNSAllowBrokenConfig 1
EOF
}

auth_torrc() {
  cat <<EOF
# ---- directory authority ----
AuthoritativeDirectory 1
V3AuthoritativeDirectory 1
TestingV3AuthInitialVotingInterval $INITVOTE
TestingV3AuthInitialVoteDelay $VDELAY
TestingV3AuthInitialDistDelay $DDELAY
V3AuthVotingInterval $VOTE
V3AuthVoteDelay $VDELAY
V3AuthDistDelay $DDELAY
# Fast and Stable for every relay, always. Both are otherwise relative to the rest of the
# network (bandwidth quantiles, MTBF medians) and flip from one consensus to the next on
# five idle loopback relays; arti only samples guards that are Guard, Fast, Stable and
# directory caches, so a consensus in which all three authorities lost Fast left an
# embedded arti client with no usable guard until the test timed out.
AuthDirFastGuarantee 1 bytes
AuthDirVoteStableGuaranteeMinUptime 0
AuthDirVoteStableGuaranteeMTBF 0
EOF
  # C tor (TestingTorNetwork) uses an onion-service time period of
  # 24*V3AuthVotingInterval seconds (one SRV protocol run) and ignores hsdir_interval;
  # arti reads hsdir_interval (minutes, clamped to >= 5) from the consensus.
  # Publish the matching value so C tor and arti agree on blinded keys / HSDir ring.
  if (( (24 * VOTE) % 60 == 0 && ! ${NO_HSDIR_PARAM:-0} )); then
    echo "ConsensusParams hsdir_interval=$((24 * VOTE / 60))"
  fi
}

client_torrc() { # $1=index
  local i=$1
  cat <<EOF
# ---- client ----
SocksPort $IP:$((BASE + 300 + i))
EOF
}

cmd_setup() {
  if [[ -e $NET ]]; then
    [[ -f $NET/.privnet ]] || { echo "refusing to wipe $NET (no .privnet marker)"; exit 1; }
    rm -rf "$NET"
  fi
  mkdir -p "$NET"; touch "$NET/.privnet"
  : > "$NET/dirauthorities.conf"
  : > "$NET/arti-authorities.txt"
  for ((i = 0; i < NNODES; i++)); do
    local name; name=$(node_name "$i")
    mkdir -p "$NET/$name/keys"; chmod 700 "$NET/$name" "$NET/$name/keys"
  done
  # 1. keys, generated in parallel (one job per relay):
  #    authorities: v3 identity key + signing key + certificate (tor-gencert, RSA-3072, ~1 s)
  #    every relay: RSA + ed25519 identity keys (created by `tor --list-fingerprint`)
  keygen() {
    local i=$1 name d; name=$(node_name "$i"); d=$NET/$name
    if (( i < NAUTH )); then
      echo "" | "$GENCERT" --create-identity-key --passphrase-fd 0 -m 12 \
        -i "$d/keys/authority_identity_key" -s "$d/keys/authority_signing_key" \
        -c "$d/keys/authority_certificate" -a "$IP:$((BASE + 100 + i))" >/dev/null 2>&1
    fi
    "$TOR" --ignore-missing-torrc -f /dev/null --DataDirectory "$d" --ORPort 1 \
      --GeoIPFile "" --GeoIPv6File "" --list-fingerprint --quiet | tail -1 \
      | awk '{$1=""; gsub(/ /,""); print}' > "$d/fingerprint.hex"
  }
  local pids=()
  for ((i = 0; i < NRELAYS_TOTAL; i++)); do keygen "$i" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p"; done
  : > "$NET/arti-relays.txt"; : > "$NET/hsdir-fps"
  for ((i = 0; i < NRELAYS_TOTAL; i++)); do
    local name d fp ed v3id; name=$(node_name "$i"); d=$NET/$name
    fp=$(cat "$d/fingerprint.hex")
    [[ $fp =~ ^[0-9A-F]{40}$ ]] || { echo "bad fingerprint for $name: $fp"; exit 1; }
    ed=$(awk '{print $2}' "$d/fingerprint-ed25519")
    if (( i < NAUTH )); then
      v3id=$(awk '/^fingerprint /{print $2}' "$d/keys/authority_certificate")
      echo "DirAuthority $name orport=$((BASE + i)) no-v2 v3ident=$v3id $IP:$((BASE + 100 + i)) $fp" \
        >> "$NET/dirauthorities.conf"
      printf '%s$%s' "$( ((i > 0)) && echo , )" "$fp" >> "$NET/hsdir-fps"
      echo "$name v3ident=$v3id rsa=$fp ed=$ed orport=$IP:$((BASE + i)) dirport=$IP:$((BASE + 100 + i))" \
        >> "$NET/arti-authorities.txt"
    else
      echo "$name rsa=$fp ed=$ed orport=$IP:$((BASE + i)) dirport=$IP:$((BASE + 100 + i))" \
        >> "$NET/arti-relays.txt"
    fi
  done
  # 2. torrc files
  for ((i = 0; i < NNODES; i++)); do
    local name; name=$(node_name "$i")
    {
      common_torrc "$i"
      if (( i < NRELAYS_TOTAL )); then relay_torrc "$i"; fi
      if (( i < NAUTH )); then auth_torrc; fi
      if (( i >= NRELAYS_TOTAL )); then client_torrc "$i"; fi
      if [[ -n ${EXTRA_TORRC:-} ]]; then printf '# ---- EXTRA_TORRC ----\n%b\n' "$EXTRA_TORRC"; fi
    } > "$NET/$name/torrc"
  done
  echo "setup done in $NET ($NAUTH authorities, $NRELAY relays, $NCLIENT clients)"
}

align_start() {
  # The first vote happens at wall-clock times t with (t + VDELAY + DDELAY) % INITVOTE == 0.
  # Relays need ~1.5 s (2.5 s with GeoIP loading) after start to upload their descriptors;
  # if the first vote comes earlier the first consensus is partial and the full one only
  # arrives one V3AuthVotingInterval later (+15 s). So start ~LEAD s before a vote.
  # (Optimal LEAD depends on how fast tor starts on the machine; measure with bench_bootstrap.sh.)
  local lead=${LEAD:-2}
  python3 - "$INITVOTE" "$((VDELAY + DDELAY))" "$lead" <<'PY'
import sys, time
iv, dl, lead = map(int, sys.argv[1:4])
now = time.time()
target_phase = (-dl - lead) % iv          # desired value of (start % iv)
wait = (target_phase - now) % iv
time.sleep(wait)
PY
}

start_node() {
  local name; name=$(node_name "$1")
  "$TOR" -f "$NET/$name/torrc" --quiet > "$NET/$name/stdout.log" 2>&1 &
  echo "$! $name" >> "$NET/pids"
}

consensus_has_all() { # does authority 0 serve a microdesc consensus listing every relay?
  local n
  n=$(curl -s -m 2 "http://$IP:$((BASE + 100))/tor/status-vote/current/consensus-microdesc" 2>/dev/null \
      | grep -c '^r ' || true)
  (( n >= NRELAYS_TOTAL ))
}

cmd_start() {
  if (( ${ALIGN:-0} )); then align_start; fi
  : > "$NET/pids"
  date +%s.%N > "$NET/start_time"
  for ((i = 0; i < NRELAYS_TOTAL; i++)); do start_node "$i"; done
  if (( ${CLIENT_LATE:-1} )); then
    # Start clients only once the authorities publish a complete consensus: a client that
    # starts earlier retries with back-off and may bootstrap on a partial consensus first.
    local deadline=$((SECONDS + 180))
    until consensus_has_all; do
      (( SECONDS < deadline )) || { echo "TIMEOUT waiting for a complete consensus"; return 1; }
      sleep 0.25
    done
    echo "complete consensus after $(echo "$(date +%s.%N) - $(cat "$NET/start_time")" | bc) s"
  fi
  for ((i = NRELAYS_TOTAL; i < NNODES; i++)); do start_node "$i"; done
  echo "started $(wc -l < "$NET/pids") tor processes (PIDs in $NET/pids)"
}

cmd_wait() { # wait for every client to log Bootstrapped 100%
  local timeout=${1:-300} t0; t0=$(cat "$NET/start_time")
  for ((i = NRELAYS_TOTAL; i < NNODES; i++)); do
    local name; name=$(node_name "$i")
    local deadline=$((SECONDS + timeout))
    until grep -q "Bootstrapped 100%" "$NET/$name/notice.log" 2>/dev/null; do
      (( SECONDS < deadline )) || { echo "TIMEOUT waiting for $name"; return 1; }
      sleep 0.5
    done
    echo "$name bootstrapped 100% after $(echo "$(date +%s.%N) - $t0" | bc) s"
  done
  # Bootstrapped 100% can happen with a partial first consensus (e.g. 3 of 5 relays).
  # Onion services behave erratically until every relay is listed (the HSDir ring
  # changes), so also wait until each client's consensus lists all relays.
  for ((i = NRELAYS_TOTAL; i < NNODES; i++)); do
    local name; name=$(node_name "$i")
    local deadline=$((SECONDS + timeout)) n=0
    while :; do
      n=$(ns_count $((BASE + 200 + i)) "$NET/$name/control_auth_cookie")
      (( n >= NRELAYS_TOTAL )) && break
      (( SECONDS < deadline )) || { echo "TIMEOUT: $name sees only $n/$NRELAYS_TOTAL relays"; return 1; }
      sleep 0.5
    done
    echo "$name has all $n relays in its consensus after $(echo "$(date +%s.%N) - $t0" | bc) s"
  done
}

ns_count() { # $1 = control port, $2 = its cookie file -> number of relays in its consensus
  local out auth='""'
  # This script trusts the tor it started, so plain COOKIE authentication will do here.
  if [[ -f $2 ]]; then auth=$(od -An -tx1 "$2" | tr -d ' \n'); fi
  out=$( { exec 3<>/dev/tcp/$IP/$1 && printf 'AUTHENTICATE %s\r\nGETINFO ns/all\r\nQUIT\r\n' "$auth" >&3 && cat <&3; } 2>/dev/null ) || true
  grep -c '^r ' <<<"$out" || true
}

cmd_stop() {
  [[ -f $NET/pids ]] || return 0
  while read -r pid name; do
    kill "$pid" 2>/dev/null && echo "stopped $name ($pid)" || true
  done < "$NET/pids"
  sleep 1
  while read -r pid name; do
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  done < "$NET/pids"
  rm -f "$NET/pids"
}

cmd_env() {
  echo "NET=$NET"
  for ((i = NRELAYS_TOTAL; i < NNODES; i++)); do
    echo "$(node_name "$i"): socks=$IP:$((BASE + 300 + i)) control=$IP:$((BASE + 200 + i))"
  done
  cat "$NET/dirauthorities.conf" "$NET/arti-authorities.txt" "$NET/arti-relays.txt" 2>/dev/null
}

case "${1:-}" in
  setup) cmd_setup ;;
  start) cmd_start ;;
  wait)  cmd_wait "${2:-300}" ;;
  stop)  cmd_stop ;;
  env)   cmd_env ;;
  *) echo "usage: $0 setup|start|wait [timeout]|stop|env"; exit 2 ;;
esac
