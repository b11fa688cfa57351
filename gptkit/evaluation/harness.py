"""lm-evaluation-harness on a gptkit model: `gptkit eval RUN --tasks NAMES [--task-dir DIR]`.

lm-eval 0.4 has no plugin registry for outside models, so gptkit's CLI is the entry point: it
hands `simple_evaluate` a `GptkitLM` that answers lm-eval's three request types with gptkit's
own batching: loglikelihood (lm.py), loglikelihood_rolling (lm-eval's rolling windows, scored
by lm.py) and generate_until (generation.py: KV cache, stop strings). Imported only for
--tasks, once `optional.require("lm_eval")` has passed.
"""

from __future__ import annotations

import contextlib
import difflib
import json
from pathlib import Path

from lm_eval.api.model import LM

from gptkit.errors import GptkitError
from gptkit.evaluation.generation import DEFAULTS, complete
from gptkit.evaluation.lm import encode_pair, load_lm, loglikelihoods
from gptkit.model.config import SampleConfig

_KEEP = ("results", "groups", "group_subtasks", "versions", "n-shot", "higher_is_better",
         "n-samples")  # fmt: skip


class GptkitLM(LM):
    """lm-eval's model interface over a gptkit model and tokenizer. (LM is lm-eval's API: the
    one base class gptkit subclasses besides nn.Module and Exception.)"""

    def __init__(self, model, tok, *, batch_size: int = 8):
        super().__init__()
        self.model, self.tok, self.batch_size = model, tok, batch_size

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [encode_pair(self.tok, *r.args) for r in requests]
        return loglikelihoods(self.model, pairs, batch_size=self.batch_size)

    def loglikelihood_rolling(self, requests) -> list[float]:
        """Each text's log-likelihood after end-of-text, in disjoint block_size windows."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        owner, pairs = [], []
        for i, r in enumerate(requests):
            windows = get_rolling_token_windows(
                self.tok.encode(r.args[0]), prefix_token=self.tok.eot_id,
                max_seq_len=self.model.config.block_size, context_len=1)  # fmt: skip
            for w in windows:
                owner.append(i)
                pairs.append(make_disjoint_window(w))
        totals = [0.0] * len(requests)
        scored = loglikelihoods(self.model, pairs, batch_size=self.batch_size)
        for i, (ll, _) in zip(owner, scored, strict=True):
            totals[i] += ll
        return totals

    def generate_until(self, requests) -> list[str]:
        """Completions of each context, batched among requests with the same gen_kwargs."""
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(json.dumps(r.args[1], sort_keys=True, default=str), []).append(i)
        out = [""] * len(requests)
        for ids in groups.values():
            cfg = _sampling(requests[ids[0]].args[1])
            prompts = [self.tok.encode(requests[i].args[0]) or [self.tok.eot_id] for i in ids]
            texts = complete(self.model, self.tok, prompts, cfg, batch_size=self.batch_size)
            for i, text in zip(ids, texts, strict=True):
                out[i] = text
        return out


def _sampling(kwargs: dict) -> SampleConfig:
    """lm-eval gen_kwargs -> SampleConfig: greedy unless it asks to sample, as lm-eval's HF
    model reads them; `until` strings stop, and so does end-of-text."""
    until = kwargs.get("until") or []
    until = [s for s in ([until] if isinstance(until, str) else until) if s]
    temperature = float(kwargs.get("temperature") or 0.0)
    if not kwargs.get("do_sample", temperature > 0):
        temperature = 0.0
    return SampleConfig(max_new_tokens=int(kwargs.get("max_gen_toks", 256)),
                        temperature=temperature, top_k=kwargs.get("top_k") or None,
                        top_p=kwargs.get("top_p"), seed=DEFAULTS["seed"],
                        stop=until)  # fmt: skip


def run_tasks(path, tasks: str, *, task_dir=None, limit=None, num_fewshot=None,
              batch_size: int = 8, device: str = "auto") -> dict:  # fmt: skip
    """lm-eval's results for the comma-separated `tasks` (from `task_dir` only, when given)."""
    from lm_eval import evaluator

    names = [n.strip() for n in tasks.split(",") if n.strip()]
    if not names:
        raise GptkitError("--tasks is empty; name lm-eval tasks, e.g. --tasks hellaswag,arc_easy")
    if limit is not None and limit <= 0:
        raise GptkitError(f"--limit must be > 0 (a row count, or a fraction below 1), got {limit}")
    if num_fewshot is not None and num_fewshot < 0:
        raise GptkitError(f"--num-fewshot must be >= 0, got {num_fewshot}")
    manager = _task_manager(names, task_dir)
    model, tok = load_lm(path, device)
    limit = int(limit) if limit is not None and limit >= 1 else limit
    try:
        with _without_env_report(evaluator):
            result = evaluator.simple_evaluate(
                model=GptkitLM(model, tok, batch_size=batch_size),
                tasks=names,
                task_manager=manager,
                limit=limit,
                num_fewshot=num_fewshot,
                log_samples=False,
            )
    except (FileNotFoundError, ConnectionError) as e:  # a task's data is missing or remote
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise GptkitError(
            f"lm-eval could not load the data of {', '.join(names)} ({first}); tasks on the "
            "Hugging Face hub need it online or cached, local tasks need their files"
        ) from None
    return {"path": str(path), **{k: result[k] for k in _KEEP if k in result}}


def _task_manager(names: list[str], task_dir):
    """lm-eval's task index: DIR's tasks only with --task-dir (indexing lm-eval's ~15k
    built-in tasks takes ~20 s), else the built-in ones; every name must be in it."""
    from lm_eval.tasks import TaskManager

    if task_dir is not None:
        if not Path(task_dir).is_dir():
            raise GptkitError(f"--task-dir {task_dir} is not a folder; pass a folder of task YAMLs")
        manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    else:
        manager = TaskManager()
    for name in names:
        if not manager.match_tasks([name]):
            close = difflib.get_close_matches(name, manager.all_tasks, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            where = (f"in --task-dir {task_dir}" if task_dir is not None
                     else "among lm-eval's tasks ('lm-eval ls tasks' lists them)")  # fmt: skip
            raise GptkitError(f"unknown lm-eval task '{name}' {where}{hint}")
    return manager


@contextlib.contextmanager
def _without_env_report(evaluator):
    """simple_evaluate ends by collecting torch's environment report and git hashes (pip,
    nvidia-smi and git subprocesses: ~5 s, and git's complaints on stderr) for metadata gptkit
    never prints; skip those two calls for the run."""
    saved = {n: getattr(evaluator, n) for n in ("add_env_info", "get_git_commit_hash")
             if hasattr(evaluator, n)}  # fmt: skip
    try:
        for name in saved:
            setattr(evaluator, name, lambda *a: None)
        yield
    finally:
        for name, fn in saved.items():
            setattr(evaluator, name, fn)
