#!/bin/sh
# Userland bytes per idle connection of an echo server binary:
# (VmRSS while holding N idle connections - VmRSS before) / N.
#
# usage: chapters/05-buffer-pool/idle_rss.sh N SERVER_BINARY [SERVER_ARGS...]
# e.g.   chapters/05-buffer-pool/idle_rss.sh 19000 target/release/ch05-buffer-pool
#
# Needs target/release/loadgen (cargo build --release -p loadgen) and Linux
# (/proc). Run the server from a release build. Holding N connections needs
# N descriptors in the server and in loadgen (ulimit -n).
set -e
N=$1; shift
LOADGEN=${LOADGEN:-target/release/loadgen}
OUT=$(mktemp)
"$@" --addr 127.0.0.1:0 >"$OUT" 2>/dev/null &
PID=$!
until grep -q '^listening on ' "$OUT"; do
  kill -0 $PID 2>/dev/null || { echo "the server exited before listening" >&2; exit 1; }
  sleep 0.1
done
ADDR=$(sed -n 's/^listening on //p' "$OUT")
sleep 0.5
rss_kib() { awk '/^VmRSS:/ {print $2}' /proc/$PID/status; }
fds() { ls /proc/$PID/fd | wc -l; }
BEFORE=$(rss_kib)
BASE_FDS=$(fds)
"$LOADGEN" hold --addr "$ADDR" -n "$N" --rate 10000 --hold 5 >/dev/null 2>&1 &
LOAD=$!
# Wait until the server holds all N, then let it settle for a second.
until [ $(( $(fds) - BASE_FDS )) -ge "$N" ]; do
  kill -0 $LOAD 2>/dev/null || break
  sleep 0.2
done
sleep 1
HELD=$(( $(fds) - BASE_FDS ))
AFTER=$(rss_kib)
THREADS=$(awk '/^Threads:/ {print $2}' /proc/$PID/status)
wait $LOAD || true
kill -INT $PID; wait $PID || true
rm -f "$OUT"
if [ "$HELD" -le 0 ]; then echo "the server held no connections (did loadgen fail?)" >&2; exit 1; fi
echo "server=$(basename "$1") held=$HELD threads=$THREADS rss_before_kib=$BEFORE rss_held_kib=$AFTER bytes_per_conn=$(( (AFTER - BEFORE) * 1024 / HELD ))"
