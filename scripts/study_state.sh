#!/bin/bash
# After a call of scripts/gpu_study.sh, here: bash scripts/study_state.sh /work/.device/N/study.tgz
# The GPU machine is given back 30 s after a call, so the next call may start on a fresh one: it resumes from
# .carry/state/optuna.db (carry .carry/state too). This puts the call's storage there and its tables in
# analysis/results/scaling-h200/partial/ (committed: a later session resumes from them). A pack made while the
# sweep ran (the call was killed at its limit) has no packed-at-end mark: its optuna-snapshot.db is used, a
# consistent copy, instead of the live storage that tar may have read mid-write.
# NAME=scaling-h200-fixed bash scripts/study_state.sh …: another spec's study (SPEC= of gpu_study.sh), whose storage
# goes to .carry/state-<name>/ and analysis/results/<name>/partial/.
set -eu
TGZ=${1:?usage: scripts/study_state.sh STUDY.TGZ}
NAME=${NAME:-scaling-h200}
STATE=.carry/state; [ "$NAME" = scaling-h200 ] || STATE=.carry/state-$NAME
O=runs/sweeps/$NAME
P=analysis/results/$NAME/partial
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
tar xzf "$TGZ" -C "$T"
DB=$T/$O/optuna.db
[ -e "$T/$O/packed-at-end" ] || DB=$T/$O/optuna-snapshot.db
[ -e "$DB" ] || { echo "mlpmem: error: $TGZ holds no Optuna storage ($O/optuna.db): nothing to resume from" >&2; exit 1; }
mkdir -p $STATE $P
cp "$DB" $STATE/optuna.db
cp "$DB" $P/optuna.db
for f in results.csv trials.csv; do [ ! -e "$T/$O/$NAME/$f" ] || cp "$T/$O/$NAME/$f" $P/; done
python3 - "$DB" <<'PY'
import sqlite3, sys
rows = sqlite3.connect(sys.argv[1]).execute("select state, count(*) from trials group by state").fetchall()
print("trials by state:", ", ".join(f"{s.lower()} {n}" for s, n in rows))
PY
