"""Speed figures of the lab, as ratios measured in one run (absolute times drift on shared machines).

    python scripts/bench.py --quick --json bench.json [--device cpu|cuda] [--model tiny]

Measures, each with min/median/max over repeats:
- the fp32 matmul peak of this machine (GFLOP/s);
- BC, ILQL and per-utterance Q update times on the same GuessWhich batch and model,
  their ratios, training tokens/s and model FLOPs utilisation (6N per token plus
  attention, as nanoGPT counts it) against the measured peak;
- candidate sampling cost of the per-utterance Q learner (candidates/s).
Updates of the different learners are interleaved, repeat by repeat, so load on the
machine hits them alike.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from dialogue_rl.algos import LEARNERS
from dialogue_rl.data import collate_tokens, generate, tokenize_dataset
from dialogue_rl.data.generate import DataConfig
from dialogue_rl.models import MODEL_PRESETS, build_model, build_word_tokenizer
from dialogue_rl.models.lm import n_params
from dialogue_rl.models.tokenizer import codec as make_codec
from dialogue_rl.train import TrainConfig, make_optimizer
from envs.guess_which import GuessWhichEnv

log = logging.getLogger("bench")


def stats(xs: list[float]) -> dict[str, float]:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}


def matmul_peak(device: torch.device, n: int, repeats: int) -> dict[str, float]:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    out = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(2 * n**3 / (time.perf_counter() - t) / 1e9)
    return stats(out[1:])


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """nanoGPT's count: 6 N (non-embedding) + 12 L H T per token for forward + backward."""
    cfg = model.config
    return 6 * n_params(model, non_embedding=True) + 12 * cfg.n_layer * cfg.n_embd * seq_len


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats (under 3 minutes on 2 cores)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="tiny", choices=sorted(MODEL_PRESETS))
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    repeats = 5 if args.quick else 20
    torch.manual_seed(0)

    cfg = DataConfig(env_id="dialogue_rl/GuessWhich-v0", mixture={"expert": 0.3, "novice": 0.4, "random": 0.3},
                     n_train=args.batch_size, n_validation=1, seed=0)
    rows = generate(cfg)["train"]
    tok = build_word_tokenizer(GuessWhichEnv.vocabulary())
    codec = make_codec(tok)
    data = tokenize_dataset(rows, codec)
    batch = {k: v.to(device) for k, v in collate_tokens([data[i] for i in range(len(data))], tok.pad_token_id).items()}
    n_tokens = int(batch["attention_mask"].sum())

    learners = {}
    for name in ("bc", "ilql", "utterance_q"):
        torch.manual_seed(0)
        model = build_model(MODEL_PRESETS[args.model], tok).to(device)
        learner = LEARNERS[name](model).to(device)
        examples = learner.make_examples(rows, codec, 512)
        lbatch = learner.collate([examples[i] for i in range(min(len(examples), args.batch_size))], tok.pad_token_id)
        lbatch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in lbatch.items()}
        if name == "bc":
            lbatch = batch
        opt = make_optimizer(learner, TrainConfig())
        learner.update(lbatch, opt)  # warm-up (and, for utterance_q, fill the candidate cache)
        learners[name] = (learner, opt, lbatch)

    times: dict[str, list[float]] = {k: [] for k in learners}
    for _ in range(repeats):
        for name, (learner, opt, lbatch) in learners.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            learner.update(lbatch, opt)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t)

    peak = matmul_peak(device, 1024 if args.quick else 2048, repeats)
    seq_len = batch["input_ids"].shape[1]
    fpt = flops_per_token(learners["bc"][0].model, seq_len)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "device": str(device), "model": args.model, "batch_dialogues": args.batch_size, "batch_tokens": n_tokens,
        "matmul_peak_gflops": peak["median"], "matmul_peak_gflops_stats": peak,
        "update_s": {k: stats(v) for k, v in times.items()},
        "tokens_per_s_bc": n_tokens / med["bc"], "tokens_per_s_ilql": n_tokens / med["ilql"],
        "mfu_bc": fpt * n_tokens / med["bc"] / (peak["median"] * 1e9),
        "mfu_ilql": fpt * n_tokens / med["ilql"] / (peak["median"] * 1e9),
        "ilql_over_bc_update": med["ilql"] / med["bc"],
        "uq_over_bc_update": med["utterance_q"] / med["bc"],
        "ilql_over_bc_update_per_repeat": stats([i / b for i, b in zip(times["ilql"], times["bc"])]),
        "uq_over_bc_update_per_repeat": stats([u / b for u, b in zip(times["utterance_q"], times["bc"])]),
    }
    uq = learners["utterance_q"][0]
    if hasattr(uq, "sampling_report"):
        out["uq_sampling"] = uq.sampling_report(sum(times["utterance_q"]))
    for k, v in out.items():
        log.info("%s: %s", k, json.dumps(v) if isinstance(v, dict) else (f"{v:.4g}" if isinstance(v, float) else v))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
