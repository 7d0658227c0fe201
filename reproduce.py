"""The README's experiments by name: one source of truth for their commands.

    python3 reproduce.py --list                       # each name, its command, its figures and where they are reported
    python3 reproduce.py table2-neumf-16              # run one; main.py's last line is the result
    python3 reproduce.py ml1m-mf-256 --seed 1 --save_dir runs/mf256-seed1   # extra flags go to its command

`$ML1M` in a command stands for the NCF paper's ML-1M files in data/ (`datasets.py ml-1m`), `$ML1M_VAL` for the same
with a training item per user held out for validation (`datasets.py ml-1m --val`). An experiment on a split of
data/ that datasets.py or split.py makes (ML-1M, Last.fm, the Arena splits) makes it first when its files are
missing, fetching the public data from the copy under ../shared/data where a machine has one. An experiment scored again
with full ranking runs evaluate.py on its best.pt after training (in SAVE_DIR, by default
runs/reproduce/NAME/DATE-TIME).

Where an experiment's figure is reported is read from the documents themselves: every section of README.md,
RESULTS.md and PERFORMANCE.md that names `reproduce.py NAME` (tests/test_docs.py checks that the figure is there).
"""
import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass

from utils import PINNED_NUMERICS, Parser, run_cli

ROOT = os.path.dirname(os.path.abspath(__file__))  # the commands run here
ML1M = "--data_dir data --dataset ml-1m"
ML1M_VAL = "--data_dir data --dataset ml-1m_val"  # the same with a training item per user held out for validation
LASTFM = "data/lastfm-hetrec2011/user_artists.dat"
SHARED = os.path.join(ROOT, "..", "shared", "data")  # copies of the public data sets, on machines without network


def fetch(name, flags=""):
    """The datasets.py command that fetches `name`; from the copy under ../shared/data where there is one."""
    copy = os.path.abspath(os.path.join(SHARED, {"ml-1m": "ncf-ml-1m", "lastfm": "lastfm-hetrec2011"}[name]))
    return f"datasets.py {name}{flags}" + (f" --base_url file://{copy}/" if os.path.isdir(copy) else "")


SYNTHETIC = {"sample": "synthetic.py --out data/sample", "melon_syn": "synthetic.py --scale melon --out data/melon_syn",
             "seed11": "synthetic.py --out data/seed11 --seed 11"}  # seed11: a second sample, drawn with seed 11
SPLITS = {  # dataset -> the commands that make it in data/ (commands joined by && run in turn)
    "ml-1m": fetch("ml-1m"),
    "ml-1m_val": fetch("ml-1m", " --val"),
    "lastfm_random": fetch("lastfm"),
    "lastfm_val": f"{fetch('lastfm')} && split.py --input {LASTFM} --out_dir data --name lastfm_val --test_item random "
                  "--val",
    "lastfm": f"{fetch('lastfm')} && split.py --input {LASTFM} --out_dir data --name lastfm",
    **{f"{raw.split('_')[0]}_arena": f"{SYNTHETIC[raw]} && split.py --input data/{raw}/train.json --out_dir data "
       f"--name {raw.split('_')[0]}_arena --arena" for raw in SYNTHETIC},  # Arena splits: sample_arena, melon_arena
    **{f"{raw.split('_')[0]}_noq": f"{SYNTHETIC[raw]} && split.py --input data/{raw}/train.json --out_dir data "
       f"--name {raw.split('_')[0]}_arena --arena && split.py --input data/{raw}/train.json --out_dir data "
       f"--name {raw.split('_')[0]}_noq --exclude data/{raw.split('_')[0]}_arena.questions.json" for raw in SYNTHETIC},
}
DOCS = ("README.md", "RESULTS.md", "PERFORMANCE.md")  # the documents that report figures
MF = "--model mf --num_neg 8 --batch_size 4096 --lr 3e-3 --no-sparse --epochs 40"
# Rendle et al. 2020's MF recipe: logistic loss, 8 negatives, per-example SGD at lr 0.002 with L2 0.005 on the
# parameters each example touches, N(0, 0.1) embeddings; here a batch of 1024 examples' updates summed (lr 0.002 x 1024
# on the batch's mean loss)
RENDLE_MF = ("--no-exclude_test_neg --model mf --num_neg 8 --optim sgd --batch_size 1024 --lr 2.048 --touched_l2 0.005 "
             "--init_std 0.1")


@dataclass
class Experiment:
    command: str  # a script of this repository (or -m torch.distributed.run ... main.py) and its flags
    paper: str = ""  # the published figure (HR@10 / NDCG@10), where there is one
    readme: str = ""  # the figure the documents report (HR@10 / NDCG@10), in a section that names the experiment
    full_ranking: bool = False  # score best.pt again with evaluate.py --eval full
    then: str = ""  # a command run after it, {save_dir} standing for its save directory

    @property
    def script(self):
        return self.command.split()[0]

    def argv(self):
        return shlex.split(self.command.replace("$ML1M_VAL", ML1M_VAL).replace("$ML1M", ML1M))


def table2(factor, pretrain):
    ours = {(8, True): "0.6838 / 0.4036", (16, True): "0.6929 / 0.4194", (32, True): "0.6919 / 0.4235",
            (64, True): "0.7078 / 0.4500", (8, False): "0.6785 / 0.4036", (16, False): "0.6897 / 0.4168",
            (32, False): "0.6949 / 0.4173", (64, False): "0.7061 / 0.4424"}[factor, pretrain]
    paper = {(8, True): "0.684 / 0.403", (16, True): "0.707 / 0.426", (32, True): "0.726 / 0.445",
             (64, True): "0.730 / 0.447", (8, False): "0.688 / 0.410", (16, False): "0.696 / 0.420",
             (32, False): "0.701 / 0.425", (64, False): "0.705 / 0.426"}[factor, pretrain]
    flags = " --pretrain --finetune_optim sgd --finetune_lr 2" if pretrain else ""
    return Experiment(f"main.py $ML1M --no-exclude_test_neg --no-sparse --latent_dim_mf {factor}{flags}", paper, ours)


def rendle_mf(dim, epochs=256, readme=""):
    """Rendle et al. 2020's MF recipe on ML-1M at size `dim` counted as their code counts it (dim - 1 factors plus a
    bias a user and an item), the epoch chosen on validation; their figure (Figure 2, mean of 8 runs) at 192."""
    return Experiment(f"main.py $ML1M_VAL {RENDLE_MF} --latent_dim_mf {dim - 1} --epochs {epochs}",
                      "0.7294 / 0.4523" if dim == 192 else "", readme, full_ranking=bool(readme))


def table2_seed(factor, seed, readme=""):
    """A Table 2 cell without pretraining with another seed (initialisation, negatives, order; the same split)."""
    cell = table2(factor, False)
    return Experiment(f"{cell.command} --seed {seed}", cell.paper, readme)


LARGE_BATCHES = [  # batch, lr, betas, negatives, dense, README figure: the README's large-batch table
    (8192, 0.008, (0.9, 0.999), 4, True, "0.6818 / 0.4103"), (16384, 0.008, (0.9, 0.999), 4, True, "0.6811 / 0.4086"),
    (16384, 0.02, (0.9, 0.999), 4, True, "0.6833 / 0.4101"), (16384, 0.03, (0.9, 0.999), 4, True, "0.6785 / 0.4082"),
    (32768, 0.03, (0.9, 0.99), 4, True, "0.6770 / 0.4084"), (65536, 0.02, (0.9, 0.999), 4, True, "0.6820 / 0.4078"),
    (65536, 0.05, (0.9, 0.999), 4, True, "0.6783 / 0.4027"), (65536, 0.01, (0.25, 0.5), 4, True, "0.6758 / 0.4032"),
    (16384, 0.01, (0.9, 0.999), 4, False, "0.6786 / 0.4086"), (65536, 0.02, (0.9, 0.999), 8, True, "0.6894 / 0.4197"),
]


def large_batch_name(batch, lr, betas, negatives, dense):
    return (f"ml1m-batch-{batch}-lr-{lr}-neg-{negatives}" + ("" if betas == (0.9, 0.999) else f"-betas-{betas[0]}-{betas[1]}")
            + ("" if dense else "-lazy"))


def large_batch(batch, lr, betas, negatives, dense, readme):
    betas_flags = "" if betas == (0.9, 0.999) else f" --beta1 {betas[0]} --beta2 {betas[1]}"
    return Experiment(f"main.py $ML1M --no-exclude_test_neg --batch_size {batch} --lr {lr} --num_neg {negatives}"
                      f"{betas_flags}{' --no-sparse' if dense else ''} --threads 2", readme=readme)


def arena(scale, command, readme="", then=""):
    """An experiment of the Kakao Arena task on the local Arena split of the synthetic data at `scale` (sample,
    melon or seed11): `command` with {arena} for the split's flags and {questions} for --continue's; readme: song
    nDCG@100 / tag nDCG@10 / score."""
    data = f"--data_dir data --dataset {scale}_arena"
    questions = f"--continue data/{scale}_arena.questions.json --answers data/{scale}_arena.answers.json"
    return Experiment(command.format(arena=data, questions=questions), readme=readme,
                      then=then.format(questions=questions, save_dir="{save_dir}"))


ARENA_EXPERIMENTS = {  # figures: song nDCG@100 / tag nDCG@10 / score, in RESULTS.md's playlist continuation section
    "arena-sample-neumf": arena("sample", "main.py {arena}", "0.2077 / 0.6003 / 0.2666"),
    "arena-sample-pop": arena("sample", "evaluate.py --baseline pop {arena} {questions}", "0.0264 / 0.2579 / 0.0612"),
    "arena-sample-itemknn": arena("sample", "evaluate.py --baseline itemknn {arena} {questions}",
                                  "0.2165 / 0.6003 / 0.2741"),
    "arena-sample-ials": arena("sample", "evaluate.py --baseline ials {arena} {questions}", "0.2148 / 0.6003 / 0.2726"),
    "arena-sample-foldin": Experiment(
        "main.py --data_dir data --dataset sample_noq", readme="0.1899 / 0.5983 / 0.2512",
        then="evaluate.py --checkpoint {save_dir}/best.pt --continue data/sample_arena.questions.json "
             "--answers data/sample_arena.answers.json --out {save_dir}/arena_results.json"),
    "arena-melon-neumf": arena("melon", "main.py {arena}", "0.1511 / 0.5908 / 0.2170",
                               then="bench.py --continuation {save_dir}/best.pt --json {save_dir}/bench.json"),
    "arena-melon-foldin-all": arena("melon", "main.py {arena}", "0.0726 / 0.5908 / 0.1503",
                                    then="evaluate.py --checkpoint {save_dir}/best.pt {questions} "
                                         "--out {save_dir}/arena_results.json --fold_in all"),
    "arena-melon-pop": arena("melon", "evaluate.py --baseline pop {arena} {questions}", "0.0141 / 0.2480 / 0.0492"),
    "arena-melon-itemknn": arena("melon", "evaluate.py --baseline itemknn {arena} {questions}",
                                 "0.2953 / 0.5908 / 0.3396"),
    **{f"arena-{scale}-recipe": arena(scale, "main.py --recipe arena {arena}", figure)
       for scale, figure in (("sample", "0.2250 / 0.6007 / 0.2813"), ("melon", "0.3356 / 0.5899 / 0.3737"))},
    **{f"arena-{scale}-recipe-{method}": arena(  # the recipe, then its checkpoint answering by one method alone
        scale, "main.py --recipe arena {arena}", figure,
        then="evaluate.py --checkpoint {save_dir}/best.pt {questions} --out {save_dir}/" + method + ".json --method "
             + method)
       for scale, method, figure in (("sample", "model", "0.2148 / 0.6003 / 0.2727"),
                                     ("sample", "neighbours", "0.2243 / 0.6007 / 0.2808"),
                                     ("sample", "playlistknn", "0.2142 / 0.5508 / 0.2647"),
                                     ("sample", "itemknn", "0.2204 / 0.6003 / 0.2774"),
                                     ("sample", "ials", "0.2210 / 0.6003 / 0.2779"),
                                     ("melon", "model", "0.2961 / 0.5908 / 0.3403"),
                                     ("melon", "neighbours", "0.3356 / 0.5899 / 0.3737"),
                                     ("melon", "playlistknn", "0.3307 / 0.5420 / 0.3624"),
                                     ("melon", "itemknn", "0.3335 / 0.5908 / 0.3721"),
                                     ("melon", "ials", "0.2874 / 0.5908 / 0.3329"))},
    **{f"arena-{scale}-recipe-foldin-all": arena(  # every question folded into the recipe's model
        scale, "main.py --recipe arena {arena}", figure,
        then="evaluate.py --checkpoint {save_dir}/best.pt {questions} --out {save_dir}/folded.json --method model "
             "--fold_in all")
       for scale, figure in (("sample", "0.1987 / 0.6003 / 0.2590"), ("melon", "0.2849 / 0.5908 / 0.3308"))},
    "arena-seed11-itemknn": arena("seed11", "evaluate.py --baseline itemknn {arena} {questions}",
                                  "0.2146 / 0.5513 / 0.2651"),
    "arena-seed11-recipe": arena("seed11", "main.py --recipe arena {arena}", "0.2196 / 0.5616 / 0.2709"),
    "arena-seed11-recipe-playlistknn": arena(
        "seed11", "main.py --recipe arena {arena}", "0.2113 / 0.5388 / 0.2605",
        then="evaluate.py --checkpoint {save_dir}/best.pt {questions} --out {save_dir}/playlistknn.json --method "
             "playlistknn"),
}


EXPERIMENTS = {
    **{f"table2-neumf-{f}": table2(f, False) for f in (8, 16, 32, 64)},
    **{f"table2-neumf-pre-{f}": table2(f, True) for f in (8, 16, 32, 64)},
    **{f"table2-neumf-{f}-seed-{seed}": table2_seed(f, seed, readme) for (f, seed), readme in {
        (8, 1): "0.6825 / 0.4024", (8, 2): "0.6801 / 0.4079", (16, 1): "0.6854 / 0.4128",
        (16, 2): "0.6899 / 0.4164", (32, 1): "0.6884 / 0.4160", (32, 2): "0.6993 / 0.4205"}.items()},
    "ml1m-seed": Experiment("main.py $ML1M", "0.688 / 0.410", "0.6851 / 0.4067"),
    "ml1m-seed-dense": Experiment("main.py $ML1M --no-sparse", "0.688 / 0.410", "0.6796 / 0.4032"),
    "ml1m-paper-negatives": Experiment("main.py $ML1M --no-exclude_test_neg", "0.688 / 0.410", "0.6810 / 0.4064",
                                       full_ranking=True),
    "ml1m-pretrain-adam": Experiment("main.py $ML1M --no-exclude_test_neg --pretrain", "0.684 / 0.403",
                                     "0.6753 / 0.3995"),
    "ml1m-mf-64-l2-0": Experiment(f"main.py $ML1M --no-exclude_test_neg {MF} --latent_dim_mf 64 --patience 5",
                                  readme="0.7121 / 0.4472"),
    "ml1m-mf-64-l2-1e-5": Experiment(f"main.py $ML1M --no-exclude_test_neg {MF} --latent_dim_mf 64 --l2 1e-5 "
                                     "--patience 3", readme="0.5018 / 0.2818"),
    "ml1m-mf-64": Experiment(f"main.py $ML1M --no-exclude_test_neg {MF} --latent_dim_mf 64 --l2 1e-6 --patience 4",
                             readme="0.7114 / 0.4331", full_ranking=True),
    "ml1m-mf-128-l2-2e-6": Experiment(f"main.py $ML1M --no-exclude_test_neg {MF} --latent_dim_mf 128 --l2 2e-6 "
                                      "--patience 4", readme="0.6899 / 0.4143"),
    "ml1m-mf-128": Experiment(f"main.py $ML1M --no-exclude_test_neg {MF} --latent_dim_mf 128 --l2 1e-6 "
                              "--patience 4", readme="0.7114 / 0.4319", full_ranking=True),
    "ml1m-mf-256": Experiment(f"main.py $ML1M --no-exclude_test_neg {MF} --latent_dim_mf 256 --l2 1e-6 "
                              "--patience 3", "0.730 / 0.447 (the paper's best NeuMF)", "0.7031 / 0.4277",
                              full_ranking=True),
    **{f"ml1m-rendle-mf-{dim}": rendle_mf(dim) for dim in (16, 32, 64, 128, 192)},
    "ml1m-rendle-mf-64-epochs-40": rendle_mf(64, 40, "0.6356 / 0.3687"),
    "ml1m-rendle-mf-64-epochs-160": rendle_mf(64, 160, "0.7228 / 0.4451"),
    "ml1m-val-neumf-8": Experiment("main.py $ML1M_VAL --no-exclude_test_neg --no-sparse --latent_dim_mf 8",
                                   "0.688 / 0.410", "0.6791 / 0.4017", full_ranking=True),
    "ml1m-val-mf-64": Experiment(f"main.py $ML1M_VAL --no-exclude_test_neg {MF} --latent_dim_mf 64 --l2 1e-6 "
                                 "--patience 4", readme="0.7099 / 0.4305", full_ranking=True),
    "ml1m-val-mf-64-l2-0": Experiment(f"main.py $ML1M_VAL --no-exclude_test_neg {MF} --latent_dim_mf 64 --patience 4",
                                      readme="0.7103 / 0.4293", full_ranking=True),
    "ml1m-large-batch": Experiment("main.py $ML1M --no-exclude_test_neg --batch_size 16384 --lr 0.01 --num_neg 8 "
                                   "--no-sparse --threads 2", "0.688 / 0.410", "0.6912 / 0.4201"),
    **{large_batch_name(*row[:5]): large_batch(*row) for row in LARGE_BATCHES},
    "lastfm-neumf": Experiment("main.py --data_dir data --dataset lastfm_random --no-exclude_test_neg",
                               readme="0.7696 / 0.6069", full_ranking=True),
    "lastfm-mf-64": Experiment(f"main.py --data_dir data --dataset lastfm_random --no-exclude_test_neg {MF} "
                               "--latent_dim_mf 64 --l2 1e-6 --patience 4", readme="0.8105 / 0.6686",
                               full_ranking=True),
    "lastfm-mf-256": Experiment(f"main.py --data_dir data --dataset lastfm_random --no-exclude_test_neg {MF} "
                                "--latent_dim_mf 256 --l2 1e-6 --patience 3", readme="0.8142 / 0.6714",
                                full_ranking=True),
    "lastfm-last-line-neumf": Experiment("main.py --data_dir data --dataset lastfm --no-exclude_test_neg",
                                         readme="0.1799 / 0.0949", full_ranking=True),
    "lastfm-val-neumf": Experiment("main.py --data_dir data --dataset lastfm_val --no-exclude_test_neg",
                                   readme="0.7616 / 0.6001"),
    "lastfm-val-mf-64": Experiment(f"main.py --data_dir data --dataset lastfm_val --no-exclude_test_neg {MF} "
                                   "--latent_dim_mf 64 --l2 1e-6 --patience 4", readme="0.7982 / 0.6579"),
    "lastfm-pretrain-adam": Experiment("main.py --data_dir data --dataset lastfm_random --no-exclude_test_neg "
                                       "--pretrain", readme="0.7649 / 0.6088"),
    "lastfm-pretrain-sgd": Experiment("main.py --data_dir data --dataset lastfm_random --no-exclude_test_neg "
                                      "--pretrain --finetune_optim sgd --finetune_lr 2"),
    "lastfm-grid": Experiment("grid.py --data_dir data --dataset lastfm_random --no-exclude_test_neg",
                              readme="best cell 0.7951 / 0.6393"),
    "ml1m-pop": Experiment("baselines.py $ML1M --model pop", "0.4531 / 0.2542 (TopPop, Dacrema et al. 2019)",
                           "0.4531 / 0.2541"),
    "ml1m-itemknn": Experiment("baselines.py $ML1M --model itemknn --tune",
                               "0.6596 / 0.3900 (ItemKNN CF, Dacrema et al. 2019)", "0.6662 / 0.3969"),
    "ml1m-ease": Experiment("baselines.py $ML1M --model ease --tune",
                            "0.7161 / 0.4470 (SLIM, the linear model of Dacrema et al. 2019)", "0.7096 / 0.4495"),
    "ml1m-ials-tune": Experiment("baselines.py $ML1M --model ials --dim 64 --epochs 16 --tune",
                                 "0.722 / 0.445 (iALS at 64, Rendle et al. 2022)", "0.7215 / 0.4462"),
    "ml1m-ials-rendle-settings": Experiment("baselines.py $ML1M --model ials --dim 64 --epochs 16 --l2 0.007 "
                                            "--unobserved 0.3", readme="0.7219 / 0.4453"),
    "ml1m-ials": Experiment("baselines.py $ML1M --model ials --dim 64 --epochs 16 --l2 0.003 --unobserved 0.3",
                            "0.722 / 0.445 (iALS at 64, Rendle et al. 2022)", "0.7215 / 0.4462"),
    "sample-pop": Experiment("baselines.py --model pop", readme="0.0419 / 0.0172"),
    "sample-itemknn": Experiment("baselines.py --model itemknn --tune", readme="0.5889 / 0.2978"),
    "sample-ease": Experiment("baselines.py --model ease --tune", readme="0.5459 / 0.2730"),
    "sample": Experiment("main.py", readme="0.4853 / 0.2385", full_ranking=True),
    "sample-2-ranks": Experiment("-m torch.distributed.run --standalone --nproc_per_node 2 main.py --gpu cpu",
                                 readme="0.4977 / 0.2477"),
    **ARENA_EXPERIMENTS,
}


def dataset_of(argv):
    """(data_dir, dataset) that a main.py or grid.py command line names (the last value of each flag wins)."""
    values = {"--data_dir": "data", "--dataset": None}
    for flag, value in zip(argv, argv[1:]):
        if flag in values:
            values[flag] = value
    return values["--data_dir"], values["--dataset"]


def doc_sections():
    """(document, heading, text) of each section of DOCS (a heading and the lines up to the next one)."""
    sections = []
    for doc in DOCS:
        path = os.path.join(ROOT, doc)
        if not os.path.exists(path):
            continue
        heading, text, in_code = doc, [], False
        with open(path, encoding="utf-8") as f:
            for line in f:
                in_code ^= line.startswith("```")
                if line.startswith("#") and not in_code:
                    sections.append((doc, heading, "".join(text)))
                    heading, text = line.lstrip("#").strip(), []
                text.append(line)
        sections.append((doc, heading, "".join(text)))
    return sections


def cited(text):
    """The experiment names `text` cites as `reproduce.py NAME`."""
    return {name.rstrip(".") for name in re.findall(r"reproduce\.py ([a-z0-9][a-z0-9.-]*)", text)}


def listing():
    reported = {}  # name -> ['FILE: section', ...]
    for doc, heading, text in doc_sections():
        for name in cited(text):
            reported.setdefault(name, []).append(f"{doc}: {heading}" if heading != doc else doc)
    lines = []
    for name, experiment in EXPERIMENTS.items():
        lines.append(f"{name}\n    python3 {experiment.command}"
                     + (" (then evaluate.py --eval full on its best.pt)" if experiment.full_ranking else "")
                     + (f"\n    then python3 {experiment.then}" if experiment.then else ""))
        figures = [f"paper {experiment.paper}"] if experiment.paper else []
        figures += [f"ours {experiment.readme}"] if experiment.readme else []
        if figures:
            lines.append("    " + "; ".join(figures))
        if name in reported:
            lines.append("    reported in " + "; ".join(reported[name]))
    return "\n".join(lines)


def run(name, extra, save_dir, pin=True):
    """Run experiment `name` with `extra` flags appended; returns the exit status of the first command that fails.
    With `pin`, its commands run with PINNED_NUMERICS in their environment."""
    env = dict(os.environ, **PINNED_NUMERICS) if pin else None
    print("pinned: " + " ".join(f"{k}={v}" for k, v in PINNED_NUMERICS.items()) if pin else "not pinned", flush=True)
    experiment = EXPERIMENTS[name]
    argv = experiment.argv() + extra
    data_dir, dataset = dataset_of(argv)
    if dataset in SPLITS and data_dir == "data" and not os.path.exists(os.path.join(ROOT, "data", f"{dataset}.train.rating")):
        for step in SPLITS[dataset].split(" && "):
            status = command([sys.executable, *shlex.split(step)], env)
            if status:
                return status
    save_dir = save_dir or os.path.join(ROOT, "runs", "reproduce", name, time.strftime("%Y%m%d-%H%M%S"))
    if experiment.script == "evaluate.py":  # a baseline's results.json
        os.makedirs(save_dir, exist_ok=True)
        status = command([sys.executable, *argv, "--out", os.path.join(save_dir, "results.json")], env)
    else:
        status = command([sys.executable, *argv, "--out_dir" if experiment.script == "grid.py" else "--save_dir",
                          save_dir], env)
    if not status and experiment.then:
        status = command([sys.executable, *shlex.split(experiment.then.format(save_dir=save_dir))], env)
    if status or not experiment.full_ranking:
        return status
    return command([sys.executable, "evaluate.py", "--checkpoint", os.path.join(save_dir, "best.pt"), "--eval", "full"],
                   env)


def command(argv, env=None):
    print("$ python3 " + shlex.join(argv[1:]), flush=True)
    return subprocess.run(argv, cwd=ROOT, env=env).returncode


def main():
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", choices=EXPERIMENTS, metavar="NAME", help="the experiment to run")
    parser.add_argument("--list", action="store_true", help="list the experiments")
    parser.add_argument("--save_dir", default=None, help="where its run goes (default: runs/reproduce/NAME/DATE-TIME)")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                        help="run with the floating-point code paths pinned (" + " ".join(
                            f"{k}={v}" for k, v in PINNED_NUMERICS.items()) + "), so that the figures are the same "
                        "on any x86-64 machine with AVX2; --no-pin: this machine's own")
    args, extra = parser.parse_known_args()
    if args.list:
        return print(listing())
    if args.name is None:
        parser.error("name an experiment (python3 reproduce.py --list shows them)")
    sys.exit(run(args.name, extra, args.save_dir, args.pin))


if __name__ == "__main__":
    run_cli(main)
