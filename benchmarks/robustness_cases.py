"""Issue 11's cases of bad input and reused run directories, run through the `hvae` command; one JSON line per case.

  python benchmarks/robustness_cases.py SCRATCH_DIR [CASE ...] > out.jsonl

Each case runs `python -m hvae_jax.cli` of the hvae_jax on PYTHONPATH (or the installed one) in SCRATCH_DIR and
records its exit status, whether a traceback was printed, the last line of stderr, and what changed on disk.
benchmarks/results/robustness-before.jsonl holds the cases run on the checkout before issue 11's fixes,
robustness-after.jsonl on the fixed one (paths replaced by SCRATCH); README.md "Reliability" tabulates them.
"""
import hashlib
import json
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(sys.argv[1])  # scratch folder
ONLY = sys.argv[2:]
ROOT.mkdir(parents=True, exist_ok=True)
PY = [sys.executable, "-m", "hvae_jax.cli"]

def snapshot(path):
    out = {}
    for p in sorted(pathlib.Path(path).rglob("*")):
        if p.is_file() and p.name != ".hvae_jax.lock":
            out[str(p.relative_to(path))] = hashlib.sha256(p.read_bytes()).hexdigest()[:10]
    return out

def hvae(*args, cwd=ROOT):
    r = subprocess.run(PY + list(map(str, args)), capture_output=True, text=True, cwd=cwd, timeout=900)
    err = r.stderr.strip().splitlines()
    return r.returncode, ("Traceback" in r.stderr), (err[-1] if err else ""), r.stdout

def data():
    csv = ROOT / "small.csv"
    if not csv.exists():
        from hvae_jax.data.synthetic import synthetic_interactions
        it = synthetic_interactions(n_users=300, n_items=80, seed=3)
        csv.write_text("user,item\n" + "".join(f"{it.user_ids[u]},{it.item_ids[i]}\n" for u, i in zip(it.users, it.items)))
    return csv

BASE = ["--epochs", "2", "--latents", "8", "--hidden", "16", "--no-progress"]

def base_run():
    run = ROOT / "base"
    if not (run / "results.json").exists():
        shutil.rmtree(run, ignore_errors=True)
        print(hvae("train", "--data", data(), *BASE, "--workdir", run), file=sys.stderr)
    return run

def copy(name):
    target = ROOT / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(base_run(), target, ignore=shutil.ignore_patterns(".hvae_jax.lock"))
    return target

def report(case, command, result, **extra):
    rc, tb, last, _ = result
    print(json.dumps({"case": case, "command": command, "rc": rc, "traceback": tb, "last": last[:400], **extra}), flush=True)

def changed_setting(case, flags):
    w = copy(case)
    before = snapshot(w)
    res = hvae("train", "--data", data(), *BASE, *flags, "--workdir", w)
    after = snapshot(w)
    ev = hvae("evaluate", "--workdir", w)
    rec = hvae("recommend", "--workdir", w, "--items", "i1,i2", "-k", "3")
    report(case, "train " + " ".join(flags) + " on a finished workdir", res, unchanged=(before == after),
           changed_files=sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))[:8],
           evaluate_rc=ev[0], evaluate_last=ev[2][:200], recommend_rc=rec[0], recommend_last=rec[2][:200])

CASES = {}
def case(f):
    CASES[f.__name__] = f
    return f

@case
def lr(): changed_setting("lr", ["--lr", "0.002"])
@case
def seed(): changed_setting("seed", ["--seed", "5"])
@case
def split_seed(): changed_setting("split_seed", ["--split-seed", "1"])
@case
def hidden(): changed_setting("hidden", ["--hidden", "32"])

@case
def overwrite():
    w = copy("overwrite")
    res = hvae("train", "--data", data(), *BASE, "--lr", "0.002", "--overwrite", "--workdir", w)
    cfg = json.loads((w / "config.json").read_text()) if (w / "config.json").exists() else {}
    report("overwrite", "train --lr 0.002 --overwrite on a finished workdir", res, lr=cfg.get("train", {}).get("learning_rate"))

@case
def interrupted():
    w = copy("interrupted")
    (w / "results.json").unlink()
    res = hvae("evaluate", "--workdir", w)
    keys = sorted(json.loads((w / "results.json").read_text())) if (w / "results.json").exists() else None
    report("interrupted", "evaluate on a run without results.json (interrupted)", res, results_keys=keys)

@case
def empty_split_json():
    w = copy("empty_split_json")
    (w / "split.json").write_text("")
    report("empty_split_json", "evaluate with an empty split.json", hvae("evaluate", "--workdir", w))
    report("empty_split_json_train", "train (resume) with an empty split.json", hvae("train", "--data", data(), *BASE, "--workdir", w))

@case
def truncated_split_npz():
    w = copy("truncated_npz")
    b = (w / "split.npz").read_bytes(); (w / "split.npz").write_bytes(b[: len(b) // 2])
    report("truncated_split_npz", "evaluate with split.npz cut in half", hvae("evaluate", "--workdir", w))
    report("truncated_split_npz_train", "train (resume) with split.npz cut in half", hvae("train", "--data", data(), *BASE, "--workdir", w))

def fresh(case, *flags, data_flags=None):
    w = ROOT / case
    shutil.rmtree(w, ignore_errors=True)
    res = hvae("train", *(data_flags if data_flags is not None else ["--data", data()]), *BASE, *flags, "--workdir", w)
    report(case, "train " + " ".join(map(str, flags)), res, workdir_exists=w.exists(),
           workdir_files=sorted(p.name for p in w.iterdir()) if w.exists() else [])

@case
def lr_nan(): fresh("lr_nan", "--lr", "nan")
@case
def lr_huge(): fresh("lr_huge", "--lr", "1e30")
@case
def beta_cap_nan(): fresh("beta_cap_nan", "--beta-cap", "nan")
@case
def pseudo_inputs_0(): fresh("pseudo_inputs_0", "--prior", "vamp", "--pseudo-inputs", "0")
@case
def hidden_0(): fresh("hidden_0", "--hidden", "0")
@case
def iw_samples_neg(): fresh("iw_samples_neg", "--iw-samples", "-1")
@case
def ks_0(): fresh("ks_0", "--ks", "0")
@case
def ks_10(): fresh("ks_10", "--ks", "10")
@case
def heldout_0(): fresh("heldout_0", "--heldout-users", "0")

@case
def config_folder():
    (ROOT / "afolder").mkdir(exist_ok=True)
    fresh("config_folder", "--config", ROOT / "afolder")

@case
def gated_maybe():
    (ROOT / "gated.toml").write_text('gated = "maybe"\n')
    fresh("gated_maybe", "--config", ROOT / "gated.toml")

@case
def history_folder():
    (ROOT / "afolder").mkdir(exist_ok=True)
    report("history_folder", "recommend --history FOLDER", hvae("recommend", "--workdir", base_run(), "--history", ROOT / "afolder"))

@case
def export_file():
    (ROOT / "a_file").write_text("keep")
    res = hvae("recommend", "--workdir", base_run(), "--export", ROOT / "a_file")
    report("export_file", "recommend --export EXISTING_FILE", res, file_kept=(ROOT / "a_file").read_text() == "keep")

@case
def npy_huge():
    path = ROOT / "huge.npy"
    header = "{'descr': '<i8', 'fortran_order': False, 'shape': (10000000000000, 2), }"
    header += " " * (64 - (10 + len(header) + 1) % 64) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * 160)
    fresh("npy_huge", data_flags=["--data", path])

@case
def given_unseen():
    (ROOT / "given").mkdir(exist_ok=True)
    train = ROOT / "given" / "train.csv"
    test = ROOT / "given" / "test.csv"
    train.write_text("user,item\n" + "".join(f"u{u},i{(u * 7 + k) % 40}\n" for u in range(60) for k in range(8)))
    test.write_text("user,item\n" + "".join(f"u{u},x{k}\n" for u in range(10) for k in range(3)))
    fresh("given_unseen", data_flags=["--protocol", "given", "--train", train, "--test", test])

@case
def few_users():
    path = ROOT / "few.csv"
    path.write_text("user,item\n" + "".join(f"u{u},i{k}\n" for u in range(2) for k in range(8)) + "".join(f"s{u},i{u}\n" for u in range(40)))
    fresh("few_users", data_flags=["--data", path])

for name, function in CASES.items():
    if not ONLY or name in ONLY:
        function()
