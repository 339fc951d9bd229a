"""The hf probe's Ray Train worker loop: one process per rank fine-tunes the Candidate with DeepSpeed
on every remaining subset size, evaluates it on the held-out set, and reports an Observation
(and a checkpoint of its progress) after each size.

With `metric="task"` every Observation also keeps, under `extra[QUERIES_KEY]`, one record per
held-out query (QUERY_FIELDS): its id and text (the same for every Candidate of a sweep that
holds out the same rows), whether the fine-tuned model answered it right, its answer, and what
answering cost. The last size a probe ran is the one the `route` stage reads
(lensray.stages.route.queries). With `ProbeConfig.weights_path` set, rank 0 also saves the
fine-tuned model there after each size (so the last size's weights remain) and names the place in
`extra["weights"]`.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lensray.core.environ import environ
from lensray.core.errors import one_line
from lensray.core.types import Observation
from lensray.data.dataset import IGNORE_INDEX
from lensray.probe.hf.loading import load_model, load_tokenizer, save_model
from lensray.probe.hf.ntk import NTKStats, ntk_term
from lensray.probe.hf.recipe import ProbeConfig, ProbeSpec

QUERIES_KEY = "queries"
"""The key of Observation.extra under which a task-metric probe keeps its per-query records."""
QUERY_FIELDS = {
    "id": "the held-out row's index in the source data",
    "query": "the query as a user writes it (the record's text, or the prompt field)",
    "correct": "1 when the response is right (every target, or an exact match), else 0",
    "answer": "the response's canonical answer (lensray.data.dataset.canonical_answer)",
    "output": "the response as generated",
    "tokens": "prompt plus generated tokens (the `aggregate` design: an equal share of every proposal and "
              "aggregation's)",
    "flops": "2 x parameters x tokens: one forward pass over each position, the cache keeping the rest",
    "latency_s": "wall seconds of the generation batch it was in, shared equally among its prompts",
}
"""Each per-query record's fields and their meaning."""
PHASES = {
    "tokenize": "the driver: the candidate's tokenizer loaded and the data tokenised (or read from its cache)",
    "ray_train_start": "from TorchTrainer.fit() to the first line of the worker loop: Ray Train's controller, "
                       "the worker group and the process group (not timed after a restart; in process, the "
                       "local mode's set-up only)",
    "worker_setup": "the worker: torch, transformers and DeepSpeed imported (in process, once per trial "
                    "process), its rows and tokenizer set up",
    "model_load": "the pretrained weights read (first size only), copied and moved to the device (every size "
                  "starts from them)",
    "zero_shot": "the pretrained model's held-out loss (first size only)",
    "ntk": "the NTK term's per-example gradients (first size only)",
    "deepspeed_init": "deepspeed.initialize: the engine and the optimizer (and its op build, once)",
    "propose": "the `aggregate` design: the fine-tuned model's proposals for its training samples",
    "train": "the optimizer steps (under the `aggregate` design also those on the aggregation samples)",
    "eval": "the held-out loss, and with metric task the generations and their scoring",
    "weights": "the fine-tuned model saved (ProbeConfig.weights_path only)",
    "checkpoint": "the previous size's report to Ray Train (in process, to Tune), with rank 0's progress checkpoint",
}
"""The phases of a probe's wall time in `extra["phase_s"]` (rank 0's seconds; each size's since the
previous report, so the first size carries the start-up). `lensray bench probe` prints them."""


def _pad(rows, pad_id: int, torch, device):
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return ids.to(device), mask.to(device), labels.to(device)


def peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def _evaluate(model, rows, pad_id, batch, rank, world, torch, device) -> float:
    """Mean response-token cross-entropy over all `rows`, each rank taking rows[rank::world]."""
    import torch.distributed as dist

    total = torch.zeros(2, dtype=torch.float64, device=device)
    mine = rows[rank::world]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(mine), batch):
            ids, mask, labels = _pad(mine[i : i + batch], pad_id, torch, device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            total[0] += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
            ).double()
            total[1] += (target != IGNORE_INDEX).sum()
    model.train(was_training)
    if world > 1:
        dist.all_reduce(total)
    return float(total[0] / total[1].clamp(min=1))


def model_context(model) -> int | None:
    """The most positions `model` (or its transformers config) takes: the config's
    max_position_embeddings or n_positions, or None when it names neither."""
    config = getattr(model, "config", model)
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def generate(model, prompts, pad_id: int, eos_id: int, cfg: ProbeConfig, rank, world, torch, device,
             timings: list[float] | None = None, samples: int = 1, temperature: float = 0.0,
             top_p: float = 1.0) -> list[list[int]]:
    """Responses (token ids up to the end token) to prompts[rank::world]: greedy, or with a
    `temperature` > 0 `samples` draws each by nucleus sampling (`top_p`), the draws of prompt i
    at [i * samples, (i + 1) * samples). Prompts of one length are batched together, so no
    padding enters the model (left padding is handled differently, or not at all, by different
    architectures). `timings`, when given, receives each prompt's share of its batch's wall
    seconds, in the order of the prompts."""
    mine = prompts[rank::world]
    context = model_context(model)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(mine):
        by_length.setdefault(len(p), []).append(i)
    out: list[list[int]] = [[] for _ in range(len(mine) * samples)]
    seconds = [0.0] * len(mine)
    if samples > 1 and temperature <= 0:
        raise ValueError(f"generate: {samples} samples a prompt need a temperature > 0 (greedy gives one)")
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "num_return_sequences": samples} \
        if temperature > 0 else {"do_sample": False}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for n, rows in by_length.items():
            new = min(cfg.max_new_tokens, context - n) if context else cfg.max_new_tokens
            for j in range(0, len(rows), cfg.eval_batch) if new > 0 else ():
                chunk = rows[j : j + cfg.eval_batch]
                ids = torch.tensor([mine[i] for i in chunk], dtype=torch.long, device=device)
                start = time.perf_counter()
                gen = model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                    eos_token_id=eos_id, pad_token_id=pad_id, **sampling,
                )
                share = (time.perf_counter() - start) / len(chunk)
                drawn = gen[:, n:].tolist()  # the draws of chunk[0], then of chunk[1], ...
                for k, i in enumerate(chunk):
                    seconds[i] = share
                    for d in range(samples):
                        row = drawn[k * samples + d]
                        out[i * samples + d] = row[: row.index(eos_id)] if eos_id in row else row
    model.train(was_training)
    if timings is not None:
        timings.extend(seconds)
    return out


def _task_metric(model, spec: ProbeSpec, config: dict[str, Any], tokenizer, n_params: int, rank, world, torch,
                 device) -> dict[str, Any]:
    """metric=task: every rank generates for its share of the held-out prompts; the outputs are
    gathered and scored against the references under the data's design (lensray.data.dataset),
    and judged one by one into the per-query records (QUERY_FIELDS). Under the `aggregate`
    design the answers scored are propose-and-aggregate's (`_aggregated`), and the greedy ones'
    figures are kept beside them."""
    import torch.distributed as dist

    from lensray.data.dataset import judge_outputs, score_outputs

    prompts = config["eval_prompts"]
    seconds: list[float] = []
    mine = generate(model, prompts, tokenizer.pad_token_id, tokenizer.eos_token_id, spec.probe, rank, world, torch,
                     device, seconds)
    shares = [(mine, seconds)]
    if world > 1:
        shares = [None] * world
        dist.all_gather_object(shares, (mine, seconds))
    outputs, tokens, latency = [""] * len(prompts), [0.0] * len(prompts), [0.0] * len(prompts)
    for r, (share, share_s) in enumerate(shares):  # rank r generated prompts[r::world]
        for k, (ids, s) in enumerate(zip(share, share_s)):
            i = r + k * world
            outputs[i], tokens[i], latency[i] = tokenizer.decode(ids, skip_special_tokens=True), len(prompts[i]) + len(ids), s
    design, schema = spec.data.sample_design, spec.data.schema
    aggregated: dict[str, Any] = {}
    if spec.aggregate is not None:
        greedy = score_outputs(outputs, config["eval_references"], design, schema)
        outputs, tokens, latency, aggregated = _aggregated(model, spec, config, tokenizer, rank, world, device)
        aggregated |= {"greedy_error": greedy.error, "greedy_error_smoothed": greedy.smoothed_error,
                       "greedy_accuracy": greedy.accuracy}
    result = score_outputs(outputs, config["eval_references"], design, schema)
    judged = judge_outputs(outputs, config["eval_references"], design, schema)
    queries = [
        {"id": int(qid), "query": text, "correct": int(right), "answer": answer, "output": output,
         "tokens": t, "flops": 2.0 * n_params * t, "latency_s": s}
        for (qid, text), output, t, s, (right, answer)
        in zip(config["eval_queries"], outputs, tokens, latency, judged)
    ]
    return {
        "metric": "task", "error": result.error, "error_smoothed": result.smoothed_error,
        "accuracy": result.accuracy, "f1": result.f1, "format_error_rate": result.format_error_rate,
        "scored": result.n, "sample_output": outputs[0], QUERIES_KEY: queries, **aggregated,
    }


def _aggregated(model, spec: ProbeSpec, config: dict[str, Any], tokenizer, rank, world, device
                ) -> tuple[list[str], list[float], list[float], dict[str, Any]]:
    """The `aggregate` design's answers to the held-out queries (rank 0 proposes and aggregates,
    lensray.stages.aggregate.probe, and every rank receives them), each query's equal share of
    the tokens and seconds that took, and its figures for `extra`."""
    from dataclasses import asdict

    import torch.distributed as dist

    from lensray.stages.aggregate.probe import propose_and_aggregate
    from lensray.stages.aggregate.propose import Cost, draft_accuracy

    ac = spec.aggregate
    shared: list[Any] = [None]
    if rank == 0:
        cost = Cost()
        queries = [text for _, text in config["eval_queries"]]
        answers, drafts = propose_and_aggregate(model, tokenizer, spec.data, queries, config["eval_prompts"], ac, cost)
        right = draft_accuracy(drafts, config["eval_references"], spec.data)
        shared = [(answers, asdict(cost), sum(right) / len(right))]
    if world > 1:
        dist.broadcast_object_list(shared, src=0, device=device)
    answers, cost, drafts_right = shared[0]
    n = len(answers)
    extra = {"aggregate_k": ac.k, "aggregate_rounds": ac.rounds, "draft_accuracy": drafts_right,
             "generations_per_query": cost["generations"] / n, "answer_flops_per_query": cost["flops"] / n}
    return answers, [cost["tokens"] / n] * n, [cost["seconds"] / n] * n, extra


class _Clock:
    """Rank 0's wall seconds by phase (PHASES), collected until the next `take`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def take(self) -> dict[str, float]:
        out, self.seconds = self.seconds, {}
        return out


class _Train:
    """One fine-tune of one size on this rank: the DeepSpeed engine and what it measured."""

    def __init__(self, engine, steps: int, trainable, before, first_loss, last_loss, tokens: float, train_s: float):
        self.engine, self.steps, self.trainable, self.before = engine, steps, trainable, before
        self.first_loss, self.last_loss, self.tokens, self.train_s = first_loss, last_loss, tokens, train_s


class _Worker:
    """The state of one Ray Train worker: its rank, device, data and the pretrained model's
    zero-shot loss and NTK statistics (measured once, at the first size)."""

    def __init__(self, config: dict[str, Any], torch, dist, ctx) -> None:
        self.config, self.torch, self.dist = config, torch, dist
        self.spec = ProbeSpec.from_dict(config["spec"])
        self.cfg = cfg = self.spec.probe
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        if config["use_gpu"]:
            self.device = torch.device("cuda", ctx.get_local_rank())
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
            torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
        self.pad_id = config["pad_id"]
        self.tokenizer = load_tokenizer(self.spec) if cfg.metric == "task" else None
        self.train_rows = [tuple(r) for r in config["train_rows"]]
        self.eval_rows = [tuple(r) for r in config["eval_rows"]]
        self.global_batch = cfg.micro_batch * self.world
        self.ntk: NTKStats | None = None
        self.zero_shot: float | None = None
        self.pristine: tuple[Any, int] | None = None
        self.aggregation: dict[str, Any] = {}
        """The `aggregate` design's figures of the size being fine-tuned (train_aggregator)."""
        self.clock = _Clock()

    def agree(self, value: float, op) -> float:
        """`value` reduced over every rank with `op` (SUM, MAX), so all ranks decide alike."""
        t = self.torch.tensor([value], dtype=self.torch.float64, device=self.device)
        if self.world > 1:
            self.dist.all_reduce(t, op=op)
        return float(t)

    def evaluate(self, model) -> float:
        return _evaluate(model, self.eval_rows, self.pad_id, self.cfg.eval_batch, self.rank, self.world, self.torch, self.device)

    def load(self) -> tuple[Any, int] | str:
        """A fresh copy of the pretrained model (and its parameter count) on this device, or why it
        cannot load on some rank (every rank stops together). The weights are read once per probe;
        each size starts from an in-memory copy of them (on the host, so the device holds one model)."""
        import copy

        torch, spec = self.torch, self.spec
        torch.manual_seed(self.cfg.seed)  # every size (and LoRA's adapters, on every rank) starts alike
        with self.clock.phase("model_load"):
            if self.pristine is None:
                try:
                    self.pristine = load_model(spec, torch)
                    load_error = ""
                except Exception as e:  # corrupt or incompatible weights, peft target mismatch, ...
                    load_error = f"cannot load {spec.model!r} for fine-tuning: {one_line(e)}"
                if self.agree(float(bool(load_error)), self.dist.ReduceOp.MAX):
                    return load_error or f"cannot load {spec.model!r} on another worker"
            pristine, n_params = self.pristine
            model = copy.deepcopy(pristine).to(self.device)
        if self.zero_shot is None:
            with self.clock.phase("zero_shot"):
                self.zero_shot = self.evaluate(model)
            if self.rank == 0 and self.cfg.ntk_examples:
                from lensray.probe.hf.ntk import diag_ntk

                with self.clock.phase("ntk"):
                    self.ntk = diag_ntk(model, self.train_rows[: self.cfg.ntk_examples], self.device)
        return model, n_params

    def train(self, model, size: int) -> _Train | str:
        """Fine-tune `model` on the first `size` examples with DeepSpeed, or say why it stopped
        (divergence, memory)."""
        import deepspeed

        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        before = {n: p.detach().clone() for n, p in trainable}
        with self.clock.phase("deepspeed_init"):
            engine, _, _, _ = deepspeed.initialize(
                model=model, model_parameters=[p for _, p in trainable], config=self.config["ds_config"]
            )
        run = _Train(engine, 0, trainable, before, None, None, 0.0, 0.0)
        return self.steps(run, self.train_rows[:size], [self.cfg.seed, size], f"size {size}")

    def steps(self, run: _Train, rows: list, seed: list[int], what: str) -> _Train | str:
        """Continue `run`'s engine for `epochs` passes over `rows` (cfg.max_steps steps when set),
        in an order drawn from `seed`; `run` counts the steps, tokens and seconds, or the reason
        it stopped (divergence, memory) is returned."""
        import numpy as np

        cfg, torch, dist, engine = self.cfg, self.torch, self.dist, run.engine
        steps = cfg.max_steps or cfg.epochs * math.ceil(len(rows) / (self.global_batch * cfg.grad_accum))
        rng = np.random.default_rng(seed)
        order: list[int] = []
        first_loss = mean_loss = None
        train_start = time.perf_counter()
        engine.train()
        for step in range(steps):
            step_loss = 0.0
            for _ in range(cfg.grad_accum):
                if len(order) < self.global_batch:  # next epoch(s): a fresh permutation of the rows
                    order += [int(i) for i in rng.permutation(len(rows))] * math.ceil(self.global_batch / len(rows))
                batch_idx, order = order[: self.global_batch], order[self.global_batch :]
                mine = [rows[i] for i in batch_idx[self.rank * cfg.micro_batch : (self.rank + 1) * cfg.micro_batch]]
                ids, mask, labels = _pad(mine, self.pad_id, torch, self.device)
                loss = engine(input_ids=ids, attention_mask=mask, labels=labels).loss
                engine.backward(loss)
                engine.step()
                step_loss += float(loss.detach()) / cfg.grad_accum
                run.tokens += float(mask.sum())
            mean_loss = self.agree(step_loss, dist.ReduceOp.SUM) / self.world
            first_loss = mean_loss if first_loss is None else first_loss
            if not math.isfinite(mean_loss) or mean_loss > cfg.diverge_factor * first_loss:
                return (f"diverged at {what}, step {step + 1}/{steps}: training loss {mean_loss:.4g} "
                        f"(first {first_loss:.4g}); lower ProbeConfig.lr={cfg.lr:g}")
            rss = self.agree(peak_rss_gb(), dist.ReduceOp.MAX)
            if cfg.max_rss_gb and rss > cfg.max_rss_gb:
                return (f"out of memory at {what}: worker peak RSS {rss:.2f} GB exceeds "
                        f"ProbeConfig.max_rss_gb={cfg.max_rss_gb:g}; lower micro_batch or raise the limit")
        train_s = time.perf_counter() - train_start
        self.clock.add("train", train_s)
        run.steps += steps
        run.first_loss = first_loss if run.first_loss is None else run.first_loss
        run.last_loss, run.train_s = mean_loss, run.train_s + train_s
        return run

    def train_aggregator(self, run: _Train, size: int) -> _Train | str:
        """The `aggregate` design: the plainly fine-tuned model proposes K drafts for each of the
        first `size` training samples (rank 0, lensray.stages.aggregate.probe), and `run`
        continues on their aggregation samples together with the plain ones; or why not."""
        from dataclasses import asdict

        from lensray.stages.aggregate.probe import aggregation_rows
        from lensray.stages.aggregate.propose import Cost
        from lensray.stages.aggregate.samples import aggregation_length

        ac, module = self.spec.aggregate, run.engine.module
        limit = aggregation_length(self.spec.data.max_length, ac, model_context(module))
        shared: list[Any] = [None]
        with self.clock.phase("propose"):
            if self.rank == 0:
                cost = Cost()
                rows, dropped = aggregation_rows(module, self.tokenizer, self.spec.data,
                                                 self.config["train_samples"][:size], ac, limit, cost)
                shared = [(rows, dropped, asdict(cost))]
            if self.world > 1:
                self.dist.broadcast_object_list(shared, src=0, device=self.device)
        rows, dropped, cost = shared[0]
        if not rows:
            return (f"aggregate design at size {size}: none of the {size} aggregation samples fits in {limit} "
                    "tokens (the prompt, K drafts and the whole target); lower aggregate.k or aggregate.max_new_tokens")
        self.aggregation = {"aggregate_samples": len(rows), "aggregate_dropped": dropped,
                            "aggregate_draft_flops": cost["flops"], "aggregate_draft_s": cost["seconds"]}
        return self.steps(run, self.train_rows[:size] + rows, [self.cfg.seed, size, 1], f"size {size} (aggregation)")

    def observe(self, size: int, n_params: int, run: _Train, restarts: int, start: float) -> dict[str, Any] | str:
        """Evaluate the fine-tuned model: the Observation of `size` (as a dict), or why not."""
        import numpy as np

        cfg, module = self.cfg, run.engine.module
        with self.clock.phase("eval"):
            loss = self.evaluate(module)
            if not math.isfinite(loss):
                return f"diverged at size {size}: held-out loss is {loss}; lower ProbeConfig.lr={cfg.lr:g}"
            task: dict[str, Any] = {}
            if cfg.metric == "task":
                task = _task_metric(module, self.spec, self.config, self.tokenizer, n_params, self.rank, self.world,
                                    self.torch, self.device)
        tokens = self.agree(run.tokens, self.dist.ReduceOp.SUM)
        delta = math.sqrt(sum(float((p.detach() - run.before[n]).float().pow(2).sum()) for n, p in run.trainable))
        extra: dict[str, Any] = {
            "steps": run.steps,
            "lr": cfg.lr,
            "zero_shot_loss": self.zero_shot,
            "eval_loss": loss,
            "train_loss_first": run.first_loss,
            "train_loss_last": run.last_loss,
            "weight_delta": delta,
            "n_params": n_params,
            "trainable_params": sum(p.numel() for _, p in run.trainable),
            "train_s": run.train_s,
            "tokens_per_s": tokens / run.train_s if run.train_s > 0 else 0.0,
            "peak_rss_gb": self.agree(peak_rss_gb(), self.dist.ReduceOp.MAX),
            "num_workers": self.world,
            "in_process": self.config["in_process"],
            "dist_backend": self.dist.get_backend() if self.dist.is_initialized() else None,
            "zero_stage": self.config["ds_config"]["zero_optimization"]["stage"],
            "lora": cfg.lora,
            "restarts": restarts,
            **self.config["data_counts"],
            **self.aggregation,
            **task,
        }
        if self.device.type == "cuda":
            extra["device_name"] = self.torch.cuda.get_device_name(self.device)
            extra["peak_gpu_gb"] = self.agree(self.torch.cuda.max_memory_allocated(self.device) / 1e9, self.dist.ReduceOp.MAX)
        if self.ntk is not None:
            f, log_f = ntk_term(self.ntk, cfg.lr, run.steps)
            extra |= {
                "ntk_F": f, "ntk_log_F": log_f,
                "ntk_theta_mean": float(np.mean(self.ntk.theta)), "ntk_residual_mean": float(np.mean(self.ntk.residual)),
                "ntk_t": run.steps, "ntk_eta": cfg.lr, "ntk_examples": len(self.ntk.theta),
            }
        return {
            "candidate": self.spec.candidate, "size": size, "loss": task.get("error_smoothed", loss), "tokens": int(tokens),
            "flops": 6.0 * n_params * tokens + self.aggregation.get("aggregate_draft_flops", 0.0),
            "wall_s": time.perf_counter() - start, "extra": extra,
        }


def _train_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train worker loop: for each size, copy the pretrained weights, fine-tune them with
    DeepSpeed, evaluate, report. In process, inside a process group of one."""
    if not config["in_process"]:
        return _fine_tune_sizes(config)
    import torch.distributed as dist

    if dist.is_initialized():
        return {"observations": [], "error": "probe.in_process: this process has a torch.distributed group already; "
                                             "run the probe in a worker group"}
    with _group_of_one():
        return _fine_tune_sizes(config)


@contextmanager
def _group_of_one():
    """A gloo process group of rank 0 alone, for an in-process probe (DeepSpeed needs one; Ray
    Train's local mode makes one only under torchrun), taken down through DeepSpeed, which drops
    its own references to it, so that a later probe in this process can start another."""
    import deepspeed.comm
    import torch.distributed as dist

    # DeepSpeed reads the ranks from the environment, as torchrun sets them.
    with environ(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1"):
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        try:
            yield
        finally:
            if deepspeed.comm.is_initialized():
                deepspeed.comm.destroy_process_group()
            elif dist.is_initialized():
                dist.destroy_process_group()


def _fine_tune_sizes(config: dict[str, Any]) -> dict[str, Any]:
    """The loop of `_train_worker`."""
    entered = time.time()
    import gc
    import logging

    import deepspeed
    import ray.train
    import torch
    import torch.distributed as dist
    import transformers

    transformers.logging.set_verbosity_error()
    deepspeed.utils.logger.setLevel(logging.WARNING)
    if config["in_process"]:  # rank 0 of one; a retried trial resumes from Tune's checkpoint
        worker = _Worker(config, torch, dist, _ALONE)
        observations, restarts = [], 0
    else:
        worker = _Worker(config, torch, dist, ray.train.get_context())
        observations, restarts = _resume_state(ray.train.get_checkpoint())
    worker.clock.add("worker_setup", time.time() - entered)
    if not restarts:  # a restarted group's start is not timed
        worker.clock.add("tokenize", config.get("tokenize_s", 0.0))
        worker.clock.add("ray_train_start", max(0.0, entered - config.get("fit_started", entered)))
    finished = {o["size"] for o in observations}
    error = None
    for size in [d for d in worker.spec.data.sizes if d not in finished]:
        start = time.perf_counter()
        loaded = worker.load()
        if isinstance(loaded, str):
            error = loaded
            break
        model, n_params = loaded
        run = worker.train(model, size)
        if worker.spec.aggregate is not None and not isinstance(run, str):
            run = worker.train_aggregator(run, size)
        if isinstance(run, str):
            error = run
            break
        obs = worker.observe(size, n_params, run, restarts, start)
        if isinstance(obs, str):
            error = obs
            break
        if worker.cfg.weights_path and worker.rank == 0:
            with worker.clock.phase("weights"):
                save_model(run.engine.module, worker.tokenizer or load_tokenizer(worker.spec), worker.cfg.weights_path)
            obs["extra"]["weights"] = worker.cfg.weights_path
        obs["extra"]["phase_s"] = worker.clock.take()
        observations.append(obs)
        with worker.clock.phase("checkpoint"):  # counted in the next size's phases
            _report(obs, observations, restarts, worker.rank, config)
        del run, model, loaded  # the next size starts again from a copy of the pretrained weights
        gc.collect()
        if config["use_gpu"]:
            torch.cuda.empty_cache()
    return {"observations": observations, "error": error}


PROGRESS_FILE = "probe_progress.json"
"""A probe's checkpoint: the Observations it finished and how often its workers restarted. Every
size starts again from the pretrained weights, so this is all a restarted worker group needs."""


def _resume_state(checkpoint) -> tuple[list[dict[str, Any]], int]:
    """(finished observations, restarts so far) of a worker group restarted from `checkpoint`."""
    if checkpoint is None:
        return [], 0
    with checkpoint.as_directory() as folder:
        state = json.loads((Path(folder) / PROGRESS_FILE).read_text())
    return state["observations"], state["restarts"] + 1


class _Alone:
    """The Ray Train context of an in-process probe: rank 0 of a world of one. (Inside a Tune
    trial Ray refuses `ray.train.get_context`, which is for a worker group's workers.)"""

    def get_world_rank(self) -> int:
        return 0

    def get_world_size(self) -> int:
        return 1

    def get_local_rank(self) -> int:
        return 0


_ALONE = _Alone()


def _report(obs: dict[str, Any], observations: list[dict[str, Any]], restarts: int, rank: int,
            config: dict[str, Any]) -> None:
    """Report one size, with rank 0's checkpoint of everything finished so far. An in-process
    probe reports to Tune itself when it runs in a trial (`tune_done`: the sizes done before
    it), with the trial's checkpoint of every size done, and to nobody otherwise (run_probe
    returns its observations)."""
    import tempfile

    import ray.train

    if config["in_process"]:
        if config["tune_done"] is not None:
            from ray import tune

            from lensray.sweep.trial import report_with_progress

            report_with_progress(tune, Observation.from_dict(obs), set(config["tune_done"]) | {o["size"] for o in observations})
        return

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            (Path(folder) / PROGRESS_FILE).write_text(json.dumps({"observations": observations, "restarts": restarts}))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(obs, checkpoint=checkpoint)
