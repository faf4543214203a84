#!/bin/bash
# Reproductions of issue #13 (artifacts and stages), run from /tmp/relart-repro
cd /tmp/relart-repro
export PYTHONPATH=/work/wt-rel-art
M() { /work/main/.venv/bin/python -m mlpmem_lightning.cli "$@"; }
run() { echo "\$ mlpmem $*"; M "$@" > out.txt 2> err.txt; rc=$?; grep -v "^\s*$" out.txt | tail -2; grep -E "mlpmem: error|skipping|Traceback|Error" err.txt | tail -2; echo "exit $rc"; echo; }
CK=dec/checkpoints/last.ckpt
[ -d ds ] || M datastore --decoder dec --data tok --out ds --device cpu > /dev/null 2>&1
[ -d dsv ] || M datastore --decoder dec --data tok --out dsv --split valid --device cpu > /dev/null 2>&1
[ -d tg ] || M targets --datastore ds --out tg --k 16 --keep 8 --device cpu > /dev/null 2>&1
[ -d tgv ] || M targets --datastore dsv --out tgv --k 16 --keep 8 --device cpu > /dev/null 2>&1
echo "## item 1"
rm -rf stores docs w; mkdir -p stores/other docs w; echo '{"kind":"token_store"}' > stores/other/manifest.json; echo mine > stores/notes.txt
echo "some text of mine" > docs/a.txt; cp -r ds w/ds
run prepare --corpus wiki-summaries --out stores; ls stores
run prepare --corpus docs --out docs; ls docs
run datastore --decoder dec --data tok --out dec; ls dec
run targets --datastore w/ds --out w; ls w
echo "## item 4 (simulated ENOSPC at allocation)"
rm -rf full; echo "\$ mlpmem datastore --decoder dec --data tok --out full   # os.posix_fallocate raising ENOSPC"
/work/main/.venv/bin/python -c "
import errno, os, sys
def full(*a): raise OSError(errno.ENOSPC, 'No space left on device')
os.posix_fallocate = full
from mlpmem_lightning.cli import main
main(['datastore', '--decoder', 'dec', '--data', 'tok', '--out', 'full', '--device', 'cpu'])" 2>&1 | grep -E "mlpmem: error|Bus|Traceback"; echo "exit ${PIPESTATUS[0]}"; ls full; echo
echo "## item 5"
T="--config /work/wt-rel-art/experiments/trainer/cpu.yaml --trainer.enable_progress_bar false"
run validate $T --model KNNLM --model.decoder dec --model.datastore dsv --data.token_store tok --data.seq_len 64 --model.k 16 --trainer.default_root_dir knnv
run validate $T --model KNNLM --model.decoder dec --model.datastore ds --data.token_store tok --data.seq_len 64 --model.k 16 --trainer.default_root_dir knnt
run fit $T --model MemoryLM --model.decoder dec --data.token_store tok --data.seq_len 64 --data.targets tgv --trainer.default_root_dir memv
echo "## item 6"
for a in "--batch-size -4" "--batch-size 0" "--seq-len -8" "--device bogus" "--device cuda"; do run datastore --decoder dec --data tok --out d6 $a; done
for a in "--chunk 0" "--chunk -5" "--mass-curve -5" "--mass-curve 0"; do run targets --datastore ds --out t6 $a; done
for a in "--num-proc -1" "--seed -1"; do run prepare --corpus wiki-summaries --max-documents 300 --out p6 $a; done
for a in "--top-p 0" "--k 0" "--knn-temperature 0" "--knn-temperature -5" "--knn-temperature nan"; do run generate --decoder dec --prompt The --datastore ds $a; done
run targets --datastore ds --out t6 --mass-curve 64 --k 16 --device cpu; ls t6 2>&1
echo "## item 7"
rm -rf lc lctok tok2 tg10; mkdir lc; for i in $(seq 60); do echo "{\"text\": \"document $i has some words in it\"}"; done > lc/c.jsonl
M prepare --corpus lc --vocab-size 300 --out lctok > /dev/null 2>&1; sed -i 's/document 7 /document seven /' lc/c.jsonl
run prepare --corpus lc --vocab-size 300 --out lctok
cp -r tok tok2; /work/main/.venv/bin/python -c "import numpy as np; a=np.load('tok2/train.npy'); np.save('tok2/train.npy', a[::-1].copy())"
run datastore --decoder dec --data tok2 --out d7
cp -r tg tg10; /work/main/.venv/bin/python -c "import numpy as np; a=np.load('tg10/probs.npy'); np.save('tg10/probs.npy', (a*10).astype(a.dtype))"
run fit $T --model MemoryLM --model.decoder dec --data.token_store tok --data.seq_len 64 --data.targets tg10 --trainer.default_root_dir mem10
run prepare --corpus wiki-summaries --max-documents 300 --vocab-size 1024 --out tok
echo "## item 14"
rm -rf dsl dsn f.txt loop1 loop2 ro gk.json mixed; cp -r ds dsl; echo '[]' > dsl/manifest.json
cp -r ds dsn; /work/main/.venv/bin/python -c "import json; m=json.load(open('dsn/manifest.json')); del m['N']; json.dump(m, open('dsn/manifest.json','w'))"
run targets --datastore dsl --out t14
run targets --datastore dsn --out t14
run export --checkpoint $CK --out e14
run export --checkpoint missing.ckpt --out e14
run generate --decoder dec --prompt The --memory $CK
echo x > f.txt; ln -s loop2 loop1; ln -s loop1 loop2; mkdir ro; chmod 555 ro
run prepare --corpus wiki-summaries --out f.txt
run prepare --corpus wiki-summaries --out loop1
run prepare --corpus wiki-summaries --out ro/tok
echo '{"oops": 1}' > gk.json
run prepare --corpus lc --tokenizer gk.json --out gtok
mkdir mixed; cp lc/c.jsonl mixed/; echo hi > mixed/B.TXT; echo hi > mixed/notes.md; echo a,b > mixed/t.csv
run prepare --corpus mixed --vocab-size 300 --out mtok
