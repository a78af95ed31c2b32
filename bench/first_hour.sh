#!/usr/bin/env bash
# The first hour, timed as the README's figure is: a fresh clone to the first metered
# answer through the `openai` SDK, following the README (`make setup`, `promptex up`,
# the buyer quick-start's two exports and its answer).
#
#   bash bench/first_hour.sh                  # clones this checkout's HEAD into a temporary folder
#   bash bench/first_hour.sh REPO [DIR]       # another repository (path or URL), another folder
#   COLD=1 bash bench/first_hour.sh           # pip's and uv's caches off, an empty npm cache
#
# Prints the load average at the start and end (the figure means little on a busy
# machine), the wall time of each phase, the CPU time of `make setup` and of `up` with its
# services, and `up`'s steps as they were printed. `up` runs on free ports (chain, gateway,
# upstream, billing, dashboard, door) and is stopped at the end; the clone is left in DIR.
set -euo pipefail

repo=${1:-$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)}
dir=${2:-$(mktemp -d)/first-hour}
if [ -n "${COLD:-}" ]; then
    npm_cache=$(mktemp -d)
    export PIP_NO_CACHE_DIR=1 UV_NO_CACHE=1 npm_config_cache=$npm_cache
fi

read -r -a ports < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(6)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')

now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f} s')" "$1" "$(now)"; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

start=$(now)
echo "start $(date -u +%FT%TZ), load average $(load)${COLD:+ (cold: no pip/uv cache, empty npm cache)}"
git clone -q "$repo" "$dir"
cd "$dir"
echo "commit $(git log --oneline -1 | cut -c1-70)"

setup_start=$(now)
/usr/bin/time -o setup.time -f "%U s user + %S s system CPU" make setup >setup.log 2>&1 \
    || { tail -20 setup.log; exit 1; }
echo "clone + make setup: $(since "$start") (make setup's CPU: $(cat setup.time)), load average $(load)"

export PATH=$dir/.venv/bin:$PATH # the README: `. .venv/bin/activate`
up_start=$(now)
/usr/bin/time -o up.time -f "%U s user + %S s system CPU" promptex up \
    --chain-port "${ports[0]}" --gateway-port "${ports[1]}" --upstream-port "${ports[2]}" \
    --billing-port "${ports[3]}" --dashboard-port "${ports[4]}" --door-port "${ports[5]}" \
    > >(while IFS= read -r line; do echo "$(now) $line"; done >up.log) 2>&1 &
timer=$!
until grep -q "The market is ready" up.log 2>/dev/null; do
    kill -0 "$timer" 2>/dev/null || { echo "promptex up exited"; tail -30 up.log; exit 1; }
    sleep 0.2
done
echo "promptex up, ready: $(since "$up_start")"

answer_start=$(now)
OPENAI_BASE_URL=$(promptex market url gateway)
OPENAI_API_KEY=$(promptex market demo-key)
export OPENAI_BASE_URL OPENAI_API_KEY
python - <<'PY'
from openai import OpenAI
answer = OpenAI().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}])
print("answer:", answer.choices[0].message.content[:40])
PY
echo "first answer: $(since "$answer_start")"
echo "TOTAL, fresh clone to the first metered answer: $(since "$start"), load average $(load)"

echo "promptex up's steps (seconds after its start):"
python3 - "$up_start" up.log <<'PY'
import sys
start = float(sys.argv[1])
for line in open(sys.argv[2], encoding="utf-8"):
    stamp, _, text = line.partition(" ")
    if "▶" in text or "The market is ready" in text:
        print(f"  {float(stamp) - start:6.1f}  {text.strip()[:90]}")
PY

# /usr/bin/time ignores SIGINT itself: Ctrl-C goes to `promptex up`, its child (the
# other child is the log's timestamping loop).
kill -INT "$(pgrep -P "$timer" -x promptex)"
wait "$timer" || true
echo "promptex up and its services until stopped: $(cat up.time)"
