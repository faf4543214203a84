"""The pipeline on CPU at small scale: token store (wiki-summaries, SmolLM2 tokenizer), datastore, KNNLM validate
with flat index; compare with an independent float64 computation over the same keys/values."""
import sys, numpy as np, torch
from pathlib import Path
from mlpmem_lightning.cli.lightning import run_cli
from mlpmem_lightning.data.token_store import PrepareSettings, TokenStore, prepare
from mlpmem_lightning.knn.datastore import DatastoreSettings, build_datastore, Datastore
torch.set_num_threads(2)
W = Path("/tmp/diag/w"); W.mkdir(exist_ok=True)
D = "/work/main/.carry/smollm2"; SEQ = 128
if not (W / "tokens/manifest.json").exists():
    prepare(PrepareSettings(corpus="wiki-summaries", tokenizer=D, max_documents=int(sys.argv[1])), W / "tokens")
st = TokenStore(W / "tokens"); print(st.manifest["tokens"])
if not (W / "ds/manifest.json").exists():
    build_datastore(D, W / "tokens", W / "ds", DatastoreSettings(batch_size=8, seq_len=SEQ), device="cpu")
common = ["--data.token_store", str(W / "tokens"), "--data.seq_len", str(SEQ), "--data.batch_size", "8",
          "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]
knn = run_cli(["validate", "--model", "KNNLM", "--model.decoder", D, "--model.datastore", str(W / "ds"),
               "--model.k", "256", "--model.index", "flat", "--model.temperatures", "[1,4,16,64]", *common])
m = {k: float(v) for k, v in knn.trainer.callback_metrics.items()}
print({k: round(v, 3) for k, v in m.items() if "T_" in k or "best" in k or "decoder" in k})
ds = Datastore(W / "ds"); keys = np.asarray(ds.keys, np.float32); vals = np.asarray(ds.values)
print("datastore", keys.shape, "values[:10]", vals[:10], "train tokens[1:11]", st.split("train")[1:11])
