#!/usr/bin/env bash
# A simulated warehouse for deploy/compose.yaml: the agent daemon, plus a WMS
# that records stock moves into the agent's store with `stocksync-agent
# import` (receipts, shipments, damage) every few seconds, so the hub, the
# metrics and the dashboard have something to show.
#
# Arguments go to `stocksync-agent run`; settings come from the environment
# as for `run` (STOCKSYNC_AGENT_WAREHOUSE, _HUB, _DB, _TLS or _INSECURE), and:
#   SIM_INTERVAL_S  seconds between two batches of moves   (default 2)
#   SIM_SKUS        how many SKUs the warehouse stocks     (default 8)
# SIGTERM stops the moves and then the agent, cleanly.
set -euo pipefail

interval=${SIM_INTERVAL_S:-2}
skus=${SIM_SKUS:-8}
db=${STOCKSYNC_AGENT_DB:?STOCKSYNC_AGENT_DB names the agent store}

moves=$(mktemp)
trap 'rm -f "$moves"' EXIT
# Opening stock, recorded before the daemon starts (it creates the store on
# a first start): a pallet of every SKU; each restart adds one more.
for i in $(seq 1 "$skus"); do echo "SKU-$i,receive,100"; done >"$moves"
stocksync-agent import "$moves" --db "$db" >/dev/null

stocksync-agent run "$@" &
agent=$!
# However this script ends, the agent stops with it (cleanly, by SIGTERM).
finish() {
    kill -TERM "$agent" 2>/dev/null || true
    wait "$agent" 2>/dev/null || true
    rm -f "$moves"
}
trap finish EXIT
trap 'exit 0' TERM INT

# Then five moves a batch: mostly shipments, some receipts, a little damage
# (on average as many units come in as go out).
while kill -0 "$agent" 2>/dev/null; do
    : >"$moves"
    for _ in 1 2 3 4 5; do
        sku="SKU-$((RANDOM % skus + 1))"
        case $((RANDOM % 10)) in
            0) echo "$sku,receive,$((RANDOM % 12 + 12))" ;;
            9) echo "$sku,adjust,-1,damage" ;;
            *) echo "$sku,ship,$((RANDOM % 3 + 1))" ;;
        esac >>"$moves"
    done
    stocksync-agent import "$moves" --db "$db" >/dev/null || echo "warehouse-sim: import failed" >&2
    sleep "$interval" &
    wait $! || true
done
# The agent ended by itself: its exit code is this script's.
trap - EXIT
rm -f "$moves"
wait "$agent"
