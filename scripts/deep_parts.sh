#!/usr/bin/env bash
# Run a state machine's deep profile in parts, one part at a time, at the lowest priority:
# part k of PARTS is `HYPOTHESIS_PROFILE=deep_part --hypothesis-seed k` (tests/conftest.py),
# so a part is named, and replayed, by its seed. Stops at the first failing part.
#
#   scripts/deep_parts.sh TESTFILE PARTS [PYTEST_ARGS...]
#
# Environment:
#   FIRST_PART=k                  resume at part k (default 1): parts k..PARTS run
#   PROMPTEX_DEEP_PART_EXAMPLES   examples per part of a contract machine (default 100: ten
#                                 parts make the deep profile's 1,000 x 50)
#   PROMPTEX_MARKET_EXAMPLES      sequences per part of the market machine (default 10:
#                                 twenty parts make its deep 200 x 12)
#   DEEP_PARTS_DIR                where the logs go (default .deep-parts/, not committed)
#
# One line per part is appended to $DEEP_PARTS_DIR/parts.log: the time it ended, the file,
# the seed, rc, seconds, the commit (marked +dirty if the worktree had changes) and
# hypothesis's counts; the part's whole output is $DEEP_PARTS_DIR/<file>-seed<k>.log.
# `touch $DEEP_PARTS_DIR/stop` stops it before the next part.
set -u

if [ $# -lt 2 ]; then
  sed -n '2,19p' "$0"
  exit 2
fi
testfile=$1
parts=$2
shift 2

cd "$(dirname "$0")/.."
dir=${DEEP_PARTS_DIR:-.deep-parts}
mkdir -p "$dir"
# anvil from npm (as `make setup` installs it) for the machines that start one.
export PATH=$PWD/node_modules/@foundry-rs/anvil-linux-amd64/bin:$PWD/.venv/bin:$PATH
export PYTHONWARNINGS=ignore::UserWarning:pydantic_settings.main,ignore::UserWarning:pydantic_settings.sources.utils
export HYPOTHESIS_PROFILE=deep_part

commit=$(git rev-parse --short HEAD)
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  commit="$commit+dirty"
fi

for seed in $(seq "${FIRST_PART:-1}" "$parts"); do
  if [ -e "$dir/stop" ]; then
    echo "$dir/stop exists: not starting part $seed"
    break
  fi
  log=$dir/$(basename "$testfile" .py)-seed$seed.log
  start=$(date +%s)
  nice -n 19 .venv/bin/ape test "$testfile" -v WARNING -s -p no:cacheprovider \
    --hypothesis-seed="$seed" --hypothesis-show-statistics "$@" >"$log" 2>&1
  rc=$?
  # hypothesis's counts for the generate phase, and the market machine's own (reorgs, kills).
  counts=$(grep -oE '[0-9]+ passing( examples)?, [0-9]+ failing( examples)?,( and)? [0-9]+ invalid( examples| test cases)?' "$log" | tr '\n' ';')
  market=$(grep -o 'market machine: .*' "$log" | tail -1)
  line="$(date -u +%FT%TZ) $testfile seed=$seed rc=$rc secs=$(($(date +%s) - start)) commit=$commit ${counts}${market:+ $market}"
  echo "$line" | tee -a "$dir/parts.log"
  if [ "$rc" -ne 0 ]; then
    echo "part $seed failed: $log"
    exit "$rc"
  fi
done
