import sys, torch
from pathlib import Path
from mlpmem_lightning.cli.lightning import run_cli
import mlpmem_lightning.knn.search.kmeans as km
torch.set_num_threads(2)
W = Path("/tmp/diag/w"); D = "/work/main/.carry/smollm2"; SEQ = 128
mode = sys.argv[1]
if mode == "torchkm":
    orig = km.implementation
    km.implementation = lambda device="cpu", backend="auto": orig(device, "torch")
common = ["--data.token_store", str(W / "tokens"), "--data.seq_len", str(SEQ), "--data.batch_size", "8",
          "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]
extra = ["--model.index", "flat"]
if mode in ("clustered", "torchkm", "faissivf", "torchivf"):
    extra = ["--model.index", "ivfflat", "--model.backend", "clustered", "--model.nlist", "16", "--model.nprobe", "4"]
if mode in ("faissivf", "torchivf"):
    extra[extra.index("clustered")] = {"faissivf": "faiss", "torchivf": "torch"}[mode]
if mode == "bf16":
    extra += ["--trainer.precision", "bf16-mixed"]
knn = run_cli(["validate", "--model", "KNNLM", "--model.decoder", D, "--model.datastore", str(W / sys.argv[2]),
               "--model.k", "256", *extra, "--model.temperatures", "[1,4,16,64]", *common])
m = {k: float(v) for k, v in knn.trainer.callback_metrics.items()}
print(mode, {k: round(v, 3) for k, v in m.items() if "T_" in k or "best" in k or "decoder" in k})
